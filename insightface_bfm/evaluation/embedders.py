"""How a model turns aligned 112x112 crops into the embeddings the protocol compares.

Three kinds of model, one interface (``embed(crops) -> dict``):

- ``OnnxRecognizer``: any insightface recognition ONNX (a baseline). insightface's own router
  (``model_zoo.get_model``) loads it, so the input normalisation is the one insightface applies
  to that file; batches respect a fixed batch dimension.
- ``BFMPackEmbedder``: a BFM pack folder: the mask classifier C, E_F (``full``) and E_P
  (``partial``). Every crop gets both embeddings and a mask score; ``pair_embeddings`` then
  applies the paper's pair rule (either face masked -> both partial, else both full).
- ``CheckpointEmbedder``: a training checkpoint, through torch, imported only when used.

With ``flip=True`` each crop's raw output is summed with that of its mirror image before the
protocol normalises it (arcface_torch's test-time flip).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import PackError
from ..imaging import to_network_input
from ..runtime import run_in_batches

DEFAULT_MASK_THRESHOLD = 0.5


def file_digest(paths) -> str:
    """Short sha256 over the files' bytes: identifies a model for the embedding cache."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class _Session:
    """An onnxruntime session fed in batches that respect a fixed batch dimension."""

    def __init__(self, path, session=None, mean=127.5, std=127.5):
        import onnxruntime

        self.path = os.fspath(path)
        if session is None:
            try:
                session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise PackError(f"{self.path}: cannot load ONNX model ({e})") from None
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape[2:4]
        if not all(isinstance(s, int) for s in shape):
            raise PackError(f"{self.path}: input height/width must be static, got {inp.shape}")
        self.size = tuple(shape)
        self.mean, self.std = float(mean), float(std)

    def run(self, crops: np.ndarray, batch_size: int = 64, rows: int | None = None) -> np.ndarray:
        """Embeddings of uint8 BGR crops; ``rows``: only the top rows are seen, the rest set to 0
        (mid-grey) in the network's normalisation, as ``nets.upper_face.UpperFace`` does."""
        if crops.shape[1:3] != self.size:
            raise PackError(f"{self.path}: expects {self.size} crops, got {crops.shape[1:3]}")
        blob = to_network_input(crops)
        if rows is not None:
            blob[:, :, rows:, :] = 0.0
        if (self.mean, self.std) != (127.5, 127.5):  # insightface's mxnet-era models normalise inside
            blob = (blob * 127.5 + 127.5 - self.mean) / self.std
        return run_in_batches(self.session, blob, batch_size)


def _with_flip(run, crops: np.ndarray, flip: bool) -> np.ndarray:
    out = run(crops)
    if flip:
        out = out + run(np.ascontiguousarray(crops[:, :, ::-1]))
    return out


class OnnxRecognizer:
    """An insightface recognition ONNX as a plain (unrouted) embedder."""

    routed = False

    def __init__(self, path, flip: bool = False, batch_size: int = 64):
        from insightface.model_zoo import get_model

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise PackError(f"{path}: no such ONNX file")
        try:
            model = get_model(path)
        except Exception as e:
            raise PackError(f"{path}: insightface cannot load it ({e})") from None
        if model is None or getattr(model, "taskname", None) != "recognition":
            kind = getattr(model, "taskname", None)
            raise PackError(f"{path}: insightface routes it as {kind!r}, not as a recognition model")
        self.session = _Session(path, model.session, model.input_mean, model.input_std)
        self.flip, self.batch_size = flip, batch_size
        self.model_id = f"onnx-{file_digest([path])}-flip{int(flip)}"
        self.description = f"insightface recognition ONNX {path}"

    def embed(self, crops: np.ndarray) -> dict:
        return {"full": _with_flip(lambda x: self.session.run(x, self.batch_size), crops, self.flip)}


class BFMPackEmbedder:
    """A BFM pack (``zoo.packs.load_pack``: every checksum verified): classifier C, E_F, E_P.

    The models run through the inference package's own model types, so the scores and
    embeddings are the ones ``insightface_bfm.FaceAnalysis`` produces for the same crops.
    """

    routed = True

    def __init__(self, pack, flip: bool = False, batch_size: int = 64, mask_threshold=None, root=None):
        from ..runtime import EmbedderONNX, MaskClassifierONNX
        from ..zoo.packs import load_pack

        pack = load_pack(pack, root=root)
        threshold = pack.thresholds.mask_score if mask_threshold is None else float(mask_threshold)
        self.classifier = MaskClassifierONNX(pack.classifier, threshold=threshold)
        self.full = EmbedderONNX(pack.full)
        self.partial = EmbedderONNX(pack.partial, face_key="embedding_partial")
        self.flip, self.batch_size = flip, batch_size
        self.mask_threshold = threshold
        self.model_id = f"pack-{file_digest([pack.classifier, pack.full, pack.partial])}-flip{int(flip)}"
        self.description = f"BFM pack {pack.path}"

    def embed(self, crops: np.ndarray) -> dict:
        # the classifier sees the crop as the app would: no flip
        return {
            "full": _with_flip(self.full.get_feat, crops, self.flip),
            "partial": _with_flip(self.partial.get_feat, crops, self.flip),
            "mask_score": self.classifier.scores(crops),
        }


class PackFullExtractor:
    """A BFM pack's E_F alone, unrouted (``bfm models build``'s "base alone" row: E_F is the base,
    frozen). It shares the pack's embedding cache, whose entries hold every output of a face, and
    keeps ``full`` only (``fields``), so a pack evaluated first leaves nothing to compute here."""

    routed = False
    fields = ("full",)

    def __init__(self, pack: BFMPackEmbedder):
        self.pack = pack
        self.model_id = pack.model_id
        self.description = f"E_F of {pack.description}"

    def embed(self, crops: np.ndarray) -> dict:
        return self.pack.embed(crops)  # all outputs: the cache entries stay whole for the pack


class CheckpointEmbedder:
    """A training checkpoint (run dir, ``last`` pointer or ``step_*`` dir), run through torch.

    A BFM checkpoint with its classifier is routed like a pack; a baseline (one network, kept
    under ``full``) is not.
    """

    def __init__(self, path, flip: bool = False, batch_size: int = 64, mask_threshold=None):
        try:
            import torch

            from ..train.model import load_checkpoint
        except ImportError as e:
            from ..errors import TRAIN_EXTRA, TRAIN_EXTRA_CLONE

            raise PackError(f"{path}: evaluating a checkpoint needs the [train] extra (torch): {e}; "
                            f"{TRAIN_EXTRA} (in a clone: {TRAIN_EXTRA_CLONE})") from None
        self.torch = torch
        self.model, self.recipe = load_checkpoint(path)
        self.model.eval()
        self.flip, self.batch_size = flip, batch_size
        self.mask_threshold = float(DEFAULT_MASK_THRESHOLD if mask_threshold is None else mask_threshold)
        self.routed = self.model.classifier is not None and self.model.partial is not None
        from ..train.checkpoint import resolve_checkpoint

        weights = resolve_checkpoint(path) / "model.safetensors"
        self.model_id = f"ckpt-{file_digest([weights])}-flip{int(flip)}"
        self.description = f"checkpoint {path} ({self.model.mode})"

    def _runner(self, fn):
        torch = self.torch

        def run(crops):
            outs = []
            with torch.no_grad():
                for s in range(0, len(crops), self.batch_size):
                    x = torch.from_numpy(to_network_input(crops[s : s + self.batch_size]))
                    outs.append(fn(x).float().cpu().numpy())
            return np.concatenate(outs).astype(np.float32)

        return run

    def embed(self, crops: np.ndarray) -> dict:
        out = {"full": _with_flip(self._runner(self.model.full), crops, self.flip)}
        if self.routed:
            out["partial"] = _with_flip(self._runner(self.model.partial_extractor), crops, self.flip)
            out["mask_score"] = self._runner(self.model.mask_probability)(crops)
        return out


def open_embedder(model, flip: bool = False, batch_size: int = 64, mask_threshold=None, root=None):
    """An insightface recognition ``.onnx``, a BFM pack (folder, or name under the model root),
    or a training checkpoint (run dir, checkpoint dir or model.safetensors)."""
    p = Path(os.path.expanduser(str(model)))
    if p.is_file() and p.suffix.lower() == ".onnx":
        return OnnxRecognizer(p, flip, batch_size)
    if p.is_dir() and (p / "manifest.json").is_file():
        return BFMPackEmbedder(p, flip, batch_size, mask_threshold)
    if p.exists():
        return CheckpointEmbedder(p, flip, batch_size, mask_threshold)
    from ..zoo.packs import resolve_pack_dir

    try:
        pack_dir = resolve_pack_dir(str(model), root)
    except PackError:
        pack_dir = None
    if pack_dir is not None and (pack_dir / "manifest.json").is_file():
        return BFMPackEmbedder(pack_dir, flip, batch_size, mask_threshold)
    raise PackError(
        f"{model}: no such model (expected an .onnx file, a BFM pack folder or name, or a checkpoint)"
    )


def pair_embeddings(emb: dict, left: np.ndarray, right: np.ndarray, mask_threshold: float | None = None):
    """Embeddings of the two faces of each pair, and the case (1, 2, 3) where a classifier ran.

    ``left``/``right`` index the rows of ``emb``. With a mask score, the pair rule: if either face
    is masked both sides use the partial embedding, else both use the full one.
    """
    full = emb["full"]
    if "mask_score" not in emb:
        return full[left], full[right], None
    threshold = DEFAULT_MASK_THRESHOLD if mask_threshold is None else mask_threshold
    masked = emb["mask_score"] >= threshold  # as MaskClassifierONNX decides
    either = masked[left] | masked[right]
    a = np.where(either[:, None], emb["partial"][left], full[left])
    b = np.where(either[:, None], emb["partial"][right], full[right])
    cases = 1 + masked[left].astype(int) + masked[right].astype(int)
    return a, b, cases
