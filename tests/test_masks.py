"""Per-image mask renderer: geometry, types, styles, determinism and bad input."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from insightface_bfm.errors import ImageError
from insightface_bfm.imaging import ARCFACE_KPS
from insightface_bfm.masks import MASK_TYPES, PATTERNS, MaskStyle, random_style, render_mask

ROOT = Path(__file__).resolve().parents[1]


def _face(seed=0, size=112, level=150):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), level, np.uint8)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    return img


def _above_eye_line(kps, shape):
    """Pixels whose centre lies above the line through both eyes (in the face's own frame)."""
    (lx, ly), (rx, ry) = kps[0], kps[1]
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    ax, ay = rx - lx, ry - ly
    return (xs - lx) * ay - (ys - ly) * ax > 0  # left of the left->right eye direction = above


def _check_cover(img, kps, out, region):
    for px, py in kps[2:]:
        assert region[int(round(py)), int(round(px))], f"point ({px:.1f}, {py:.1f}) not covered"
    above = _above_eye_line(kps, img.shape)
    assert not (out != img).any(-1)[above].any(), "pixels above the eye line were touched"
    assert not region[above].any()


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_every_type_covers_nose_and_mouth_and_spares_the_eyes(kind):
    img = _face()
    rng = np.random.default_rng(MASK_TYPES.index(kind))
    for _ in range(12):
        style = random_style(rng, types=[kind])
        assert style.type == kind
        out, region = render_mask(img, ARCFACE_KPS, style)
        assert out.shape == img.shape and out.dtype == np.uint8 and region.dtype == bool
        _check_cover(img, ARCFACE_KPS, out, region)
        assert 0.2 < region.mean() < 0.6


def test_worn_low_uncovers_the_nose_only_on_request():
    img = _face()
    nx, ny = np.round(ARCFACE_KPS[2]).astype(int)
    for seed in range(10):
        _, region = render_mask(img, ARCFACE_KPS, random_style(seed, worn_low=1.0))
        assert not region[ny, nx]
        for px, py in ARCFACE_KPS[3:]:
            assert region[int(round(py)), int(round(px))]
    assert all(random_style(s).top < 1.0 for s in range(200))


def test_every_pattern_and_feature_renders_differently():
    img = _face()
    outs = {}
    for pattern in PATTERNS:
        style = MaskStyle(type="cloth", colors=((40, 40, 200), (240, 240, 240), (0, 0, 0)), pattern=pattern,
                          pleats=False, grain=0.0)
        outs[pattern] = render_mask(img, ARCFACE_KPS, style)[0]
    for a in PATTERNS:
        for b in PATTERNS:
            if a < b:
                assert (outs[a] != outs[b]).any(), (a, b)
    plain = MaskStyle(type="n95", pleats=False, grain=0.0, colors=((240,) * 3, (0,) * 3, (40, 40, 40)))
    valve = plain.replace(valve=True)
    assert (render_mask(img, ARCFACE_KPS, plain)[0] != render_mask(img, ARCFACE_KPS, valve)[0]).any()


def test_deterministic_for_style_and_seed():
    img = _face(3)
    style = random_style(np.random.default_rng(5), types=["cloth"]).replace(pattern="noise")
    a = render_mask(img, ARCFACE_KPS, style)
    b = render_mask(img.copy(), ARCFACE_KPS.copy(), style)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = render_mask(img, ARCFACE_KPS, rng=11)
    d = render_mask(img, ARCFACE_KPS, rng=np.random.default_rng(11))
    assert np.array_equal(c[0], d[0])
    assert random_style(4) == random_style(4) and random_style(4) != random_style(5)
    assert not np.array_equal(a[0], render_mask(img, ARCFACE_KPS, style.replace(seed=style.seed + 1))[0])


def test_style_round_trips_through_json():
    for seed in range(20):
        style = random_style(seed)
        back = MaskStyle.from_dict(json.loads(json.dumps(style.to_dict())))
        assert back == style
    with pytest.raises(ValueError, match="unknown keys"):
        MaskStyle.from_dict({"type": "n95", "bogus": 1})
    with pytest.raises(ValueError, match="mask type"):
        MaskStyle(type="balaclava")
    with pytest.raises(ValueError, match="colors"):
        MaskStyle(colors=((1, 2, 3),))
    with pytest.raises(ValueError):
        random_style(0, types=["surgical", "visor"])
    assert {random_style(s, types="n95,kn95").type for s in range(30)} == {"n95", "kn95"}


def test_input_image_untouched_and_anti_aliased_edge():
    img = np.zeros((112, 112, 3), np.uint8)
    before = img.copy()
    style = MaskStyle(type="kn95", colors=((255,) * 3, (255,) * 3, (255,) * 3), seam=False, grain=0.0,
                      loops=False)
    out, region = render_mask(img, ARCFACE_KPS, style)
    assert np.array_equal(img, before)
    col = out[:, 56, 0].astype(int)  # down the centre: black, an edge ramp, then mask
    top = int(np.argmax(col > 0))
    assert 0 < col[top] < col[top + 3]  # a partial-coverage pixel at the edge


def test_follows_rotation():
    img = _face(1, size=160)
    kps = ARCFACE_KPS + 24.0
    _, region = render_mask(img, kps, MaskStyle(loops=False))
    m = cv2.getRotationMatrix2D((80.0, 80.0), 25.0, 1.0)
    rot_img = cv2.warpAffine(img, m, (160, 160))
    rot_kps = kps @ m[:, :2].T + m[:, 2]
    out, rot_region = render_mask(rot_img, rot_kps, MaskStyle(loops=False))
    expected = cv2.warpAffine(region.astype(np.uint8), m, (160, 160), flags=cv2.INTER_NEAREST) > 0
    iou = (expected & rot_region).sum() / (expected | rot_region).sum()
    assert iou > 0.93
    _check_cover(rot_img, rot_kps, out, rot_region)


def test_yaw_narrows_the_far_side():
    img = _face(2)
    kps = ARCFACE_KPS.copy()
    kps[2, 0] += 9.0  # nose tip towards the image-right eye: head turned, right side farther
    kps[3:, 0] += 4.0
    _, region = render_mask(img, kps, MaskStyle(loops=False))
    nose_x = int(round(kps[2, 0]))
    left, right = region[:, :nose_x].sum(), region[:, nose_x:].sum()
    assert right < 0.7 * left


def test_raw_photo_and_scale():
    img = _face(4, size=400)
    kps = ARCFACE_KPS * 2.5 + np.array([60.0, 40.0])
    out, region = render_mask(img, kps, MaskStyle())
    _check_cover(img, kps, out, region)
    _, small = render_mask(_face(4), ARCFACE_KPS, MaskStyle())
    assert abs(region.sum() / small.sum() - 6.25) < 0.6
    # a face at the border: the mask is clipped, not an error
    out, region = render_mask(_face(5), ARCFACE_KPS + np.array([0.0, 18.0]), MaskStyle())
    assert region[-1].any()


def test_brightness_follows_the_face():
    style = MaskStyle(colors=((230,) * 3, (0,) * 3, (0,) * 3), pleats=False, grain=0.0)
    bright, region = render_mask(_face(0, level=170), ARCFACE_KPS, style)
    dark, _ = render_mask(_face(0, level=50), ARCFACE_KPS, style)
    assert bright[region].mean() > 1.8 * dark[region].mean()


@pytest.mark.parametrize(
    "image, kps, match",
    [
        (np.zeros((0, 0, 3), np.uint8), ARCFACE_KPS, "empty"),
        (np.zeros((112, 112), np.uint8), ARCFACE_KPS, "grayscale"),
        (np.zeros((112, 112, 3), np.float32), ARCFACE_KPS, "uint8"),
        (None, ARCFACE_KPS, "None"),
        (np.zeros((112, 112, 3), np.uint8), ARCFACE_KPS[:4], "5x2"),
        (np.zeros((112, 112, 3), np.uint8), np.zeros((5, 3)), "5x2"),
        (np.zeros((112, 112, 3), np.uint8), np.where(np.eye(5, 2) > 0, np.nan, ARCFACE_KPS), "NaN"),
        (np.zeros((112, 112, 3), np.uint8), ARCFACE_KPS + 50.0, "outside the 112x112 image"),
        (np.zeros((112, 112, 3), np.uint8), np.full((5, 2), 56.0), "degenerate"),
        (np.zeros((112, 112, 3), np.uint8), "eyes", "numeric"),
    ],
)
def test_bad_input(image, kps, match):
    with pytest.raises(ImageError, match=match):
        render_mask(image, kps, MaskStyle())


def test_no_torch_import():
    code = ("import sys, insightface_bfm.masks as m, insightface_bfm.masks.cli, "
            "insightface_bfm.masks.masked_sets; m.render_mask; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _coverage_module():
    spec = importlib.util.spec_from_file_location("mask_coverage", ROOT / "benchmarks" / "mask_coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.shared
def test_lfw112_sample_coverage(shared):
    root = shared("data", "lfw112")
    result = _coverage_module().check_coverage(root, limit=200, seed=0)
    assert result["images"] == 200
    assert result["failures"] == [], result["failures"][:5]


def _plain_outline_distance(maps, frame, shape):
    """The renderer's outline distance from cached maps (u*u, |u|, below**2), written plainly: the
    formula its pinned pixels were made with (the same as geometry's up to float rounding)."""
    uu, au = maps.uu, maps.au
    if shape.shift:
        u = maps.u - np.float32(shape.shift)
        uu, au = u * u, np.abs(u)
    top = shape.top_centre(np, frame) + shape.top_curve * uu + shape.top_point * au
    bottom = shape.bottom - shape.bottom_curve * uu - shape.bottom_point * au
    side = shape.width - (shape.width * shape.jaw) * maps.below2
    d = np.minimum((maps.v - top) * frame.depth, (bottom - maps.v) * frame.depth)
    return np.minimum(d, (side - au) * maps.w)


def test_fast_formulas_equal_the_plain_ones():
    """render.py's in-place specialisations give the plain formulas' floats bit for bit (and
    geometry's and appearance's up to rounding)."""
    from insightface_bfm.masks import appearance as look
    from insightface_bfm.masks import geometry as geo
    from insightface_bfm.masks import render

    rng = np.random.default_rng(5)
    kps = ARCFACE_KPS + rng.normal(0, 2.0, (5, 2))
    face = render._face(kps, (112, 112, 3))
    frame = face.frame
    maps = render._face_maps(face.pts, frame, (2, 50, 111, 112))
    rows = maps.rows(slice(3, 55))
    for i in range(60):
        style = random_style(rng, types=[("object", "kn95", "dark", "n95")[i % 4]])
        shape = render._shape(style)
        fast = render._outline_distance(rows, frame, shape)
        plain = _plain_outline_distance(rows, frame, shape)
        assert fast.dtype == plain.dtype and np.array_equal(fast, plain)
        general = geo.outline_distance(np, frame, shape, rows.u, rows.v, rows.w)
        assert np.allclose(fast, general, atol=1e-3)
        assert np.array_equal(render._coverage(fast), geo.coverage(np, plain))
        shade = render._edge_band(frame, fast)
        shade *= rows.surface64
        assert np.array_equal(shade, rows.surface * look.edge_band(np, frame, plain))
        luma_l, luma_r, gain = rng.uniform(40, 200), rng.uniform(40, 200), rng.uniform(0.25, 1.2)
        slope = 1.4 * (luma_r - luma_l) / (luma_r + luma_l + 1.0)  # as render_mask measures it
        light = render._side_light(rows.u_clip, slope, gain)
        assert np.array_equal(light, np.clip(1.0 + slope * rows.u_clip, 0.5, 1.5) * gain)
        assert np.allclose(light, look.side_light(np, rows.u, luma_l, luma_r) * gain, atol=1e-5)
