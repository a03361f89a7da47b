"""ONNX export: ONNX Runtime reproduces torch, insightface loads the files, metadata, atomic writes."""

import hashlib

import export_helpers as helpers
import numpy as np
import onnx
import pytest
import torch
import yaml
from click.testing import CliRunner

from insightface_bfm.errors import BFMError
from insightface_bfm.export import export_checkpoint, export_onnx, read_metadata
from insightface_bfm.imaging import to_network_input
from insightface_bfm.nets import MaskClassifier, get_backbone

torch.set_num_threads(1)

# a small MobileFaceNet keeps the whole file fast on 2 cores; the layout is the real one
SMALL_MBF = {"scale": 1, "expansion": 0.25, "blocks": (1, 2, 1, 1)}




def _normalised(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)



@pytest.fixture(scope="module")
def small_mbf():
    return helpers.randomise(get_backbone("mbf", embedding_size=64, **SMALL_MBF))


def test_full_export_matches_torch_at_any_batch(small_mbf, tmp_path):
    path = export_onnx(small_mbf, tmp_path / "full.onnx", "full", {"recipe": {"mode": "bfm", "seed": 1}})
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 112, 112]  # only the batch is dynamic
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 64]
    session = helpers.session(path)
    for batch in (1, 5):
        x = helpers.faces(batch, seed=batch)
        with torch.no_grad():
            expected = small_mbf(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (batch, 64)
        assert np.abs(_normalised(got) - _normalised(expected)).max() < 1e-5


def test_metadata_names_role_size_and_recipe(small_mbf, tmp_path):
    recipe = {"mode": "bfm", "model": {"backbone": "mbf"}}
    path = export_onnx(small_mbf, tmp_path / "partial.onnx", "partial", {"recipe": recipe, "note": 7})
    meta = read_metadata(path)
    assert meta["role"] == "partial" and meta["output"] == "embedding"
    assert meta["embedding_size"] == "64"
    assert yaml.safe_load(meta["recipe"]) == recipe
    assert meta["recipe_sha256"] == hashlib.sha256(meta["recipe"].encode()).hexdigest()
    assert meta["note"] == "7"
    # ONNX Runtime sees the same properties the inference side reads
    assert helpers.session(path).get_modelmeta().custom_metadata_map["role"] == "partial"


def test_embedded_recipe_names_no_local_folder(small_mbf, tmp_path):
    # an exported file travels (packs, registries): the recipe it carries keeps file names only
    recipe = {"mode": "bfm", "data": {"path": str(tmp_path / "faces" / "train")},
              "init": {"full": f"onnx:{tmp_path / 'base.onnx'}", "partial": "mxnet:~/models/r100,3"},
              "train": {"output": "runs/bfm"}}
    meta = read_metadata(export_onnx(small_mbf, tmp_path / "full.onnx", "full", {"recipe": recipe}))
    assert str(tmp_path) not in meta["recipe"]
    assert yaml.safe_load(meta["recipe"]) == {
        "mode": "bfm", "data": {"path": "<local>/train"},
        "init": {"full": "onnx:<local>/base.onnx", "partial": "mxnet:<local>/r100,3"},
        "train": {"output": "runs/bfm"}}  # a relative path names no machine's folder: kept


def test_mask_classifier_exports_probabilities(tmp_path):
    classifier = helpers.randomise(MaskClassifier(), seed=3)
    path = export_onnx(classifier, tmp_path / "mask_classifier.onnx", "mask_classifier")
    meta = read_metadata(path)
    assert meta["role"] == "mask_classifier" and meta["output"] == "probabilities"
    assert meta["embedding_size"] == "2"
    x = helpers.faces(4, seed=9)
    with torch.no_grad():
        expected = torch.softmax(classifier(x), dim=1).numpy()
    got = helpers.session(path).run(None, {"input": x.numpy()})[0]
    assert got.shape == (4, 2)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-6)
    assert np.abs(got - expected).max() < 1e-5


def test_insightface_loads_full_as_arcface_with_the_same_embedding(small_mbf, tmp_path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = export_onnx(small_mbf, tmp_path / "full.onnx", "full")
    recogniser = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(recogniser, ArcFaceONNX)
    assert (recogniser.input_mean, recogniser.input_std) == (127.5, 127.5)  # normalisation outside
    bgr = np.random.default_rng(5).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    got = recogniser.get_feat(list(bgr))
    with torch.no_grad():
        expected = small_mbf(torch.from_numpy(to_network_input(bgr))).numpy()
    assert np.abs(_normalised(got) - _normalised(expected)).max() < 1e-5


def test_export_restores_mode_and_flags(tmp_path):
    net = get_backbone("mbf", embedding_size=32, fp16=True, **SMALL_MBF)
    net.train()
    export_onnx(net, tmp_path / "full.onnx", "full")
    assert net.training and net.fp16
    assert [d.dim_value for d in onnx.load(str(tmp_path / "full.onnx")).graph.output[0]
            .type.tensor_type.shape.dim][1:] == [32]


def test_bad_role_or_network_is_a_clear_error_and_writes_nothing(small_mbf, tmp_path):
    with pytest.raises(BFMError, match="role 'face'"):
        export_onnx(small_mbf, tmp_path / "x.onnx", "face")
    with pytest.raises(BFMError, match="2 outputs"):
        export_onnx(small_mbf, tmp_path / "c.onnx", "mask_classifier")
    with pytest.raises(BFMError, match=r"\(B,D\)"):
        export_onnx(torch.nn.Identity(), tmp_path / "i.onnx", "full")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_file(small_mbf, tmp_path):
    path = tmp_path / "full.onnx"
    path.write_bytes(b"previous")

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), path, "full")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.onnx"]  # no temporary left behind


def _checkpoint(tmp_path, mode):
    """A real checkpoint written by the trainer's own code (untrained weights)."""
    from insightface_bfm.train.checkpoint import save_checkpoint
    from insightface_bfm.train.model import BFMModel

    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_MBF.items()}
    recipe = {
        "mode": mode,
        "data": {"path": "synthetic:5:2"},
        "model": {"backbone": "mbf", "embedding_size": 32, "backbone_options": options},
    }
    torch.manual_seed(0)
    model = helpers.randomise(BFMModel(recipe, num_classes=5))
    run = tmp_path / f"run_{mode}"
    save_checkpoint(run, 3, model.state_dict(), {}, yaml.safe_dump(recipe))
    return run, model


def test_export_checkpoint_writes_three_files_that_match_the_model(tmp_path):
    run, model = _checkpoint(tmp_path, "bfm")
    written = export_checkpoint(run, tmp_path / "out")
    assert sorted(written) == ["full", "mask_classifier", "partial"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "full.onnx", "mask_classifier.onnx", "partial.onnx"]
    x = helpers.faces(2, seed=4)
    for role, net in (("full", model.full), ("partial", model.partial)):
        meta = read_metadata(written[role])
        assert meta["role"] == role and meta["mode"] == "bfm"
        assert yaml.safe_load(meta["recipe"])["model"]["backbone"] == "mbf"
        with torch.no_grad():
            expected = net(x).numpy()
        got = helpers.session(written[role]).run(None, {"input": x.numpy()})[0]
        assert np.abs(_normalised(got) - _normalised(expected)).max() < 1e-5


def test_cli_exports_a_baseline_as_full_only(tmp_path):
    from insightface_bfm.cli import main

    run, _ = _checkpoint(tmp_path, "baseline1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "partial.onnx").write_bytes(b"stale file of an earlier export")
    result = CliRunner().invoke(main, ["export", str(run), str(out)])
    assert result.exit_code == 0, result.output
    assert "full" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["full.onnx"]
    assert read_metadata(out / "full.onnx")["mode"] == "baseline1"


def test_cli_missing_checkpoint_is_a_one_line_error(tmp_path):
    from insightface_bfm.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["export", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "not a checkpoint" in result.output
