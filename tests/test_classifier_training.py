"""optim.classifier_steps and optim.classifier_ema: C's further steps and the average of its weights."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import assert_same_weights, faces, losses_of, tiny  # noqa: F401 (fixture)

from insightface_bfm.errors import RecipeError
from insightface_bfm.train import checkpoint as ckpt
from insightface_bfm.train.recipe import Recipe, load_recipe
from insightface_bfm.train.trainer import Trainer

torch.set_num_threads(1)

C_KEYS = "classifier."


def weights(run_dir, prefix=None):
    w = ckpt.load_weights(run_dir)
    return {k: v for k, v in w.items() if prefix is None or k.startswith(prefix)}


def assert_only_c_differs(a: dict, b: dict) -> None:
    """E_F, E_P and the heads bit for bit equal in the two runs' weights; C's weights not."""
    others = [k for k in a if not k.startswith(C_KEYS)]
    assert others and all(torch.equal(a[k], b[k]) for k in others)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(C_KEYS) and a[k].is_floating_point())


def test_paper_recipe_keeps_both_off():
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "paper_casia_r50.yaml", check_paths=False)
    assert (r.optim.classifier_steps, r.optim.classifier_ema) == (1, 0.0)
    assert r.data.classifier_worn_low is None and r.data.mask_worn_low == 0.0


def test_thresholds_per_extractor_only_where_named():
    # one threshold (the paper) unless a recipe asks for one per extractor: the real-faces and
    # pack-building recipes do, and C's worn-low masks come with both
    recipes = Path(__file__).parents[1] / "recipes"
    assert load_recipe(recipes / "paper_casia_r50.yaml", check_paths=False).eval.thresholds == "one"
    for name in ("real_faces_bfm.yaml", "build_pack.yaml"):
        r = load_recipe(recipes / name, check_paths=False)
        assert (r.eval.thresholds, r.data.classifier_worn_low) == ("per_extractor", 0.05)
    with pytest.raises(RecipeError, match="'eval.thresholds' must be one of one, per_extractor, got 'two'"):
        Recipe.from_dict({"eval": {"thresholds": "two"}}, source="r.yaml", check_paths=False)


@pytest.mark.parametrize("optim, message", [
    ({"classifier_steps": 0}, "'optim.classifier_steps' must be >= 1"),
    ({"classifier_ema": 1.0}, "'optim.classifier_ema' must be <= 0.9999"),
])
def test_bad_values_are_one_line_errors(tmp_path, optim, message):
    with pytest.raises(RecipeError, match=message):
        tiny(tmp_path, "bfm", optim=optim)


def test_modes_without_c_ignore_them(tmp_path, faces):  # noqa: F811
    # as data.classifier_photo_aug: one override serves both trainings of a comparison
    for mode, model in (("baseline2", {}), ("bfm", {"classifier": False})):
        r = tiny(tmp_path, mode, model=model, optim={"classifier_steps": 3, "classifier_ema": 0.9})
        trainer = Trainer(r, dataset=faces)
        assert (trainer.classifier_steps, trainer.classifier_average) == (1, None)
        assert "classifier_mask" not in trainer.generators


def test_further_steps_move_c_only_and_keep_e_p_masks(tmp_path, faces):  # noqa: F811
    # K = 3 against K = 1, same seed: E_P, E_F and the heads end bit for bit equal (the further
    # steps touch C only, and draw their masks from their own stream); C differs
    one = tiny(tmp_path, "bfm", train={"max_steps": 3, "output": str(tmp_path / "one")})
    three = tiny(tmp_path, "bfm", train={"max_steps": 3, "output": str(tmp_path / "three")},
                 optim={"classifier_steps": 3})
    Trainer(one, dataset=faces).fit()
    trainer = Trainer(three, dataset=faces)
    calls = []
    original = trainer.classifier_step
    trainer.classifier_step = lambda x: calls.append(len(x)) or original(x)
    trainer.fit()
    assert calls == [8] * 6  # two further steps per batch of 8
    assert_only_c_differs(weights(tmp_path / "one"), weights(tmp_path / "three"))


def test_classifier_worn_low_reaches_c_further_steps_only(tmp_path, faces):  # noqa: F811
    # data.classifier_worn_low: the further steps' masks are worn low (every one at 1.0), E_P's
    # masks and weights are those of the run without it
    base = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "base")},
                optim={"classifier_steps": 2})
    low = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "low")},
               optim={"classifier_steps": 2}, data={"classifier_worn_low": 1.0})
    Trainer(base, dataset=faces).fit()
    trainer = Trainer(low, dataset=faces)
    assert trainer.mask_augment.worn_low == 0.0 and trainer.classifier_mask_augment.worn_low == 1.0
    trainer.fit()
    assert_only_c_differs(weights(tmp_path / "base"), weights(tmp_path / "low"))
    # the same draws worn low (under the nose) against not: each mask's top edge lower, so it
    # covers fewer pixels above the mouth of a blank face
    x = torch.zeros(6, 3, 112, 112)
    usual, _ = trainer.mask_augment(x, generator=torch.Generator().manual_seed(0))
    worn_low, _ = trainer.classifier_mask_augment(x, generator=torch.Generator().manual_seed(0))
    covered = [(m[:, :, 50:72] != 0).any(1).flatten(1).sum(1) for m in (usual, worn_low)]
    assert bool((covered[1] < covered[0]).all()), covered


def test_further_steps_teach_c_more(tmp_path, faces):  # noqa: F811
    # eq. 1 on each batch before its joint step (the logged "mask"), last 3 of 9 steps: lower with
    # 4 steps per batch (about half at seeds 0-3 of this setting; equal if the steps did not run)
    mask_term = {}
    for k in (1, 4):
        r = tiny(tmp_path, "bfm", train={"max_steps": 9, "output": str(tmp_path / f"k{k}")},
                 optim={"classifier_steps": k, "lr": 0.003, "milestones": []})
        Trainer(r, dataset=faces).fit()
        lines = [json.loads(x) for x in (tmp_path / f"k{k}" / "metrics.jsonl").read_text().splitlines()]
        mask_term[k] = np.mean([x["mask"] for x in lines if "mask" in x][-3:])
        assert ("mask_extra" in lines[-1]) == (k > 1)
    assert mask_term[4] < 0.75 * mask_term[1], mask_term


def test_average_is_the_exponential_moving_average_of_c(tmp_path, faces):  # noqa: F811
    # C's weights after every step, averaged by hand: avg_1 = C_1, avg_t = d avg_(t-1) + (1-d) C_t
    d = 0.5
    r = tiny(tmp_path, "bfm", train={"max_steps": 4, "output": str(tmp_path / "ema")},
             optim={"classifier_ema": d, "classifier_steps": 2})
    trainer = Trainer(r, dataset=faces)
    seen = []
    update = trainer.classifier_average.update

    def record():
        update()
        seen.append({k: v.detach().clone() for k, v in trainer.model.classifier.state_dict().items()})

    trainer.classifier_average.update = record
    training_c = trainer.model.classifier
    trainer.fit()
    assert len(seen) == 8  # 4 batches x 2 steps
    expected = dict(seen[0])
    for w in seen[1:]:
        expected = {k: d * expected[k] + (1 - d) * w[k] if w[k].is_floating_point() else w[k] for k in w}
    saved = weights(tmp_path / "ema", C_KEYS)
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(saved[C_KEYS + k], v, rtol=1e-5, atol=1e-6)
        else:  # counts (BatchNorm's num_batches_tracked) are the latest, not averaged
            assert torch.equal(saved[C_KEYS + k], v), k
    # the last weights of the training C differ from the average; they are kept in the checkpoint
    state = ckpt.load_state(tmp_path / "ema")["classifier_average"]
    last = seen[-1]
    assert all(torch.equal(state["training_weights"][k], last[k]) for k in last)
    assert not torch.equal(saved[C_KEYS + "fc1.weight"], last["fc1.weight"])
    # the model in memory after fit is the one saved
    got = {C_KEYS + k: v for k, v in training_c.state_dict().items()}
    assert all(torch.equal(got[k], saved[k]) for k in saved)


def test_resume_continues_the_average_exactly(tmp_path, faces):  # noqa: F811
    options = {"classifier_ema": 0.9, "classifier_steps": 2}
    whole = tiny(tmp_path, "bfm", train={"max_steps": 4, "output": str(tmp_path / "whole")}, optim=options)
    Trainer(whole, dataset=faces).fit()
    part = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "part")}, optim=options)
    Trainer(part, dataset=faces).fit()
    torch.rand(5), np.random.rand(2)
    part.train.max_steps = 4
    Trainer(part, dataset=faces, resume=True).fit()
    assert losses_of(tmp_path / "part") == losses_of(tmp_path / "whole")
    assert_same_weights(tmp_path / "part", tmp_path / "whole")
    a = ckpt.load_state(tmp_path / "part")["classifier_average"]
    b = ckpt.load_state(tmp_path / "whole")["classifier_average"]
    assert int(a["n_averaged"]) == int(b["n_averaged"]) == 8
    assert all(torch.equal(a["training_weights"][k], b["training_weights"][k]) for k in b["training_weights"])


def test_evaluation_while_training_uses_the_average(tmp_path, faces):  # noqa: F811
    r = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "ev")},
             optim={"classifier_ema": 0.9})
    trainer = Trainer(r, dataset=faces)
    trainer.fit()
    seen = {}
    import insightface_bfm.train.holdout as holdout

    def fake(model, *args, **kwargs):
        seen["c"], seen["training"] = model.classifier, model.classifier.training
        return {f"case{c}": {"accuracy": 0.0} for c in (1, 2, 3)}

    trainer.holdout = "synthetic:3:2:1"
    original, holdout.evaluate_holdout = holdout.evaluate_holdout, fake
    try:
        trainer.evaluate()
    finally:
        holdout.evaluate_holdout = original
    assert seen["c"] is trainer.classifier_average.module and seen["training"] is False
    assert trainer.model.classifier is not seen["c"]  # put back after


def test_resume_across_switching_the_options(tmp_path, faces):  # noqa: F811
    # a run without them, resumed with them: C's stream and average start at the resume
    plain = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "a")})
    Trainer(plain, dataset=faces).fit()
    plain.optim.classifier_steps, plain.optim.classifier_ema, plain.train.max_steps = 2, 0.9, 4
    resumed = Trainer(plain, dataset=faces, resume=True)
    assert "classifier_mask" in resumed.generators
    resumed.fit()
    state = ckpt.load_state(tmp_path / "a")["classifier_average"]
    assert int(state["n_averaged"]) == 4  # 2 batches x 2 steps since the resume
    # a run with the average, resumed without it: C trains on from its own weights, not the average
    averaged = tiny(tmp_path, "bfm", train={"max_steps": 2, "output": str(tmp_path / "b")},
                    optim={"classifier_ema": 0.9})
    Trainer(averaged, dataset=faces).fit()
    training = ckpt.load_state(tmp_path / "b")["classifier_average"]["training_weights"]
    saved = weights(tmp_path / "b", C_KEYS)
    assert not torch.equal(training["fc1.weight"], saved[C_KEYS + "fc1.weight"])
    averaged.optim.classifier_ema, averaged.train.max_steps = 0.0, 3
    resumed = Trainer(averaged, dataset=faces, resume=True)
    got = resumed.model.classifier.state_dict()
    assert all(torch.equal(got[k], training[k]) for k in training)
