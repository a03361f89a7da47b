"""Mask lighting (opt-in): a soft contact shadow on the skin around the outline and a specular sheen
on synthetic fabrics, in both renderers."""

import cv2
import numpy as np
import pytest
import torch

from insightface_bfm.imaging import ARCFACE_KPS
from insightface_bfm.masks import MASK_TYPES, MaskStyle, random_style, render_mask
from insightface_bfm.masks.batched import MaskAugment
from insightface_bfm.masks.styles import SHADOW_RANGE, SHEEN_RANGE, SHEEN_TYPES
from insightface_bfm.train.recipe import Recipe

EYE_ROW = int(ARCFACE_KPS[:2, 1].min())


def _face(left=170, right=170, seed=0):
    """A flat grey 'face' (left and right halves may differ in brightness) with pixel noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((112, 112, 3), np.int64)
    img[:, :56], img[:, 56:] = left, right
    return np.clip(img + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)


def _luma(img):
    return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)


def _near(region, px):
    """The region grown by ``px`` pixels."""
    k = 2 * px + 1
    return cv2.dilate(region.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def test_lighting_is_opt_in_and_drawn_last():
    for seed in range(40):
        plain, lit = random_style(seed), random_style(seed, lighting=True)
        assert plain.shadow == plain.sheen == 0.0
        # two numbers drawn after all the others: the rest of the style is the one without lighting
        assert lit.replace(shadow=0.0, sheen=0.0) == plain
        assert SHADOW_RANGE[0] <= lit.shadow <= SHADOW_RANGE[1]
        if lit.type in SHEEN_TYPES:
            assert SHEEN_RANGE[0] <= lit.sheen <= SHEEN_RANGE[1]
        else:
            assert lit.sheen == 0.0  # cotton, knits, skin: matte
    assert {random_style(s, lighting=True).type for s in range(200)} == set(MASK_TYPES)
    assert MaskStyle.from_dict(random_style(7, lighting=True).to_dict()) == random_style(7, lighting=True)
    with pytest.raises(ValueError, match="MaskStyle.shadow"):
        MaskStyle(shadow=0.9)
    with pytest.raises(ValueError, match="MaskStyle.sheen"):
        MaskStyle(sheen=-0.1)


@pytest.mark.parametrize("kind", ["surgical", "cloth", "n95", "hand"])
def test_contact_shadow_darkens_skin_next_to_the_outline_only(kind):
    img = _face()
    # a short mask, so that its lower edge is inside the crop
    style = random_style(np.random.default_rng(3), types=[kind]).replace(straps_visible=False, bottom=1.25)
    plain, region = render_mask(img, ARCFACE_KPS, style)
    shaded, region2 = render_mask(img, ARCFACE_KPS, style.replace(shadow=0.4))
    assert np.array_equal(region, region2)
    changed = (shaded != plain).any(-1)
    assert changed.any()
    # only the skin within a few pixels of the outline moves, and only darker; the mask is the same
    assert not (changed & ~_near(region, 9)).any() and not changed[:EYE_ROW].any()
    core = ~_near(~region, 2)  # the mask's pixels away from its anti-aliased edge
    assert np.array_equal(shaded[core], plain[core])
    assert (_luma(shaded) <= _luma(plain) + 0.5).all()
    # under the bottom edge the shadow is clear: 3 px below the outline, at the middle column
    col = 56
    bottom = int(np.nonzero(region[:, col])[0].max())
    assert _luma(shaded)[bottom + 3, col] < _luma(plain)[bottom + 3, col] - 8


def test_sheen_brightens_synthetic_fabric_towards_the_light():
    style = random_style(np.random.default_rng(5), types=["surgical"]).replace(
        straps_visible=False, pleats=False, colors=((150, 150, 150), (240, 240, 235), (235, 235, 235)))
    centres = {}
    for name, (left, right) in {"even": (170, 170), "right": (110, 200), "left": (200, 110)}.items():
        img = _face(left, right)
        plain, region = render_mask(img, ARCFACE_KPS, style)
        shiny, region2 = render_mask(img, ARCFACE_KPS, style.replace(sheen=0.3))
        assert np.array_equal(region, region2)
        gain = _luma(shiny) - _luma(plain)
        skin = ~_near(region, 1)
        assert np.array_equal(shiny[skin], plain[skin])  # the skin is untouched
        assert gain.min() >= -0.5 and gain.max() > 20  # a highlight, not a smudge
        xs = np.nonzero(gain > 0.5 * gain.max())[1]
        centres[name] = xs.mean()
    # the highlight sits where the face is lit: in the middle under even light, else on the bright side
    assert abs(centres["even"] - 56) < 6
    assert centres["right"] > centres["even"] + 4 and centres["left"] < centres["even"] - 4


def _batch(n=16, seed=0):
    g = np.random.default_rng(seed)
    faces = np.stack([_face(int(a), int(b), s) for s, (a, b) in enumerate(g.integers(90, 210, (n, 2)))])
    return torch.from_numpy(faces[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_mask_augment_lighting_draws_last_and_touches_only_near_the_mask():
    x = _batch()
    kinds = ["surgical", "cloth", "n95"]
    plain, region = MaskAugment(types=kinds, kps_jitter=0.0)(x, generator=torch.Generator().manual_seed(2))
    lit_aug = MaskAugment(types=kinds, kps_jitter=0.0, lighting=True)
    lit, region2 = lit_aug(x, generator=torch.Generator().manual_seed(2))
    again, _ = lit_aug(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(lit, again)  # deterministic with a generator
    assert torch.equal(region, region2)  # same masks, same places: lighting is drawn after them
    changed = (lit != plain).any(1)
    assert changed.any(-1).any(-1).all()  # every sample lit
    assert not changed[:, :EYE_ROW].any()
    for i in range(len(x)):
        near = _near(region[i, 0].numpy() > 0.01, 9)
        assert not (changed[i].numpy() & ~near).any()
    assert "lighting=True" in repr(lit_aug)
    styles = MaskAugment(types=["cloth", "surgical"]).sample_styles(64, torch.Generator().manual_seed(0))
    light = lit_aug.sample_lighting(styles["type"], torch.Generator().manual_seed(0))
    cloth = styles["type"] == MASK_TYPES.index("cloth")
    assert bool((light["sheen"][cloth] == 0).all()) and bool((light["sheen"][~cloth] >= SHEEN_RANGE[0]).all())
    assert bool(((light["shadow"] >= SHADOW_RANGE[0]) & (light["shadow"] <= SHADOW_RANGE[1])).all())


def test_mask_augment_shadow_and_sheen_as_the_per_image_renderer():
    """Both renderers light a mask alike: the skin under the mask darkens, the surgical mask brightens."""
    x = _batch(8)
    aug = MaskAugment(types=["surgical"], kps_jitter=0.0)
    g = torch.Generator().manual_seed(4)
    b = x.shape[0]
    kps = torch.from_numpy(np.asarray(ARCFACE_KPS, np.float32))[None].repeat(b, 1, 1)
    style = aug.sample_styles(b, g)
    style["shape"][:, 3] = 1.25  # short masks: their lower edge inside the crop
    apply, noise = torch.ones(b), (torch.zeros(b, 1, 6, 6), torch.zeros(b, 1, 13, 13))
    seeds = torch.zeros(b)
    plain, region = aug.render(x, kps, style, apply, noise, seeds)
    lit_style = {**style, "shadow": torch.full((b,), 0.4), "sheen": torch.full((b,), 0.3)}
    lit, _ = aug.render(x, kps, lit_style, apply, noise, seeds)
    def luma(t):
        return (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]) * 127.5

    gain = luma(lit) - luma(plain)
    inside = region[:, 0] > 0.99
    assert float(gain[inside].mean()) > 3.0  # sheen on the fabric
    below = torch.zeros_like(inside)
    for i in range(b):
        bottom = int(torch.nonzero(region[i, 0, :, 56] > 0.5).max())
        below[i, bottom + 3, 50:62] = True
    assert float(gain[below].mean()) < -5.0  # shadow under the lower edge


def test_recipe_key_and_cli_option(tmp_path):
    from click.testing import CliRunner

    from insightface_bfm.cli import main
    from insightface_bfm.masks.masked_sets import read_manifest

    r = Recipe.from_dict({"data": {"path": "synthetic:4:2", "mask_lighting": True}})
    assert r.data.mask_lighting is True
    src, dst = tmp_path / "src" / "a", tmp_path / "dst"
    src.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(src / f"{i}.png"), _face(seed=i))
    res = CliRunner().invoke(main, ["mask", str(src.parent), str(dst), "--lighting", "--quiet"])
    assert res.exit_code == 0, res.output
    header, entries = read_manifest(dst / "mask_manifest.jsonl")
    assert header["lighting"] is True
    for e in entries:
        style = MaskStyle.from_dict(e["faces"][0]["style"])
        assert style.shadow >= SHADOW_RANGE[0]
        out, _ = render_mask(cv2.imread(str(src / e["image"].split("/")[-1])), ARCFACE_KPS, style)
        assert np.array_equal(out, cv2.imread(str(dst / e["image"])))  # the manifest rebuilds it
    res = CliRunner().invoke(main, ["mask", str(src.parent), str(dst), "--quiet"])
    assert res.exit_code != 0 and "lighting True" in res.output


def test_trainer_lights_every_mask_it_draws(tmp_path):
    from test_trainer import tiny

    from insightface_bfm.train.trainer import Trainer

    recipe = tiny(tmp_path, "bfm", train={"max_steps": 1, "output": str(tmp_path / "lit")},
                  optim={"classifier_steps": 2}, data={"mask_lighting": True, "classifier_worn_low": 0.5})
    trainer = Trainer(recipe)
    assert trainer.mask_augment.lighting and trainer.classifier_mask_augment.lighting
    trainer.fit()
    assert (tmp_path / "lit" / "metrics.jsonl").is_file()
    assert not Trainer(tiny(tmp_path, "bfm")).mask_augment.lighting  # off unless asked for
