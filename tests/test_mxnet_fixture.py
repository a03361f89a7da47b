"""The shared legacy insightface checkpoint (fmobilefacenet, saved by mxnet 1.9.1): conversion against
mxnet's own outputs, insightface's router, and the commands of docs/guides/mxnet.md (convert, eval,
fine-tune, export)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import SHARED, shared_path

from insightface_bfm.cli import main
from insightface_bfm.export import import_mxnet
from insightface_bfm.export.metadata import read_metadata
from insightface_bfm.imaging import read_image

pytestmark = pytest.mark.shared
ROOT = Path(__file__).resolve().parents[1]
GUIDE = "docs/guides/mxnet.md"


def normalised(a):
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def agreement(got, expected):
    """(largest difference of L2-normalised rows, smallest cosine)."""
    a, b = normalised(got), normalised(expected)
    return float(np.abs(a - b).max()), float((a * b).sum(1).min())


@pytest.fixture(scope="module")
def fixture():
    folder = shared_path("data", "mxnet_models", "mobilefacenet")
    return {"prefix": folder / "model", "inputs": np.load(folder / "inputs.npy"),
            "expected": np.load(folder / "expected.npy")}


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    return import_mxnet(f"{fixture['prefix']},0", tmp_path_factory.mktemp("mx") / "mobilefacenet_mx.onnx")


def test_the_conversion_reproduces_mxnet(fixture, converted):
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 112, 112]
    got = session.run(None, {"input": (fixture["inputs"] - 127.5) / 127.5})[0]
    assert got.shape == (4, 128)
    diff, cosine = agreement(got, fixture["expected"])
    assert diff <= 1e-4 and cosine >= 0.99999, (diff, cosine)
    meta = read_metadata(converted)
    assert meta["mxnet_output"] == "fc1_output" and meta["embedding_size"] == "128"
    assert "_minus_scalar(127.5) _mul_scalar(0.0078125)" in meta["input_normalisation"]
    assert "folded into the weights of 'conv_1_conv2d'" in meta["input_normalisation"]


def test_conversion_needs_no_torch(fixture, tmp_path):
    code = ("import sys; from insightface_bfm.export import import_mxnet; "
            f"import_mxnet({str(fixture['prefix']) + ',0'!r}, {str(tmp_path / 'm.onnx')!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_insightface_routes_it_to_arcface_and_embeds_faces(fixture, converted):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(str(converted), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX) and (model.input_mean, model.input_std) == (127.5, 127.5)
    # inputs.npy rows 0 and 1 are these crops in RGB; insightface takes BGR images
    lfw = SHARED / "data" / "lfw112"
    bgr = [read_image(lfw / name / f"{name}_0001.jpg") for name in ("AJ_Cook", "Aaron_Eckhart")]
    assert np.array_equal(bgr[0][:, :, ::-1].transpose(2, 0, 1), fixture["inputs"][0])
    diff, cosine = agreement(model.get_feat(bgr), fixture["expected"][:2])
    assert diff <= 1e-4 and cosine >= 0.99999, (diff, cosine)


def guide_commands() -> list[list[str]]:
    """The commands of docs/guides/mxnet.md's blocks marked as run by this file, in order."""
    from doc_blocks import page_blocks

    blocks = [b for b in page_blocks(ROOT / GUIDE) if b.marker == ("run by", "tests/test_mxnet_fixture.py")]
    return [shlex.split(line) for b in blocks for line in b.command_lines()]


def test_guide_commands_convert_evaluate_fine_tune_and_export(fixture, tmp_path, monkeypatch):
    """Runs the MXNet guide's commands as written, from a clone with ../shared beside it."""
    shared_path("data", "lfw112", "pairsDevTest.txt")
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(clone)
    monkeypatch.setenv("INSIGHTFACE_BFM_CACHE", str(tmp_path / "cache"))
    commands = guide_commands()
    assert [c[:2] for c in commands] == [["bfm", "convert"], ["bfm", "eval"],
                                         ["bfm-train", "recipes/finetune_mxnet.yaml"], ["bfm", "export"]]
    for command in commands:
        args = command[1:] if command[0] == "bfm" else ["train", *command[1:]]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, f"{shlex.join(command)}\n{result.output[-2000:]}"

    # the converted file, then its verification on LFW pairsDevTest (random weights: near chance)
    results = json.loads((clone / "runs" / "mx_eval" / "results.json").read_text())
    assert results["n_pairs"] == 1000 and 0.0 <= results["accuracy"] <= 1.0
    # fine-tuned: two steps from the checkpoint, exported back to ONNX
    lines = (clone / "runs" / "finetune_mxnet" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 2
    exported = clone / "runs" / "finetune_mxnet" / "onnx"
    x = (fixture["inputs"] - 127.5) / 127.5
    outputs = {}
    for role in ("full", "partial"):
        session = ort.InferenceSession(str(exported / f"{role}.onnx"), providers=["CPUExecutionProvider"])
        outputs[role] = session.run(None, {"input": x})[0]
    # E_F was frozen (init.freeze_full): its export still computes mxnet's embedding; E_P trained away from it
    diff, cosine = agreement(outputs["full"], fixture["expected"])
    assert diff <= 1e-4 and cosine >= 0.99999, (diff, cosine)
    assert agreement(outputs["partial"], fixture["expected"])[0] > 1e-3
    assert list((tmp_path / "cache" / "mxnet").glob("model-0000-*.onnx"))  # the recipe's conversion, cached
