"""Lower-face occluders (hand, scarf, object): opt-in kinds of both mask renderers."""

import numpy as np
import pytest

from insightface_bfm.imaging import ARCFACE_KPS
from insightface_bfm.masks import (
    ALL_TYPES,
    MASK_TYPES,
    OCCLUDER_TYPES,
    check_types,
    family_of,
    random_style,
    render_mask,
)
from insightface_bfm.train.recipe import Recipe

MOUTH = np.round(ARCFACE_KPS[3:].mean(0)).astype(int)  # the middle of the mouth (x, y)
EYE_ROW = int(ARCFACE_KPS[:2, 1].min())


def _face(cheek_bgr=(120, 150, 200), seed=0):
    """A flat 'face' of one colour with pixel noise: a hand must take this colour."""
    rng = np.random.default_rng(seed)
    img = np.empty((112, 112, 3), np.uint8)
    img[:] = cheek_bgr
    return np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)


def test_occluders_are_opt_in():
    assert ALL_TYPES == MASK_TYPES + OCCLUDER_TYPES and set(OCCLUDER_TYPES) == {"hand", "scarf", "object"}
    assert check_types(None) == MASK_TYPES  # the default never draws an occluder
    assert {random_style(s).type for s in range(300)} == set(MASK_TYPES)
    assert check_types("occluder") == OCCLUDER_TYPES
    assert check_types("medical,hand") == ("surgical", "hand")
    assert all(family_of(t) == "occluder" for t in OCCLUDER_TYPES)
    # the mask types' draw is the one it always was (pinned): occluders add draws only when chosen
    style = random_style(3)
    pinned = ("surgical", 532409422, 0.567288576, 0.0)
    assert (style.type, style.seed, round(style.top, 9), style.shift) == pinned
    Recipe.from_dict({"data": {"path": "synthetic:4:2", "mask_types": ["medical", "hand", "occluder"]}})


@pytest.mark.parametrize("kind", OCCLUDER_TYPES)
def test_every_occluder_covers_the_mouth_and_spares_the_eyes(kind):
    img = _face()
    rng = np.random.default_rng(ALL_TYPES.index(kind))
    for _ in range(12):
        style = random_style(rng, types=[kind])
        assert style.type == kind and not style.straps_visible and not (style.pleats or style.valve)
        out, region = render_mask(img, ARCFACE_KPS, style)
        assert region[MOUTH[1], MOUTH[0]], style
        assert not (out != img).any(-1)[:EYE_ROW].any() and not region[:EYE_ROW].any()
        assert 0.04 < region.mean() < 0.7
        again, _ = render_mask(img, ARCFACE_KPS, style)
        assert np.array_equal(out, again)  # deterministic per style


def test_hand_takes_the_colour_of_the_face():
    for cheek in ((80, 110, 170), (150, 170, 210), (40, 60, 90)):
        img = _face(cheek)
        for s in range(4):
            out, region = render_mask(img, ARCFACE_KPS, random_style(s, types=["hand"]))
            hand = out[region].astype(float).mean(0)
            # within ~20% per channel, and the colour's order kept (B < G < R as the face)
            assert np.allclose(hand, cheek, rtol=0.2, atol=12), (cheek, hand)
            assert hand[0] < hand[1] < hand[2]


def test_shift_moves_an_occluder_sideways():
    img = _face()
    style = random_style(0, types=["object"])
    cols = []
    for shift in (-0.3, 0.0, 0.3):
        _, region = render_mask(img, ARCFACE_KPS, style.replace(shift=shift))
        cols.append(np.nonzero(region)[1].mean())
    assert cols[0] + 8 < cols[1] < cols[2] - 8  # +u is the image's right on an upright face
    with pytest.raises(ValueError, match="shift"):
        style.replace(shift=0.8)


def test_scarf_is_wider_and_lower_than_a_surgical_mask():
    img = _face()
    scarf = [render_mask(img, ARCFACE_KPS, random_style(s, types=["scarf"]))[1] for s in range(8)]
    surgical = [render_mask(img, ARCFACE_KPS, random_style(s, types=["surgical"]))[1] for s in range(8)]
    # the crop cuts both below the chin: the scarf covers more of the rows under the mouth
    assert np.mean([r[96:].mean() for r in scarf]) > np.mean([r[96:].mean() for r in surgical]) + 0.1


def test_batched_occluders():
    torch = pytest.importorskip("torch")
    from insightface_bfm.masks.batched import MaskAugment

    b = 24
    cheek = (80, 110, 170)  # BGR
    rgb = torch.tensor(cheek[::-1], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1.0
    x = (rgb + 0.03 * torch.randn(b, 3, 112, 112, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    kps = torch.from_numpy(np.repeat(ARCFACE_KPS[None], b, 0)).float()
    aug = MaskAugment(types=["occluder"])
    assert aug.occluders and not MaskAugment().occluders
    g = torch.Generator().manual_seed(5)
    masked, region = aug(x, kps=kps, generator=g)
    again, _ = aug(x, kps=kps, generator=torch.Generator().manual_seed(5))
    assert torch.equal(masked, again)
    assert (region[:, 0, MOUTH[1], MOUTH[0]] == 1).all()
    assert region[:, :, :EYE_ROW].max() == 0 and (masked - x)[:, :, :EYE_ROW].abs().max() == 0
    styles = aug.sample_styles(b, torch.Generator().manual_seed(1))
    assert {ALL_TYPES[t] for t in styles["type"].tolist()} == set(OCCLUDER_TYPES)
    assert styles["straps_visible"].sum() == 0 and styles["shift"].abs().max() > 0.05
    # a hand in the face's colour, as the per-image renderer's
    hand_aug = MaskAugment(types=["hand"])
    m, r = hand_aug(x, kps=kps, generator=torch.Generator().manual_seed(2))
    pix = (m.permute(0, 2, 3, 1)[r[:, 0] > 0.99] + 1.0) * 127.5
    assert np.allclose(pix.mean(0).numpy(), cheek[::-1], rtol=0.2, atol=12)
    # the default draw does not move when occluders exist: a masks-only batch draws no shift
    assert "shift" not in MaskAugment().sample_styles(4, torch.Generator().manual_seed(1))
