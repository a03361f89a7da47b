import pytest
import torch

from insightface_bfm.train.augment import PhotoVariation


def batch(n=16):
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_varies_the_chosen_share_and_stays_in_range():
    x = batch(64)
    out = PhotoVariation(0.5)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert 16 < int(changed.sum()) < 48  # about half of 64


def test_deterministic_for_a_generator_and_identity_at_p0():
    x = batch()
    a = PhotoVariation(1.0)(x, generator=torch.Generator().manual_seed(3))
    b = PhotoVariation(1.0)(x, generator=torch.Generator().manual_seed(3))
    c = PhotoVariation(1.0)(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(PhotoVariation(0.0)(x), x)
    with pytest.raises(ValueError, match="p must be"):
        PhotoVariation(1.5)


def test_classifier_sees_the_varied_copies_only(tmp_path):
    from insightface_bfm.train.recipe import Recipe
    from insightface_bfm.train.trainer import Trainer

    recipe = Recipe.from_dict({
        "mode": "bfm",
        "model": {"backbone": "r18", "embedding_size": 16, "backbone_options": {"width": 0.0625,
                                                                              "layers": [1, 1, 1, 1]}},
        "data": {"path": "synthetic:4:2:0", "num_workers": 0, "classifier_photo_aug": 1.0},
        "optim": {"batch_size": 8, "epochs": 1},
        "train": {"output": str(tmp_path / "run"), "progress": False},
    })
    trainer = Trainer(recipe)
    seen = {}
    for part in ("classifier", "full", "partial"):
        getattr(trainer.model, part).register_forward_hook(
            lambda m, inp, out, part=part: seen.setdefault(part, []).append(inp[0].detach().clone()))
    images = torch.from_numpy(__import__("numpy").stack([trainer.dataset[i][0] for i in range(8)]))
    x, xm, labels = trainer.prepare_batch(images, torch.arange(8) % 4)
    trainer.optimize(x, xm, labels)
    assert {k: len(v) for k, v in seen.items()} == {"classifier": 1, "full": 1, "partial": 1}
    assert seen["classifier"][0].shape == (16, 3, 112, 112)
    assert not torch.equal(seen["classifier"][0], torch.cat([x, xm]))  # C: the varied copies
    # E_F and E_P: exactly the faces and their masked copies, never the varied ones
    assert torch.equal(seen["full"][0], x), "E_F was not fed the unvaried faces x"
    assert torch.equal(seen["partial"][0], torch.cat([x, xm])), "E_P was not fed the unvaried (x, masked x)"
