"""Provider choice, the duplicate-ORT warning, and the two model types."""

import warnings

import numpy as np
import pytest
from bfm_inference_helpers import make_classifier

from insightface_bfm import runtime
from insightface_bfm.errors import PackError
from insightface_bfm.runtime import EmbedderONNX, MaskClassifierONNX, choose_providers, create_session


def test_cpu_when_cuda_absent(monkeypatch):
    monkeypatch.setattr(runtime.onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(runtime, "_cuda_works", None)
    assert runtime.cuda_works() is False
    assert choose_providers() == ["CPUExecutionProvider"]
    assert choose_providers(ctx_id=-1) == ["CPUExecutionProvider"]
    # an explicit list keeps what exists, drops the rest, and always ends with CPU
    assert choose_providers(["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


def test_probe_graph_runs_on_cpu():
    """The real probe graph of cuda_works(), in a real CPU session: it loads and returns its input."""
    import onnxruntime

    session = onnxruntime.InferenceSession(runtime._probe_model_bytes(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"] and len(session.get_outputs()) == 1
    x = np.array([1.5], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)
    assert runtime._probe_runs(session) is True


def test_cuda_chosen_only_when_it_really_runs(monkeypatch):
    import onnxruntime

    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(
        runtime.onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(runtime, "_cuda_works", None)

    class FakeSession:
        """A real CPU session of the probe graph (so a broken graph fails here as it would on a
        GPU), reporting the providers of ``active`` as ORT would."""

        active = None  # None: ORT's answer when the CUDA libraries are missing (CPU only)
        fails_to_run = False

        def __init__(self, model, providers):
            self.session = real_session(model, providers=["CPUExecutionProvider"])
            self.providers = providers

        def get_providers(self):
            return list(self.providers) if self.active else ["CPUExecutionProvider"]

        def run(self, outputs, feed):
            if self.fails_to_run:
                raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
            return self.session.run(outputs, feed)

    monkeypatch.setattr(runtime.onnxruntime, "InferenceSession", FakeSession)
    assert runtime.cuda_works() is False
    monkeypatch.setattr(runtime, "_cuda_works", None)
    FakeSession.active, FakeSession.fails_to_run = True, True  # builds on CUDA, cannot run there
    assert runtime.cuda_works() is False
    monkeypatch.setattr(runtime, "_cuda_works", None)
    FakeSession.fails_to_run = False
    assert runtime.cuda_works() is True
    assert choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(ctx_id=-1) == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "_cuda_works", None)


def test_warns_once_when_both_ort_distributions(monkeypatch):
    monkeypatch.setattr(runtime, "_warned_duplicate", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runtime.warn_if_duplicate_ort(["onnxruntime", "onnxruntime-gpu"]) is True
        assert runtime.warn_if_duplicate_ort(["onnxruntime", "onnxruntime-gpu"]) is False
        assert runtime.warn_if_duplicate_ort(["onnxruntime"]) is False
    assert len(caught) == 1 and "onnxruntime-gpu" in str(caught[0].message)
    assert "onnxruntime" in runtime.installed_ort_distributions()


def test_classifier_softmax_and_threshold(tmp_path):
    path = make_classifier(tmp_path / "c.onnx", "darkness")
    clf = MaskClassifierONNX(model_file=str(path), session=create_session(str(path)), threshold=0.5)
    crops = np.full((4, 112, 112, 3), 200, np.uint8)
    crops[1, 64:] = 0  # dark lower face
    crops[3, 64:] = 10
    scores = clf.scores(crops)
    # logits = [s*(m-t), -s*(m-t)] with s=20, t=-0.2, m = mean of the lower face in [-1, 1]
    m = (crops[:, 64:].reshape(4, -1).mean(1) - 127.5) / 127.5
    expected = 1 / (1 + np.exp(-(-40 * (m + 0.2))))
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert (scores >= 0.5).tolist() == [False, True, False, True]
    with pytest.raises(PackError, match="threshold"):
        MaskClassifierONNX(model_file=str(path), threshold=1.5)


def test_fixed_batch_graph_runs_in_chunks(shared):
    """mobilefacenet_128 fixes batch=1: a batch of 5 must equal 5 single runs and insightface's output."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = str(shared("models", "mobilefacenet_128.onnx"))
    emb = EmbedderONNX(model_file=path)
    assert emb.batch_size == 1 and emb.embedding_size == 128
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    batch = emb.get_feat(crops)
    singles = np.concatenate([emb.get_feat(c) for c in crops])
    np.testing.assert_allclose(batch, singles, atol=1e-6)
    ref = ArcFaceONNX(model_file=path, session=create_session(path))
    np.testing.assert_allclose(batch[:1], ref.get_feat([crops[0]]), atol=1e-4)
    assert emb.get_feat(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)


def test_wrong_shapes_rejected(tmp_path, shared):
    with pytest.raises(PackError, match="2 outputs"):
        MaskClassifierONNX(model_file=str(shared("models", "mobilefacenet_128.onnx")))
    with pytest.raises(PackError, match="one input and one output"):
        EmbedderONNX(model_file=str(shared("models", "scrfd_2.5g_bnkps.onnx")))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(PackError, match="junk.onnx"):
        create_session(str(tmp_path / "junk.onnx"), name=str(tmp_path / "junk.onnx"))


def test_inference_modules_never_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, insightface_bfm.app, insightface_bfm.matching, insightface_bfm.runtime, "
        "insightface_bfm.zoo.cli, insightface_bfm.zoo.download, insightface_bfm.zoo.registry; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
