"""ONNX Runtime sessions, provider choice, and the model types of a BFM pack.

Everything that touches ``onnxruntime`` directly lives here, so the provider policy is
decided in one place:

- ``providers=None`` means CUDA (then CPU) when an ``onnxruntime-gpu`` build can really
  run on the GPU, and CPU otherwise. "Really" is checked once per process by building and
  running a one-node session on CUDA: ONNX Runtime silently falls back to CPU when the CUDA or
  cuDNN libraries are missing, and we would rather know.
- Having both the ``onnxruntime`` and ``onnxruntime-gpu`` distributions installed makes
  whichever was installed last win the shared ``onnxruntime`` module; we warn once.

The model types follow insightface's duck-typed model interface (``taskname``,
``prepare(ctx_id)``, ``get(img, face)``, ``input_size``, ``input_mean``/``input_std``), so
insightface's ``FaceAnalysis`` can hold them too:

- ``MaskClassifierONNX``: the paper's classifier C; sets ``face.masked``/``face.mask_score``.
- ``EmbedderONNX``: a recognition network (E_F or E_P) with batched ``get_feat``, the same
  preprocessing as insightface's ``ArcFaceONNX``.
Both take a batch of aligned 112x112 BGR crops and handle graphs with a fixed batch size
(many published recognisers are exported with batch 1) by running them in chunks.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import onnxruntime

from .errors import PackError
from .imaging import INPUT_MEAN, INPUT_STD, check_image, to_network_input

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Distribution names that all install the same ``onnxruntime`` module.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
MASK_CLASSIFIER_ROLE = "mask_classifier"
MASK_CLASSIFIER_TASK = "mask_classifier"
ALIGNED_SIZE = 112

_lock = threading.Lock()
_warned_duplicate = False
_cuda_works: bool | None = None


def installed_ort_distributions() -> list[str]:
    """Names of the installed ONNX Runtime distributions among ``ORT_DISTRIBUTIONS``."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def warn_if_duplicate_ort(distributions: Sequence[str] | None = None) -> bool:
    """Warn (once per process) when onnxruntime and onnxruntime-gpu are both installed."""
    global _warned_duplicate
    names = installed_ort_distributions() if distributions is None else list(distributions)
    if not {"onnxruntime", "onnxruntime-gpu"} <= set(names):
        return False
    with _lock:
        if _warned_duplicate:
            return False
        _warned_duplicate = True
    warnings.warn(
        "both 'onnxruntime' and 'onnxruntime-gpu' are installed; they share one module and the one "
        "installed last wins, so CUDA may be silently unavailable. Keep one: "
        "`pip uninstall onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu` (GPU) "
        "or `pip install onnxruntime` (CPU).",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


def _probe_model_bytes() -> bytes:
    """A one-node ONNX graph (Identity) used to check that a provider really runs."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _probe_runs(session) -> bool:
    """The probe session gives back what it was fed (a session can build and still fail to run)."""
    x = np.array([1.5], np.float32)
    return bool(np.array_equal(session.run(None, {"x": x})[0], x))


def cuda_works() -> bool:
    """True when ONNX Runtime lists CUDA and a session really activates and runs it (checked once)."""
    global _cuda_works
    if _cuda_works is not None:
        return _cuda_works
    with _lock:
        if _cuda_works is None:
            ok = False
            if CUDA in onnxruntime.get_available_providers():
                try:
                    preload = getattr(onnxruntime, "preload_dlls", None)
                    if callable(preload):
                        preload()
                    session = onnxruntime.InferenceSession(_probe_model_bytes(), providers=[CUDA, CPU])
                    ok = session.get_providers()[0] == CUDA and _probe_runs(session)
                except Exception as e:  # any failure means "not usable", never a crash
                    logger.info("CUDAExecutionProvider listed but unusable: %s", e)
                if not ok:
                    logger.warning("CUDAExecutionProvider is listed but does not work here; using CPU")
            _cuda_works = ok
    return _cuda_works


def choose_providers(providers=None, ctx_id: int = 0) -> list:
    """The provider list for a session.

    An explicit list is kept as given (insightface's convention), minus providers this
    ONNX Runtime build does not have, with CPU appended as the fallback. ``None`` means
    CUDA + CPU when CUDA works, else CPU. ``ctx_id < 0`` forces CPU, as in insightface.
    """
    warn_if_duplicate_ort()
    if ctx_id is not None and ctx_id < 0:
        return [CPU]
    if providers is None:
        return [CUDA, CPU] if cuda_works() else [CPU]
    available = set(onnxruntime.get_available_providers())
    chosen = []
    for p in providers:
        name = p[0] if isinstance(p, (tuple, list)) else p
        if name in available:
            chosen.append(p)
        else:
            logger.warning("execution provider %s is not available in this onnxruntime; skipped", name)
    if not any((p[0] if isinstance(p, (tuple, list)) else p) == CPU for p in chosen):
        chosen.append(CPU)
    return chosen


def create_session(model, providers=None, sess_options=None, name: str = "model"):
    """An ``onnxruntime.InferenceSession`` from a path or serialized bytes.

    Errors from ONNX Runtime (corrupt or unsupported graph) become ``PackError`` naming ``name``.
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)  # onnxruntime takes str paths or bytes only
    kwargs = {"providers": choose_providers(providers)}
    if sess_options is not None:
        kwargs["sess_options"] = sess_options
    try:
        return onnxruntime.InferenceSession(model, **kwargs)
    except Exception as e:
        raise PackError(f"{name}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None


def session_role(session) -> str | None:
    """The ``role`` metadata property the exporter writes (mask_classifier/full/partial), if any."""
    try:
        return session.get_modelmeta().custom_metadata_map.get("role")
    except Exception:
        return None


def looks_like_mask_classifier(session) -> bool:
    """Our classifier: role metadata ``mask_classifier``, or (no role) one output of width 2.

    A recogniser never has a 2-D embedding, so the width test cannot capture one; a graph
    that declares another role is never taken for a classifier.
    """
    role = session_role(session)
    if role is not None:
        return role == MASK_CLASSIFIER_ROLE
    outputs = session.get_outputs()
    return len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[1] == 2


def _fixed_batch(session) -> int | None:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def run_in_batches(session, blob: np.ndarray, step: int | None = None) -> np.ndarray:
    """Run a one-input graph over ``blob`` in chunks of ``step`` (or the graph's fixed batch,
    padding the last chunk), returning its first output for the ``len(blob)`` rows."""
    fixed = _fixed_batch(session)
    blob = np.ascontiguousarray(blob, dtype=np.float32)
    n = blob.shape[0]
    step = fixed or step or n
    if fixed and n % step:  # a fixed-batch graph: pad the last chunk
        blob = np.concatenate([blob, np.zeros((step - n % step, *blob.shape[1:]), np.float32)])
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: blob[i : i + step]})[0] for i in range(0, blob.shape[0], step)]
    return np.concatenate(outs)[:n].astype(np.float32, copy=False)


class _AlignedCropNet:
    """Common part of the two model types: one input [N,3,112,112], one output [N,K]."""

    taskname = ""

    def __init__(self, model_file=None, session=None, name: str | None = None):
        if session is None:
            if model_file is None:
                raise ValueError("give model_file or session")
            session = create_session(model_file, name=str(model_file))
        self.model_file = os.fspath(model_file) if isinstance(model_file, os.PathLike) else model_file
        self.session = session
        self.name = name or str(model_file or self.taskname)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PackError(
                f"{self.name}: expected one input and one output, got {len(inputs)} and {len(outputs)}"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] != ALIGNED_SIZE or shape[3] != ALIGNED_SIZE:
            raise PackError(f"{self.name}: expected input [batch, 3, 112, 112], got {shape}")
        self.input_name = inputs[0].name
        self.input_shape = shape
        self.input_size = (ALIGNED_SIZE, ALIGNED_SIZE)
        self.output_names = [outputs[0].name]
        self.output_shape = outputs[0].shape
        self.batch_size = _fixed_batch(session)
        # Normalisation is outside the graph: (x - 127.5) / 127.5 on RGB, like ArcFaceONNX.
        self.input_mean = INPUT_MEAN
        self.input_std = INPUT_STD

    def prepare(self, ctx_id=0, **kwargs):
        if ctx_id is not None and ctx_id < 0:
            self.session.set_providers([CPU])

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Run a normalised float32 [N,3,112,112] blob, in chunks when the graph fixes the batch."""
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        n = blob.shape[0]
        if n == 0:
            width = self.output_shape[1] if isinstance(self.output_shape[1], int) else 0
            return np.zeros((0, width), dtype=np.float32)
        return run_in_batches(self.session, blob)

    def blob(self, crops) -> np.ndarray:
        """uint8 BGR crops (list or NxHxWx3 array) -> normalised RGB blob."""
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            arr = crops
        else:
            arr = (
                np.stack([np.asarray(c) for c in crops])
                if len(crops)
                else np.zeros((0, 112, 112, 3), np.uint8)
            )
        return to_network_input(arr)

    def _crop(self, img, face) -> np.ndarray:
        from .imaging import norm_crop

        if face.kps is None:
            raise PackError(f"{self.name}: the face has no keypoints to align on")
        return norm_crop(img, face.kps, ALIGNED_SIZE)


class MaskClassifierONNX(_AlignedCropNet):
    """The mask classifier C as an insightface model type: P(masked) of an aligned crop.

    Output: logits [N, 2] (index 0 unmasked, 1 masked), turned into probabilities by a
    softmax here; a graph whose metadata says ``output=probabilities`` is used as is.
    """

    taskname = MASK_CLASSIFIER_TASK

    def __init__(self, model_file=None, session=None, name=None, threshold: float = 0.5):
        super().__init__(model_file, session, name)
        if self.output_shape[-1] != 2:
            raise PackError(f"{self.name}: a mask classifier has 2 outputs per face, got {self.output_shape}")
        if not 0.0 < threshold < 1.0:
            raise PackError(f"{self.name}: mask threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        meta = {}
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
        except Exception:
            pass
        self.outputs_probabilities = meta.get("output") == "probabilities"

    def scores(self, crops) -> np.ndarray:
        """P(masked) for each aligned 112x112 BGR crop, float32 (N,)."""
        out = self.forward(self.blob(crops))
        if self.outputs_probabilities:
            return out[:, 1].astype(np.float32)
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e[:, 1] / e.sum(axis=1)).astype(np.float32)

    def get(self, img, face):
        """insightface model interface: classify one detected face, set masked and mask_score."""
        check_image(img, "image")
        score = float(self.scores([self._crop(img, face)])[0])
        face.mask_score = score
        face.masked = score >= self.threshold
        return score


class EmbedderONNX(_AlignedCropNet):
    """A recognition network (E_F or E_P) with insightface's ArcFaceONNX interface, batched.

    ``face_key`` is the Face key ``get(img, face)`` fills: ``embedding`` for E_F (what
    insightface's recognition model fills), ``embedding_partial`` for E_P.
    """

    taskname = "recognition"

    def __init__(self, model_file=None, session=None, name=None, face_key: str = "embedding"):
        super().__init__(model_file, session, name)
        self.face_key = face_key
        width = self.output_shape[-1]
        self.embedding_size = width if isinstance(width, int) else None

    def get_feat(self, imgs) -> np.ndarray:
        """Embeddings (not normalised) of aligned crops, float32 (N, D)."""
        if isinstance(imgs, np.ndarray) and imgs.ndim == 3:
            imgs = [imgs]
        return self.forward(self.blob(imgs))

    def get(self, img, face):
        check_image(img, "image")
        emb = self.get_feat([self._crop(img, face)])[0]
        face[self.face_key] = emb
        return emb

    @staticmethod
    def compute_sim(feat1, feat2) -> float:
        a, b = np.ravel(feat1), np.ravel(feat2)
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
