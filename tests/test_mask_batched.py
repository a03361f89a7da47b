"""MaskAugment: the batched torch renderer for aligned crops."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from insightface_bfm.imaging import ARCFACE_KPS  # noqa: E402
from insightface_bfm.masks import ALL_TYPES, MASK_TYPES  # noqa: E402
from insightface_bfm.masks.batched import MaskAugment  # noqa: E402


def _faces(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a smooth skin-like field with noise: enough to exercise shading
    base = torch.tensor([0.35, 0.05, -0.15]).view(1, 3, 1, 1)
    return (base + 0.1 * torch.randn(b, 3, 112, 112, generator=g)).clamp(-1, 1)


def test_shapes_range_and_region():
    torch.set_num_threads(1)
    x = _faces()
    masked, region = MaskAugment()(x, generator=torch.Generator().manual_seed(1))
    assert masked.shape == x.shape and masked.dtype == x.dtype
    assert region.shape == (6, 1, 112, 112)
    assert masked.min() >= -1 and masked.max() <= 1
    assert region.min() >= 0 and region.max() <= 1
    # the mask covers a good part of the lower face and nothing above the eyes
    cover = (region > 0.5).float().mean((1, 2, 3))
    assert (cover > 0.2).all() and (cover < 0.6).all()
    assert region[:, :, :45].max() == 0
    changed = (masked - x).abs().amax(1)
    assert changed[:, :45].max() == 0


def test_deterministic_with_generator_and_varies_without():
    x = _faces()
    aug = MaskAugment()
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_every_type_covers_nose_and_mouth(kind):
    x = _faces(4)
    kps = torch.from_numpy(np.repeat(ARCFACE_KPS[None], 4, 0))
    masked, region = MaskAugment(types=[kind])(x, kps=kps, generator=torch.Generator().manual_seed(3))
    for px, py in ARCFACE_KPS[2:]:
        assert (region[:, 0, int(round(py)), int(round(px))] == 1).all()
    assert region[:, :, : int(ARCFACE_KPS[:2, 1].min())].max() == 0
    assert (masked != x).any()


def test_worn_low_uncovers_the_nose():
    kps = torch.from_numpy(np.repeat(ARCFACE_KPS[None], 4, 0))
    _, region = MaskAugment(worn_low=1.0)(_faces(4), generator=torch.Generator().manual_seed(0), kps=kps)
    nx, ny = np.round(ARCFACE_KPS[2]).astype(int)
    assert (region[:, 0, ny, nx] == 0).all()
    mx, my = np.round(ARCFACE_KPS[3]).astype(int)
    assert (region[:, 0, my, mx] == 1).all()


def test_p_zero_passes_through_and_p_mixes():
    x = _faces(16)
    masked, region = MaskAugment(p=0.0)(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked, x) and region.max() == 0
    masked, region = MaskAugment(p=0.5)(x, generator=torch.Generator().manual_seed(0))
    hit = region.amax((1, 2, 3)) > 0
    assert 0 < int(hit.sum()) < 16
    assert torch.equal(masked[~hit], x[~hit])


def test_bad_input():
    with pytest.raises(ValueError):
        MaskAugment(types=["balaclava"])
    with pytest.raises(ValueError):
        MaskAugment(p=1.5)
    with pytest.raises(ValueError):
        MaskAugment()(torch.zeros(2, 1, 112, 112))
    with pytest.raises(ValueError):
        MaskAugment()(torch.zeros(2, 3, 112, 112), kps=torch.zeros(2, 4, 2))


def test_throughput_benchmark_runs_tiny():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mask_throughput.py"
    spec = importlib.util.spec_from_file_location("mask_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(n=12, batch=4, threads=1)
    assert res["per_image"]["render_mask"] > 0 and res["batched_cpu"]["images_per_s"] > 0
    text = mod.report(res)
    assert "render_mask" in text
    assert text.count("PASS") + text.count("MISS") == 2  # both targets, against this tree's rates


def test_in_place_formulas_equal_the_shared_ones():
    """batched.py's in-place twins give geometry's and appearance's floats bit for bit."""
    from insightface_bfm.masks import appearance as look
    from insightface_bfm.masks import batched
    from insightface_bfm.masks import geometry as geo

    aug = MaskAugment(types=list(ALL_TYPES))
    g = torch.Generator().manual_seed(3)
    kps = aug.default_kps(16, g)
    style = aug.sample_styles(16, g)
    frame = geo.face_frame(torch, kps)
    shape = geo.MaskShape(*[c.reshape(-1, 1, 1, 1) for c in style["shape"].unbind(1)],
                          style["shift"].reshape(-1, 1, 1, 1))
    xs = torch.arange(112, dtype=torch.float32).view(1, 1, 1, 112)
    ys = torch.arange(112, dtype=torch.float32).view(1, 1, 112, 1)
    u, v, w = geo.face_coords(torch, frame, xs, ys)
    inside = batched._outline_distance(frame, shape, u, v, w)
    assert torch.equal(inside, geo.outline_distance(torch, frame, shape, u, v, w))
    assert torch.equal(batched._surface(frame, u, v), look.surface(torch, frame, u, v))
    assert torch.equal(batched._edge_band(frame, inside), look.edge_band(torch, frame, inside))
    luma_l, luma_r = torch.rand((2, 16, 1, 1, 1), generator=g) * 200
    assert torch.equal(batched._side_light(u, luma_l, luma_r), look.side_light(torch, u, luma_l, luma_r))
    loops = style["loops"].reshape(-1, 1, 1, 1)
    assert torch.equal(batched._strap_distance(frame, shape, loops, xs, ys),
                       geo.strap_distance(torch, frame, shape, loops, xs, ys))


@pytest.mark.parametrize("kw", [{}, {"types": list(ALL_TYPES), "lighting": True, "p": 0.6}])
def test_cpu_chunks_draw_the_same_pixels(monkeypatch, kw):
    """On a CPU the batch is drawn a few samples at a time: the same floats as all at once."""
    from insightface_bfm.masks import batched

    x = torch.rand(37, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outs = []
    for chunk in (64, 16):  # (a multiple of 16: see CPU_CHUNK)
        monkeypatch.setattr(batched, "CPU_CHUNK", chunk)
        with torch.no_grad():
            outs.append(MaskAugment(**kw)(x, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
