"""The ``photo`` mask type: insightface's mask photos stretched over the outline, in both renderers."""

import cv2
import numpy as np
import pytest

from insightface_bfm.imaging import ARCFACE_KPS
from insightface_bfm.masks import MASK_TYPES, PATTERNS, MaskStyle, random_style, render_mask, textures
from insightface_bfm.masks.styles import PALETTES, PATTERN_ODDS, pattern_index

torch = pytest.importorskip("torch")
from insightface_bfm.masks.batched import MaskAugment  # noqa: E402


def _face(level=150):
    rng = np.random.default_rng(0)
    return np.full((112, 112, 3), level, np.uint8) + rng.integers(0, 12, (112, 112, 3), dtype=np.uint8)


def _inner(region):
    """The mask's pixels away from its edge (no anti-aliasing, no loops)."""
    return cv2.erode(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def _detail(image):
    """Fine detail: the image minus its blur (the shading's smooth gradients cancel)."""
    f = image.astype(np.float32)
    return np.abs(f - cv2.GaussianBlur(f, (0, 0), 1.5)).mean(-1)


def test_textures_are_insightfaces_mask_photos():
    stack = textures.photo_textures()
    assert stack.shape == (len(textures.TEXTURE_NAMES), *textures.TEXTURE_SIZE, 3)
    assert not stack.flags.writeable
    for i, name in enumerate(textures.TEXTURE_NAMES):
        photo = cv2.imread(str(textures.texture_dir() / f"{name}.jpg"))
        # the palette holds each photo's mean colour: straps and `colours: any` use it
        assert np.abs(photo.reshape(-1, 3).mean(0) - np.array(PALETTES["photo"][i])).max() < 3.0
        assert np.abs(stack[i].reshape(-1, 3).mean(0) - photo.reshape(-1, 3).mean(0)).max() < 3.0


def test_photo_mask_carries_the_photo_not_a_flat_colour():
    img = _face()
    for index in range(len(textures.TEXTURE_NAMES)):
        style = MaskStyle(type="photo", pattern="photo", texture=index, pleats=False, grain=0.0,
                          straps_visible=False)
        out, region = render_mask(img, ARCFACE_KPS, style)
        inner = _inner(region)
        pixels = out[inner].astype(np.float32)
        # the photo's own colour (shaded to this face's exposure), and its folds and weave:
        # far more variation than a flat colour under the same shading
        mean = pixels.mean(0)
        target = np.array(PALETTES["photo"][index], np.float32)
        assert np.ptp(target) < 10 or np.corrcoef(mean, target)[0, 1] > 0.9
        flat = render_mask(img, ARCFACE_KPS, style.replace(pattern="plain", colors=(
            tuple(int(c) for c in mean), (0, 0, 0), (0, 0, 0))))[0]
        assert _detail(out)[inner].mean() > 3.0 * _detail(flat)[inner].mean()
    # a different photo is a different mask; the same style draws the same pixels
    a = render_mask(img, ARCFACE_KPS, MaskStyle(type="photo", pattern="photo", texture=0, pleats=False))[0]
    b = render_mask(img, ARCFACE_KPS, MaskStyle(type="photo", pattern="photo", texture=1, pleats=False))[0]
    assert (a != b).any()
    assert np.array_equal(a, render_mask(img, ARCFACE_KPS, MaskStyle(type="photo", pattern="photo",
                                                                    texture=0, pleats=False))[0])


def test_photo_follows_the_outline_top_band_at_the_top():
    """The photo's nose-wire band sits along the mask's top edge, its hem along the bottom edge."""
    from insightface_bfm.masks import geometry as geo
    from insightface_bfm.masks.render import _shape

    style = MaskStyle(type="photo", pattern="photo", texture=2, pleats=False, grain=0.0, straps_visible=False,
                      bottom=1.4)  # the chin inside the 112x112 crop
    _, region = render_mask(_face(), ARCFACE_KPS, style)
    column = np.flatnonzero(region[:, 56])
    frame = geo.face_frame(np, np.asarray(ARCFACE_KPS, np.float64))
    rows = np.array([column[0], column[-1]], np.float64)  # the first and last drawn row of the centre column
    u, v, _ = geo.face_coords(np, frame, np.array([56.0, 56.0]), rows)
    _, ty = textures.texture_coords(np, frame, _shape(style), u, v)
    assert ty[0] < 0.1 and ty[1] > 0.9  # the first drawn row samples the photo's top, the last its bottom


def test_random_photo_styles_use_every_photo_and_no_other_type_wears_one():
    drawn = [random_style(s, types=["photo"]) for s in range(80)]
    assert {s.pattern for s in drawn} == {"photo"} and not any(s.pleats for s in drawn)
    assert {s.texture for s in drawn} == set(range(len(textures.TEXTURE_NAMES)))
    others = [t for t in MASK_TYPES if t != "photo"]
    assert all(random_style(s, types=others).pattern != "photo" for s in range(300))
    assert {random_style(s, types=others).texture for s in range(300)} == {0}  # meaningless there: not drawn
    # a draw just under 1 never falls through rounding onto a pattern the type does not wear
    for kind in MASK_TYPES:
        odds = PATTERN_ODDS[kind]
        assert odds[pattern_index(odds, np.nextafter(1.0, 0.0))] > 0
        assert odds[pattern_index(odds, 0.0)] > 0
    with pytest.raises(ValueError, match="texture"):
        MaskStyle(texture=len(textures.TEXTURE_NAMES))
    assert "photo" in PATTERNS


def test_batched_photo_masks_look_like_the_per_image_ones():
    img = _face()
    x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = x.repeat(64, 1, 1, 1)
    aug = MaskAugment(types=["photo"], kps_jitter=0.0)
    gen = torch.Generator().manual_seed(3)
    aug.default_kps(64, gen)  # forward draws the points first, then the styles
    style = aug.sample_styles(64, gen)
    assert (style["pattern"] == PATTERNS.index("photo")).all()
    textures_drawn = set(style["texture"].tolist())
    assert textures_drawn == set(range(len(textures.TEXTURE_NAMES)))
    masked, region = aug(x, generator=torch.Generator().manual_seed(3))
    for index in sorted(textures_drawn):
        row = int(torch.nonzero(style["texture"] == index)[0])
        got = ((masked[row].permute(1, 2, 0).numpy()[:, :, ::-1] + 1) * 127.5)
        inner = _inner(region[row, 0].numpy() > 0.5)
        ref_style = MaskStyle(type="photo", pattern="photo", texture=index, pleats=False, grain=0.0)
        ref, ref_region = render_mask(img, ARCFACE_KPS, ref_style)
        both = inner & _inner(ref_region)
        # same photo: mean colours within a few grey levels (shapes and grain differ per draw)
        assert np.abs(got[both].mean(0) - ref[both].astype(np.float32).mean(0)).max() < 12.0


def test_batched_renderer_without_photo_types_reads_no_photo(monkeypatch):
    def fail():
        raise AssertionError("photos read for types that never wear them")

    monkeypatch.setattr(textures, "photo_textures", fail)
    aug = MaskAugment(types=["surgical", "cloth"])
    assert aug.photos.shape[0] == 0
    out, _ = aug(torch.zeros(4, 3, 112, 112), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 112, 112)


def test_missing_photo_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(textures, "texture_dir", lambda: tmp_path)
    textures.photo_textures.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"mask_white\.jpg: insightface's mask photo is missing"):
            textures.photo_textures()
        (tmp_path / "mask_white.jpg").write_bytes(b"not a jpeg")
        with pytest.raises(RuntimeError, match="missing or unreadable"):
            textures.photo_textures()
    finally:
        textures.photo_textures.cache_clear()
