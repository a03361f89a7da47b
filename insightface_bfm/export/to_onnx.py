"""Export BFM networks to ONNX files that insightface and our inference stack load without torch.

The files follow insightface's recognition convention: one input ``[batch, 3, 112, 112]`` float32
RGB already normalised as ``(x - 127.5) / 127.5`` (ArcFaceONNX does that outside the graph), only
the batch dimension dynamic (insightface's router returns nothing for a dynamic height or width),
one output. Metadata properties say which network a file is and where it came from, so
a pack builder or a router never has to guess from shapes (keys: see ``META_*`` below).

Roles and outputs:
- ``full`` / ``partial`` (E_F / E_P): output ``embedding`` ``[batch, D]``, not normalised (as
  insightface's recognition models; ``Face.normed_embedding`` normalises).
- ``mask_classifier`` (C): output ``mask_probability`` ``[batch, 2]``: softmax probabilities,
  index 0 unmasked, 1 masked. Probabilities, not logits, so the inference side reads the mask score
  directly without knowing the training loss; the argmax is the same either way.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_write_bytes
from ..errors import BFMError
from .metadata import read_metadata  # noqa: F401 - re-exported (export.read_metadata)

log = logging.getLogger(__name__)

ROLES = ("mask_classifier", "full", "partial")
OPSET = 17
INPUT_NAME = "input"
INPUT_SIZE = 112
OUTPUT_NAMES = {"mask_classifier": "mask_probability", "full": "embedding", "partial": "embedding"}
# metadata_props written into every exported file (read by insightface_bfm.runtime and zoo.packs)
META_ROLE = "role"  # mask_classifier | full | partial
META_OUTPUT = "output"  # probabilities (classifier) | embedding
META_EMBEDDING_SIZE = "embedding_size"  # output width: D, or 2 for the classifier
META_INPUT = "input"  # the input convention, in words
META_RECIPE = "recipe"  # YAML text of the training recipe
META_RECIPE_SHA256 = "recipe_sha256"
META_VERSION = "bfm_version"
INPUT_DESCRIPTION = "RGB float32 [batch,3,112,112], (x - 127.5) / 127.5"
OUTPUT_KINDS = {"mask_classifier": "probabilities", "full": "embedding", "partial": "embedding"}
OUTPUT_DESCRIPTIONS = {
    "mask_classifier": "softmax probabilities [batch,2]: 0 unmasked, 1 masked",
    "full": "embedding [batch,D], not normalised",
    "partial": "embedding [batch,D], not normalised",
}


class _WithSoftmax(nn.Module):
    """The classifier as exported: logits -> probabilities inside the graph."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return torch.softmax(self.classifier(x), dim=1)


def recipe_text(recipe) -> str:
    """The recipe as YAML text (a dict or Recipe is dumped with sorted keys: equal recipes hash equal),
    its absolute paths cut to ``<local>/NAME`` (``train.recipe.portable_paths``): an ONNX file
    travels, the folders of the machine that exported it do not."""
    if recipe is None:
        return ""
    if isinstance(recipe, str):
        return recipe
    if hasattr(recipe, "to_dict"):  # a train.recipe.Recipe
        recipe = recipe.to_dict()
    import yaml

    from ..train.recipe import portable_paths

    return yaml.safe_dump(portable_paths(recipe), sort_keys=True)


def export_onnx(module: nn.Module, path, role: str, metadata: dict | None = None, *,
                opset: int = OPSET, verify: bool = True) -> Path:
    """Export one network to ``path`` (written atomically) and return the path.

    module: E_F / E_P ((B,3,112,112) -> (B,D)) or C ((B,3,112,112) -> logits (B,2)), on any device.
    role: ``mask_classifier``, ``full`` or ``partial``.
    metadata: extra metadata; the key ``recipe`` (dict or YAML text) is stored as YAML text with
      its sha256 as ``recipe_sha256``; other keys are stored as given (values as strings).
      Always written: ``role``, ``output`` (``probabilities`` or ``embedding``), ``embedding_size``,
      ``input``, ``bfm_version``.
    verify: run the written file in ONNX Runtime and check it reproduces torch (normalised
      embeddings or probabilities within 1e-4); raises BFMError otherwise.
    """
    if role not in ROLES:
        raise BFMError(f"export role {role!r} is unknown; expected one of {', '.join(ROLES)}")
    if not isinstance(module, nn.Module):
        raise BFMError(f"export of {role}: expected a torch nn.Module, got {type(module).__name__}")
    if opset < 17:
        raise BFMError(f"export of {role}: opset {opset} is too old; use 17 or newer")
    path = Path(path)
    metadata = dict(metadata or {})

    net = _WithSoftmax(module) if role == "mask_classifier" else module
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    # the exported graph is the float32 eval-mode network: no autocast, BN running statistics
    half = [m for m in module.modules() if getattr(m, "fp16", False) is True]
    for m in half:
        m.fp16 = False
    try:
        net.eval()  # (the wrapper too: the exporter restores the mode of what it is given)
        # batch 2 so that batch-dependent shapes are traced as such, not frozen to 1
        example = _example_batch(2, device)
        with torch.no_grad():
            expected = net(example)
        output_size = _check_output(expected, role)
        output_name = OUTPUT_NAMES[role]
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about constants is expected here
            torch.onnx.export(
                net, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[output_name],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            )
        model = onnx.load_from_string(buffer.getvalue())
        _inline_weight_aliases(model)
        _describe(model, role, output_size, metadata)
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        if verify:
            _verify(data, net, role, path, device)
        atomic_write_bytes(path, data)
    finally:
        for m in half:
            m.fp16 = True
        module.train(was_training)
    log.info("exported %s (%s, output %d) to %s", role, type(module).__name__, output_size, path)
    return path


def _example_batch(batch: int, device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) * 2 - 1
    return x.to(device)


def _check_output(y, role: str) -> int:
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise BFMError(f"export of {role}: the network must map (B,3,112,112) to (B,D); it gave {shape}")
    if role == "mask_classifier" and y.shape[1] != 2:
        raise BFMError(f"export of mask_classifier: expected 2 outputs per face, got {y.shape[1]}")
    return int(y.shape[1])


def _inline_weight_aliases(model: onnx.ModelProto) -> None:
    """Drop the Identity nodes the exporter puts between a (deduplicated) initializer and its users.

    insightface's ArcFaceONNX looks at the first nodes' names to guess the input normalisation;
    a graph that opens with real layers also reads better in Netron.
    """
    graph = model.graph
    stored = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in stored and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if not alias:
        return
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)


def _describe(model: onnx.ModelProto, role: str, output_size: int, metadata: dict) -> None:
    """Name the role, sizes and provenance in metadata_props; pin 112x112 in the input type."""
    model.producer_name = "insightface-bfm"
    model.producer_version = __version__
    model.doc_string = f"insightface-bfm {role}: {INPUT_DESCRIPTION} -> {OUTPUT_DESCRIPTIONS[role]}"
    recipe = recipe_text(metadata.pop("recipe", None))
    props = {
        META_ROLE: role,
        META_EMBEDDING_SIZE: str(output_size),
        META_OUTPUT: OUTPUT_KINDS[role],
        META_INPUT: INPUT_DESCRIPTION,
        META_VERSION: __version__,
    }
    if recipe:
        props[META_RECIPE] = recipe
        props[META_RECIPE_SHA256] = hashlib.sha256(recipe.encode("utf-8")).hexdigest()
    for key, value in metadata.items():
        if key in props:
            raise BFMError(f"export of {role}: metadata key {key!r} is reserved for the exporter")
        props[str(key)] = str(value)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _verify(data: bytes, net: nn.Module, role: str, path: Path, device) -> None:
    """ONNX Runtime on the serialised model must reproduce torch, at a batch size unlike the trace's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    x = _example_batch(3, device, seed=1)
    with torch.no_grad():
        expected = net(x).float().cpu().numpy()
    got = session.run(None, {INPUT_NAME: x.cpu().numpy()})[0]
    if got.shape != expected.shape:
        raise BFMError(
            f"export of {role} to {path}: ONNX Runtime gave shape {got.shape}, torch {expected.shape}"
        )
    diff = max_normalised_difference(expected, got, role)
    if not diff <= 1e-4:
        raise BFMError(f"export of {role} to {path}: ONNX Runtime differs from torch by {diff:.2e}")


def max_normalised_difference(a: np.ndarray, b: np.ndarray, role: str) -> float:
    """Largest element difference, comparing L2-normalised rows for embeddings (what matching uses)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if role != "mask_classifier":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.abs(a - b).max())


FILES = {"mask_classifier": "mask_classifier.onnx", "full": "full.onnx", "partial": "partial.onnx"}


def export_checkpoint(checkpoint, out_dir, *, opset: int = OPSET, verify: bool = True) -> dict[str, Path]:
    """Export a training checkpoint to ``out_dir``: mask_classifier.onnx, full.onnx, partial.onnx.

    checkpoint: a checkpoint directory, a run directory (its ``last`` checkpoint) or a
      model.safetensors, as ``insightface_bfm.train.model.load_checkpoint`` accepts.
    Baselines (one model) give full.onnx only; files of a role the model lacks are removed from
    ``out_dir`` so that a folder never mixes two exports. Returns {role: path}.
    """
    from ..train.model import load_checkpoint

    model, recipe = load_checkpoint(checkpoint)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BFMError(f"{out_dir}: export destination exists and is not a directory")
    # E_P with its view of the crop (model.partial_rows), so partial.onnx applies it itself
    networks = {"mask_classifier": model.classifier, "full": model.full, "partial": model.partial_extractor}
    if networks["full"] is None:
        raise BFMError(f"{checkpoint}: the checkpoint has no full-face extractor to export")
    metadata = {"recipe": recipe, "mode": getattr(model, "mode", "")}
    written = {}
    for role, net in networks.items():
        path = out_dir / FILES[role]
        if net is None:
            if path.exists():
                log.warning("removing %s: this %s model has no %s network", path, metadata["mode"], role)
                path.unlink()
            continue
        written[role] = export_onnx(net, path, role, dict(metadata), opset=opset, verify=verify)
    return written
