"""The trainer on tiny generated data: every mode trains, checkpoints are atomic, resume is exact."""

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from insightface_bfm.data import open_dataset
from insightface_bfm.errors import BFMError
from insightface_bfm.imaging import to_network_input
from insightface_bfm.train import checkpoint as ckpt
from insightface_bfm.train.model import BFMModel, load_checkpoint
from insightface_bfm.train.recipe import Recipe
from insightface_bfm.train.trainer import Trainer, collate_faces, learning_rate, to_network_tensor

torch.set_num_threads(1)

TINY_NET = {"backbone": "r18", "embedding_size": 16, "s": 16.0, "m": 0.2,
            "backbone_options": {"width": 0.0625, "layers": [1, 1, 1, 1]}}


def tiny(tmp_path, mode="bfm", **sections):
    data = {
        "mode": mode,
        "model": dict(TINY_NET),
        "data": {"path": "synthetic:6:4:0", "num_workers": 0},  # 24 images: 3 steps/epoch of 8
        "optim": {"batch_size": 8, "epochs": 2, "milestones": [1]},
        "train": {"output": str(tmp_path / mode), "log_every": 1, "progress": False},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return Recipe.from_dict(data)


@pytest.fixture(scope="module")
def faces():
    return open_dataset("synthetic:6:4:0")


def losses_of(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_collate_drops_corrupt_samples_and_counts_them():
    img = np.zeros((112, 112, 3), np.uint8)
    images, labels, skipped = collate_faces([(img, 3), None, (img + 1, 5)])
    assert images.shape == (2, 112, 112, 3) and images.dtype == torch.uint8
    assert labels.tolist() == [3, 5] and skipped == 1
    assert collate_faces([None, None]) == (None, None, 2)


def test_device_conversion_matches_the_image_form():
    img = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    ours = to_network_tensor(torch.from_numpy(img))
    assert ours.is_contiguous()
    np.testing.assert_allclose(ours.numpy(), to_network_input(img), atol=1e-6)


def test_learning_rate_schedule():
    r = Recipe.from_dict({"data": {"path": "synthetic:4:2"},
                          "optim": {"lr": 0.1, "milestones": [2, 4], "warmup_epochs": 1}})
    lrs = [learning_rate(s, 10, r.optim) for s in (0, 4, 9, 10, 19, 20, 39, 40, 1000)]
    assert lrs == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("mode, terms", [
    ("baseline1", {"full"}),
    ("baseline2", {"full"}),
    ("bfm", {"mask", "full", "guided", "partial"}),
])
def test_each_mode_trains_and_checkpoints(tmp_path, faces, mode, terms):
    r = tiny(tmp_path, mode, train={"max_steps": 2})
    summary = Trainer(r, dataset=faces).fit()
    assert summary["steps"] == 2
    records = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records] == [1, 2]
    for x in records:
        assert terms | {"loss", "lr", "images_per_s"} <= set(x)
        assert all(np.isfinite(x[t]) for t in terms)
    # checkpoint layout of the CONTRACT, prefixes per part
    last = (tmp_path / mode / "last").read_text().strip()
    assert last == "step_0000002"
    weights = ckpt.load_weights(tmp_path / mode)
    prefixes = {k.split(".")[0] for k in weights}
    expected = {"full", "head_full"} | ({"classifier", "partial", "head_partial"} if mode == "bfm" else set())
    assert prefixes == expected
    model, recipe = load_checkpoint(tmp_path / mode)
    assert isinstance(model, BFMModel) and recipe["mode"] == mode and not model.training
    x = torch.zeros(2, 3, 112, 112)
    assert model.embed(x).shape == (2, 16)
    if mode == "bfm":
        assert model.mask_probability(x).shape == (2,)
        assert model.embed(x, "partial").shape == (2, 16)


def test_bfm_terms_come_from_the_loss_functions(faces):
    # forward's terms equal the paper's equations computed here by hand from the same networks
    from insightface_bfm import losses

    r = Recipe.from_dict({"model": dict(TINY_NET), "data": {"path": "synthetic:6:4:0"}})
    torch.manual_seed(0)
    model = BFMModel(r, 6).eval()
    x, xm = torch.randn(4, 3, 112, 112), torch.randn(4, 3, 112, 112)
    labels = torch.tensor([0, 1, 2, 3])
    terms = model(x, xm, labels)
    with torch.no_grad():
        p, pm = model.partial(x), model.partial(xm)
        full = losses.arcface_full_loss(model.head_full(model.full(x), labels), labels)
        mask = losses.mask_loss(model.classifier(x), model.classifier(xm))
        guided = losses.guided_loss(p, pm)
        head = model.head_partial
        partial = losses.arcface_partial_loss(head(p, labels), head(pm, labels), labels)
    for name, value in (("full", full), ("mask", mask), ("guided", guided), ("partial", partial)):
        assert float(terms[name].detach()) == pytest.approx(float(value), rel=1e-5), name


@pytest.mark.parametrize("partial_fc", [False, True])
def test_pair_reduction_reaches_eqs_1_and_5(partial_fc):
    # loss.pair_reduction "mean" (the named deviation) halves exactly the terms of eqs. 1 and 5
    def terms(reduction, mode="bfm"):
        r = Recipe.from_dict({"mode": mode, "model": dict(TINY_NET, partial_fc=partial_fc),
                              "data": {"path": "synthetic:6:4:0"}, "loss": {"pair_reduction": reduction}})
        torch.manual_seed(0)
        model = BFMModel(r, 6).eval()
        g = torch.Generator().manual_seed(1)
        x, xm = torch.randn(4, 3, 112, 112, generator=g), torch.randn(4, 3, 112, 112, generator=g)
        with torch.no_grad():
            return {k: float(v) for k, v in model(x, xm, torch.tensor([0, 1, 2, 3])).items()}

    printed, halved = terms("sum"), terms("mean")
    for name in ("mask", "partial"):
        assert printed[name] == pytest.approx(2 * halved[name], rel=1e-5), name
    for name in ("full", "guided"):
        assert printed[name] == pytest.approx(halved[name], rel=1e-6), name
    baseline2 = terms("sum", "baseline2")["full"]
    assert baseline2 == pytest.approx(2 * terms("mean", "baseline2")["full"], rel=1e-5)


def test_resume_continues_the_exact_loss_sequence(tmp_path, faces):
    # 4 steps in one go vs 2 steps, stop, resume, 2 more; 3 steps per epoch, so the resumed run
    # restarts mid-epoch and crosses an epoch boundary (new order, lr milestone at epoch 1).
    # C's photo variation on: its generator is part of the state too
    whole = tiny(tmp_path, "bfm", train={"max_steps": 4, "output": str(tmp_path / "whole")},
                 model={"dropout": 0.2}, data={"classifier_photo_aug": 0.5})
    Trainer(whole, dataset=faces).fit()
    part = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "part")},
                model={"dropout": 0.2}, data={"classifier_photo_aug": 0.5})
    Trainer(part, dataset=faces).fit()
    # other work in between must not matter: RNGs come back from the checkpoint
    torch.rand(7), np.random.rand(3)
    part.train.max_steps = 4
    Trainer(part, dataset=faces, resume=True).fit()
    expected = losses_of(tmp_path / "whole")
    assert [s for s, _ in expected] == [1, 2, 3, 4]
    assert losses_of(tmp_path / "part") == expected  # exactly, not approximately
    assert_same_weights(tmp_path / "part", tmp_path / "whole")  # and the last step's update too


def assert_same_weights(run, reference):
    """Every tensor of ``run``'s last checkpoint equals ``reference``'s, bit for bit."""
    got, want = ckpt.load_weights(run), ckpt.load_weights(reference)
    assert set(got) == set(want)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ after resuming, e.g. {differ[:3]}"


def test_checkpoint_write_is_atomic(tmp_path, faces, monkeypatch):
    r = tiny(tmp_path, "baseline1", train={"max_steps": 1})
    trainer = Trainer(r, dataset=faces)
    trainer.fit()
    run = tmp_path / "baseline1"
    assert (run / "last").read_text().strip() == "step_0000001"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    trainer.step = 2
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    # nothing half-written: the old checkpoint is intact and still the last one
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]
    assert (run / "last").read_text().strip() == "step_0000001"
    assert ckpt.load_state(run)["step"] == 1


def test_state_loads_with_weights_only(tmp_path, faces):
    Trainer(tiny(tmp_path, "baseline2", train={"max_steps": 1}), dataset=faces).fit()
    state_file = ckpt.resolve_checkpoint(tmp_path / "baseline2") / "state.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["step"] == 1 and "optimizer" in state and "rng" in state


def test_resume_without_checkpoint_is_an_error(tmp_path, faces):
    with pytest.raises(BFMError, match="--resume: no checkpoint in"):
        Trainer(tiny(tmp_path, "baseline1"), dataset=faces, resume=True)


def test_finetune_init_and_freeze_full(tmp_path, faces):
    Trainer(tiny(tmp_path, "baseline1", train={"max_steps": 1}), dataset=faces).fit()
    source = tmp_path / "baseline1"
    pth = tmp_path / "backbone.pth"
    torch.save(load_checkpoint(source)[0].full.state_dict(), pth)  # an arcface_torch-style .pth
    r = tiny(tmp_path, "bfm", train={"max_steps": 2},
             init={"full": str(source), "partial": str(pth), "freeze_full": True})
    trainer = Trainer(r, dataset=faces)
    before = {k: v.clone() for k, v in trainer.model.full.state_dict().items()}
    partial_before = trainer.model.partial.state_dict()["conv1.weight"].clone()
    torch.testing.assert_close(partial_before, before["conv1.weight"])  # both from the same weights
    trainer.fit()
    after = trainer.model.full.state_dict()
    for k, v in before.items():  # frozen: weights and BatchNorm statistics unchanged
        torch.testing.assert_close(after[k], v)
    assert not torch.equal(trainer.model.partial.state_dict()["conv1.weight"], partial_before)
    with pytest.raises(BFMError, match=r"init\.full .*weights do not fit the network"):
        bad = tiny(tmp_path, "bfm", init={"full": str(source)}, model={"embedding_size": 8})
        Trainer(bad, dataset=faces)


def test_out_overrides_train_output_and_the_run_records_it(tmp_path):
    # `bfm-train recipe.yaml --out DIR`: the run goes to DIR, and the recipe it records says so
    from insightface_bfm.cli import main

    recipe = tiny(tmp_path, "baseline1", train={"max_steps": 1}).to_dict()
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "elsewhere"
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "baseline1").exists()  # the recipe's own train.output
    for saved in (out / "recipe.yaml", ckpt.resolve_checkpoint(out) / "recipe.yaml"):
        assert yaml.safe_load(saved.read_text())["train"]["output"] == str(out), saved


def test_cli_trains_and_compares(tmp_path):
    from insightface_bfm.cli import main
    from insightface_bfm.train.holdout import evaluate_holdout

    recipe = tiny(tmp_path, "bfm").to_dict()
    recipe["train"].update(max_steps=1)
    recipe.pop("mode")
    recipe["compare"] = ["baseline1", "bfm"]
    holdout = {"holdout": "synthetic:5:3:7", "pairs": 40, "folds": 4, "batch_size": 16}
    recipe["eval"] = holdout
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Baseline 1" in result.output and "BFM" in result.output and "Case 1" in result.output
    table = json.loads((out / "comparison.json").read_text())
    assert set(table) == {"baseline1", "bfm"}
    base, bfm = table["baseline1"]["eval"], table["bfm"]["eval"]
    cases = ("case1", "case2", "case3")
    assert base["pairs"] == bfm["pairs"] == 40
    # Baseline 1 has no E_P: it routes nothing there; BFM's routing is printed as the table has it
    assert [base[c]["routed_partial"] for c in cases] == [0.0, 0.0, 0.0]
    assert base["classifier_accuracy"] is None and bfm["classifier_accuracy"] is not None
    assert "BFM routing: share of pairs sent to E_P per case: " + ", ".join(
        f"case {k} {100 * bfm[c]['routed_partial']:.0f}%" for k, c in enumerate(cases, 1)) in result.output
    # BFM's E_F is Baseline 1's trained model, frozen (the comparison reuses it: same weights, bit for bit)
    b1_weights, bfm_weights = ckpt.load_weights(out / "baseline1"), ckpt.load_weights(out / "bfm")
    extractor = [k for k in b1_weights if k.startswith("full.")]
    assert len(extractor) > 20
    for k in extractor:
        assert torch.equal(bfm_weights[k], b1_weights[k]), f"BFM's {k} is not Baseline 1's"
    # the table is what the saved models give on the held-out pairs: accuracy and routing per case
    settings = {k: holdout[k] for k in ("pairs", "folds", "batch_size")}
    models = {mode: load_checkpoint(out / mode)[0] for mode in table}
    for mode, model in models.items():
        assert evaluate_holdout(model, holdout["holdout"], **settings) == table[mode]["eval"], mode
    # The design: where C calls no face masked, BFM is Baseline 1 (same pairs, same masks, same E_F),
    # in every case. With C made to answer "unmasked", BFM's table must be Baseline 1's row.
    unmasked_c = models["bfm"]
    unmasked_c.mask_probability = lambda x: torch.zeros(len(x))
    routed_full = evaluate_holdout(unmasked_c, holdout["holdout"], **settings)
    for c in cases:
        assert routed_full[c] == base[c], c


def test_bfm_full_extractor_trains_exactly_as_baseline1(tmp_path, faces):
    # Same seed: same initial weights, data order and flips; E_F's gradient comes from eq. 2 only.
    # So BFM's E_F after some steps is baseline 1's model (what makes the quickstart's table a
    # comparison of methods, not of random draws), and E_P started from the same weights.
    b1 = Trainer(tiny(tmp_path, "baseline1", train={"max_steps": 2}), dataset=faces)
    b1.fit()
    bfm = Trainer(tiny(tmp_path, "bfm", train={"max_steps": 2}), dataset=faces)
    start = {k: v.clone() for k, v in bfm.model.partial.state_dict().items()}
    for k, v in bfm.model.full.state_dict().items():
        torch.testing.assert_close(start[k], v)
    bfm.fit()
    for k, v in b1.model.full.state_dict().items():
        torch.testing.assert_close(bfm.model.full.state_dict()[k], v, atol=1e-6, rtol=1e-5, msg=k)
    assert not torch.equal(bfm.model.partial.state_dict()["conv1.weight"], start["conv1.weight"])


def test_partial_fc_heads_train_and_save_full_centres(tmp_path, faces):
    def recipe(name, steps):
        return tiny(tmp_path, "bfm", model={"partial_fc": True, "sample_rate": 0.5},
                    train={"max_steps": steps, "output": str(tmp_path / name)})

    trainer = Trainer(recipe("part", 2), dataset=faces)
    trainer.fit()
    weights = ckpt.load_weights(tmp_path / "part")
    assert weights["head_full.weight"].shape == (6, 16) and weights["head_partial.weight"].shape == (6, 16)
    model, _ = load_checkpoint(tmp_path / "part")
    torch.testing.assert_close(model.head_full.weight, trainer.model.head_full.weight)
    # resumed (the saved full centres are sharded again, the sampling RNG restored), the run continues
    # as an uninterrupted one: the same losses (across an epoch boundary) and the same final centres
    resumed = Trainer(recipe("part", 4), dataset=faces, resume=True)
    assert resumed.step == 2
    resumed.fit()
    Trainer(recipe("whole", 4), dataset=faces).fit()
    expected = losses_of(tmp_path / "whole")
    assert [s for s, _ in expected] == [1, 2, 3, 4]
    assert losses_of(tmp_path / "part") == expected
    assert_same_weights(tmp_path / "part", tmp_path / "whole")
