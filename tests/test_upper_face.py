"""model.partial_rows: E_P sees the upper face only, in training, evaluation, head init and export."""

import export_helpers as helpers
import numpy as np
import pytest
import torch
import yaml
from test_export import SMALL_MBF, _normalised
from test_head_init import _centres
from test_trainer import tiny

from insightface_bfm.data import open_dataset
from insightface_bfm.errors import RecipeError
from insightface_bfm.evaluation.embedders import open_embedder
from insightface_bfm.export import export_checkpoint
from insightface_bfm.nets import UpperFace
from insightface_bfm.train.checkpoint import save_checkpoint
from insightface_bfm.train.model import BFMModel
from insightface_bfm.train.recipe import load_recipe
from insightface_bfm.train.trainer import Trainer

torch.set_num_threads(1)
ROWS = 60


def _lower_changed(x, seed=1):
    """x with every row from ROWS down replaced by other values (a different mask, or none)."""
    y = x.clone()
    y[:, :, ROWS:] = torch.from_numpy(
        np.random.default_rng(seed).uniform(-1, 1, y[:, :, ROWS:].shape).astype(np.float32))
    return y


def _model(rows=ROWS):
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_MBF.items()}
    recipe = {"mode": "bfm", "data": {"path": "synthetic:5:2"},
              "model": {"backbone": "mbf", "embedding_size": 32, "backbone_options": options,
                        "partial_rows": rows}}
    torch.manual_seed(0)
    return recipe, helpers.randomise(BFMModel(recipe, num_classes=5)).eval()


def test_upper_face_keeps_the_top_rows_and_greys_the_rest():
    x = helpers.faces(2)
    out = UpperFace(ROWS)(x)
    assert torch.equal(out[:, :, :ROWS], x[:, :, :ROWS])
    assert torch.count_nonzero(out[:, :, ROWS:]) == 0
    for bad in (0, 112, 60.5, None):
        with pytest.raises(ValueError, match="rows must be an integer"):
            UpperFace(bad)
    with pytest.raises(ValueError, match="112-row"):
        UpperFace(ROWS)(torch.zeros(1, 3, 96, 96))


def test_partial_embedding_ignores_the_lower_face_and_full_does_not():
    _, model = _model()
    x = helpers.faces(3)
    y = _lower_changed(x)
    assert torch.equal(model.embed(x, "partial"), model.embed(y, "partial"))
    assert (model.embed(x, "full") - model.embed(y, "full")).abs().max() > 1e-5
    # the training pass sees the same view: E_P's features of x and of a differently "masked" x agree,
    # so the guided loss (eq. 4) is 0
    model.train()
    terms = model(x, y, torch.tensor([0, 1, 2]))
    assert terms["guided"].item() < 1e-10
    # without the option, the paper's E_P sees the whole crop; the weights' names are the same either way
    _, paper = _model(rows=None)
    assert paper.partial_view is None and paper.partial_extractor is paper.partial
    assert (paper.embed(x, "partial") - paper.embed(y, "partial")).abs().max() > 1e-5
    assert sorted(paper.state_dict()) == sorted(model.state_dict())


def test_partial_onnx_and_checkpoint_evaluation_apply_the_cut(tmp_path):
    recipe, model = _model()
    run = tmp_path / "run"
    save_checkpoint(run, 1, model.state_dict(), {}, yaml.safe_dump(recipe))
    written = export_checkpoint(run, tmp_path / "out")
    x = helpers.faces(2, seed=3)
    y = _lower_changed(x)
    session = helpers.session(written["partial"])
    got_x, got_y = (session.run(None, {"input": t.numpy()})[0] for t in (x, y))
    expected = model.embed(x, "partial").numpy()
    assert np.abs(_normalised(got_x) - expected).max() < 1e-5
    assert np.abs(_normalised(got_y) - expected).max() < 1e-5
    # bfm eval on the checkpoint embeds through the same view
    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    other = crops.copy()
    other[:, ROWS:] = 255 - other[:, ROWS:]
    embedder = open_embedder(run)
    a, b = embedder.embed(crops)["partial"], embedder.embed(other)["partial"]
    np.testing.assert_allclose(_normalised(a), _normalised(b), atol=1e-5)


def test_head_centres_come_from_the_upper_face_view(tmp_path):
    faces = open_dataset("synthetic:6:4:0")
    Trainer(tiny(tmp_path, "baseline1", train={"max_steps": 1}), dataset=faces).fit()
    source = str(tmp_path / "baseline1")
    r = tiny(tmp_path, "bfm", train={"max_steps": 1}, model={"partial_rows": ROWS},
             init={"full": source, "partial": source, "freeze_full": True, "head": "centres"})
    trainer = Trainer(r, dataset=faces)
    centres = _centres(trainer.model.partial_extractor, faces)
    torch.testing.assert_close(trainer.model.head_partial.weight.detach(), centres, atol=1e-5, rtol=1e-4)


def test_recipe_key_is_checked_and_off_in_the_paper_recipe():
    assert load_recipe("recipes/paper_casia_r50.yaml", check_paths=False).model.partial_rows is None
    for bad, message in ((0, ">= 1"), (112, "<= 111"), ("60", "an integer")):
        with pytest.raises(RecipeError, match=message):
            load_recipe("recipes/quickstart.yaml", [f"model.partial_rows={bad!r}"], check_paths=False)
    # a baseline has no E_P: the key is ignored there, so one override serves run.py's two recipes
    baseline = load_recipe("recipes/real_faces_baseline2.yaml", ["model.partial_rows=60"], check_paths=False)
    assert BFMModel(baseline, num_classes=3).partial_view is None
