"""Import insightface recognition ONNX models as trainable torch modules (for fine-tuning).

``import_onnx(path)`` returns a module that takes normalised RGB (B,3,112,112) and returns (B,D)
embeddings, with an ``embedding_size`` attribute, in eval mode. Two paths:

1. **Our own nets classes** when the file is an arcface_torch architecture (IResNet r18/r34/r50/r100
   at any width, MobileFaceNet ``mbf`` at any scale/expansion) -- e.g. insightface's published
   ``w600k_r50.onnx`` or a file we exported ourselves. The architecture is read from the sequence of
   convolution shapes, the ONNX weights are matched layer by layer (in execution order) onto
   ``insightface_bfm.nets.get_backbone(...)``, and the result must reproduce ONNX Runtime, otherwise
   we fall back to path 2. ``module.bfm_architecture`` records the ``get_backbone`` arguments.

   BatchNorm folding: exporters fold each BN that follows a conv into the conv (W' = W*g/s, bias b').
   The original g, s cannot be recovered, so we load W' into the conv and make that BN an identity
   that carries the bias (weight 1, bias b', running mean 0, running var 1-eps). Eval outputs are
   those of the file (to float rounding). In train mode such a BN would re-normalise its input to
   unit variance on batch statistics, so either freeze BatchNorm (the trainer's option) or pass
   a few hundred faces as ``calibration``: the folded BNs then get the real statistics of their
   inputs with eval outputs unchanged, and train-mode outputs start close to the file's.
2. **A generic graph interpreter** (``OnnxGraphModule``) for any other recogniser built from
   common operators: its weights become Parameters, so it trains, and it exports back to ONNX.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import PackError
from .graph_module import OnnxGraphModule

log = logging.getLogger(__name__)

ARCHITECTURES = ("auto", "nets", "generic")
# agreement with ONNX Runtime required of an import (largest difference of L2-normalised rows)
TOLERANCE = 1e-4


def import_onnx(path, architecture: str = "auto", verify: bool = True,
                calibration: torch.Tensor | None = None) -> nn.Module:
    """Load an ONNX face recogniser as a trainable torch module (eval mode).

    architecture: ``auto`` (our nets class when the file is an arcface_torch IResNet or
      MobileFaceNet, else the generic interpreter), ``nets`` (that class or an error) or ``generic``.
    verify: compare the module with ONNX Runtime on a random batch; a generic import that disagrees
      raises PackError (a nets mapping that disagrees falls back to the generic path).
    calibration: optional normalised faces (N,3,112,112); a nets import then gets realistic
      statistics in its folded BatchNorms (``calibrate_batchnorm``), for training in train mode
      (a generic graph has no BatchNorm modules to calibrate; it is ignored there).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    path = Path(path)
    model = _load(path)
    reference = _OnnxReference(path) if verify else None

    if architecture in ("auto", "nets"):
        module, why = _import_as_nets(model, path)
        if module is not None and reference is not None:
            diff = reference.difference(module)
            if diff > TOLERANCE:
                module, why = None, f"it maps onto {module.bfm_architecture} but differs by {diff:.2e}"
        if module is not None:
            log.info("imported %s as nets %s", path, module.bfm_architecture)
            if calibration is not None:
                calibrate_batchnorm(module, calibration)
            return module
        if architecture == "nets":
            raise PackError(f"{path}: not an arcface_torch IResNet/MobileFaceNet: {why}")
        log.info("%s is not a nets architecture (%s); importing it as a generic graph", path, why)

    module = OnnxGraphModule(model, str(path))
    module.probe_embedding_size()
    module.bfm_architecture = {"backbone": "onnx", "path": str(path.resolve())}
    module.eval()
    if reference is not None:
        diff = reference.difference(module)
        if diff > TOLERANCE:
            raise PackError(f"{path}: the imported graph differs from ONNX Runtime by {diff:.2e}")
    return module


def backbone_from_architecture(architecture: dict) -> nn.Module:
    """A fresh module of the architecture an import recorded in ``module.bfm_architecture``.

    ``{"backbone": "onnx", "path": P}`` re-imports the graph of P generically (its weights are then
    meant to be replaced by a checkpoint's state dict); anything else is ``get_backbone(**...)``.
    """
    spec = dict(architecture)
    name = spec.pop("backbone")
    if name == "onnx":
        return import_onnx(spec["path"], architecture="generic", verify=False)
    from ..nets import get_backbone

    return get_backbone(name, **spec)


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise PackError(f"{path}: ONNX model file not found")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise PackError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


class _OnnxReference:
    """ONNX Runtime on the file, on a fixed random batch: the ground truth an import must match."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own errors: invalid graph, unknown op ...
            raise PackError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
        spec = self.session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        batch = shape[0] or 2
        dims = [batch] + [d or 112 for d in shape[1:]]
        self.x = np.random.default_rng(0).uniform(-1, 1, dims).astype(np.float32)
        self.expected = self.session.run(None, {spec.name: self.x})[0]

    def difference(self, module: nn.Module) -> float:
        with torch.no_grad():
            got = module(torch.from_numpy(self.x)).float().numpy()
        if got.shape != self.expected.shape:
            return float("inf")
        a = self.expected.reshape(len(got), -1).astype(np.float64)
        b = got.reshape(len(got), -1).astype(np.float64)
        a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return float(np.abs(a - b).max())


# --------------------------------------------------------------------------- nets mapping


@dataclass
class _Layer:
    """One parametric ONNX node, reduced to what the matching needs."""

    kind: str  # conv | bn | prelu | linear
    inputs: list[str]
    output: str
    tensors: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)


def _parametric_layers(model: onnx.ModelProto) -> tuple[list[_Layer] | None, str]:
    """The Conv/BN/PRelu/Gemm/MatMul nodes in file (topological) order, or None and why not."""
    graph = model.graph
    stored = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                stored[node.output[0]] = numpy_helper.to_array(attr["value"].t)
        elif node.op_type == "Identity" and node.input[0] in stored:
            stored[node.output[0]] = stored[node.input[0]]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    layers: list[_Layer] = []
    for node in graph.node:
        op, ins = node.op_type, list(node.input)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op == "Conv":
            if ins[1] not in stored or len(stored[ins[1]].shape) != 4:
                return None, f"Conv {node.name!r} without a stored 2-D kernel"
            bias = stored.get(ins[2]) if len(ins) > 2 and ins[2] else None
            tensors = {"weight": stored[ins[1]], "bias": bias}
            layers.append(_Layer("conv", ins, node.output[0], tensors, attrs))
        elif op == "BatchNormalization":
            if not all(i in stored for i in ins[1:5]):
                return None, f"BatchNormalization {node.name!r} without stored parameters"
            keys = ("weight", "bias", "running_mean", "running_var")
            tensors = dict(zip(keys, (stored[i] for i in ins[1:5])))
            layers.append(_Layer("bn", ins, node.output[0], tensors, attrs))
        elif op == "PRelu":
            if ins[1] not in stored:
                return None, f"PRelu {node.name!r} without a stored slope"
            layers.append(_Layer("prelu", ins, node.output[0], {"weight": stored[ins[1]]}))
        elif op == "Gemm":
            if ins[1] not in stored or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
                return None, f"Gemm {node.name!r} is not a plain linear layer"
            weight = stored[ins[1]] if attrs.get("transB", 0) else stored[ins[1]].T
            bias = stored.get(ins[2]) if len(ins) > 2 and ins[2] else None
            if bias is not None and attrs.get("beta", 1.0) != 1.0:
                return None, f"Gemm {node.name!r} scales its bias"
            layers.append(_Layer("linear", ins, node.output[0], {"weight": weight, "bias": bias}))
        elif op == "MatMul":
            if ins[1] not in stored:
                return None, f"MatMul {node.name!r} without a stored weight"
            layer = _Layer("linear", ins, node.output[0], {"weight": stored[ins[1]].T, "bias": None})
            users = consumers.get(node.output[0], [])
            # a separate bias Add right after the MatMul belongs to the same linear layer
            if len(users) == 1 and users[0].op_type == "Add":
                other = [i for i in users[0].input if i != node.output[0]]
                if len(other) == 1 and other[0] in stored and stored[other[0]].ndim == 1:
                    layer.tensors["bias"] = stored[other[0]]
                    layer.output = users[0].output[0]
            layers.append(layer)
        elif op not in ("Identity", "Constant"):  # (aliases and constants were resolved above)
            for i in ins:
                if i in stored and stored[i].dtype.kind == "f" and stored[i].size > 1:
                    if not (op == "Add" and any(
                        lay.kind == "linear" and lay.output in node.output for lay in layers[-1:])):
                        return None, f"{op} node {node.name!r} holds weights no nets layer has"
    return layers, ""


def _infer_backbone(layers: list[_Layer]) -> tuple[str, dict] | None:
    """The get_backbone(name, **options) that this conv sequence describes, if any."""
    convs = [lay for lay in layers if lay.kind == "conv"]
    linears = [lay for lay in layers if lay.kind == "linear"]
    if len(convs) < 3 or not linears:
        return None
    shapes = [c.tensors["weight"].shape for c in convs]
    kernels = [s[-1] for s in shapes]
    strides = [tuple(c.attrs.get("strides", (1, 1))) for c in convs]
    if shapes[0][1] != 3:
        return None
    embedding = int(linears[-1].tensors["weight"].shape[0])
    stem = int(shapes[0][0])

    if strides[0] == (1, 1) and kernels[0] == 3:  # IResNet: stride-1 stem, units of two 3x3 convs
        units, i = [], 1
        while i < len(kernels):
            if i + 1 >= len(kernels) or kernels[i] != 3 or kernels[i + 1] != 3:
                return None
            projected = i + 2 < len(kernels) and kernels[i + 2] == 1
            units.append(projected)
            i += 3 if projected else 2
        if not units or not units[0]:
            return None
        stages = []
        for projected in units:
            if projected:
                stages.append(0)
            stages[-1] += 1
        if len(stages) != 4:
            return None
        from ..nets import IRESNET_LAYERS

        name = next((n for n, lay in IRESNET_LAYERS.items() if tuple(lay) == tuple(stages)), "r50")
        options = {"width": stem / 64} if stem != 64 else {}  # only what differs from the default
        if tuple(IRESNET_LAYERS[name]) != tuple(stages):
            options["layers"] = tuple(stages)
        return name, {"embedding_size": embedding, **options}

    if strides[0] == (2, 2) and kernels[0] == 3 and stem % 64 == 0:  # MobileFaceNet
        i = 2 if kernels[1] == 3 else 1
        rest = kernels[i:-2]
        if len(rest) % 3 or kernels[-2:] != [1, 7]:
            return None
        triplet_strides = [strides[i + 3 * t + 1] for t in range(len(rest) // 3)]
        blocks = [1] if i == 2 else [0]
        for s in triplet_strides:
            if s == (2, 2):
                blocks.append(0)
            else:
                blocks[-1] += 1
        if len(blocks) != 4 or min(blocks) < 1:
            return None
        expansion_width = int(shapes[i][0])  # the first bottleneck's 1x1 expansion
        options = {"scale": stem // 64, "blocks": tuple(blocks), "expansion": expansion_width / 128}
        defaults = {"scale": 2, "blocks": (1, 4, 6, 2), "expansion": 1.0}  # arcface_torch's mbf
        options = {k: v for k, v in options.items() if v != defaults[k]}
        return "mbf", {"embedding_size": embedding, **options}
    return None


def _execution_order(module: nn.Module) -> list[nn.Module]:
    """Parametric leaf modules in the order a forward pass calls them."""
    order: list[nn.Module] = []
    kinds = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU, nn.Linear)
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(mod))
             for m in module.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            module(torch.zeros(2, 3, 112, 112))
    finally:
        for h in hooks:
            h.remove()
    return order


def _import_as_nets(model: onnx.ModelProto, path: Path) -> tuple[nn.Module | None, str]:
    layers, why = _parametric_layers(model)
    if layers is None:
        return None, why
    found = _infer_backbone(layers)
    if found is None:
        return None, "its convolution sequence is neither IResNet nor MobileFaceNet"
    name, options = found
    from ..nets import get_backbone

    try:
        module = get_backbone(name, **options).eval()
    except ValueError as e:
        return None, f"get_backbone({name!r}, {options}) failed: {e}"
    try:
        folded = _load_layers(layers, _execution_order(module))
    except _Mismatch as e:
        return None, f"{name} {options}: {e}"
    module.embedding_size = options["embedding_size"]
    module.bfm_architecture = {"backbone": name, **options}
    names = {id(m): n for n, m in module.named_modules()}
    module.bfm_folded_batchnorm = [names[id(bn)] for bn in folded]
    return module, ""


class _Mismatch(Exception):
    pass


def _copy(target: torch.Tensor, value, what: str) -> None:
    value = torch.from_numpy(np.array(value, dtype=np.float32))
    if value.numel() != target.numel():
        raise _Mismatch(f"{what}: file has {tuple(value.shape)}, module {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(value.reshape(target.shape))


def _identity_bn(bn: nn.Module, bias) -> None:
    """A BN that passes x through plus ``bias`` in eval mode (its conv already holds the scale)."""
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        if bias is not None:
            _copy(bn.bias, bias, "folded bias")
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)


def _load_layers(layers: list[_Layer], order: list[nn.Module]) -> list[nn.Module]:
    """Copy the ONNX layers into the modules (both in execution order); returns the folded BNs."""
    i = j = 0
    folded = []

    def take(kind: str) -> _Layer:
        nonlocal i
        if i >= len(layers) or layers[i].kind != kind:
            found = layers[i].kind if i < len(layers) else "the end of the graph"
            raise _Mismatch(f"module #{j} ({type(order[j]).__name__}) expects an ONNX {kind}, found {found}")
        i += 1
        return layers[i - 1]

    while j < len(order):
        mod = order[j]
        following = order[j + 1] if j + 1 < len(order) else None
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            layer = take("conv" if isinstance(mod, nn.Conv2d) else "linear")
            if isinstance(mod, nn.Conv2d):
                ok = (tuple(layer.attrs.get("strides", (1, 1))) == tuple(mod.stride)
                      and int(layer.attrs.get("group", 1)) == mod.groups)
                if not ok:
                    raise _Mismatch(f"conv #{i - 1}: stride/groups differ from {mod}")
            _copy(mod.weight, layer.tensors["weight"], f"layer #{i - 1} weight")
            bias = layer.tensors.get("bias")
            bn_kinds = (nn.BatchNorm2d,) if isinstance(mod, nn.Conv2d) else (nn.BatchNorm1d,)
            next_is_bn = isinstance(following, bn_kinds)
            unfolded = next_is_bn and i < len(layers) and layers[i].kind == "bn" and (
                layers[i].inputs[0] == layer.output)
            if mod.bias is not None:
                if bias is not None:
                    _copy(mod.bias, bias, f"layer #{i - 1} bias")
                else:
                    with torch.no_grad():
                        mod.bias.zero_()
                if next_is_bn and not unfolded:
                    _identity_bn(following, None)
                    folded.append(following)
                    j += 1
            elif next_is_bn and not unfolded:
                _identity_bn(following, bias)  # BatchNorm folded into this layer
                folded.append(following)
                j += 1
            elif bias is not None and np.any(bias):
                raise _Mismatch(f"layer #{i - 1} has a bias the module has no place for")
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer = take("bn")
            for key in ("weight", "bias", "running_mean", "running_var"):
                _copy(getattr(mod, key), layer.tensors[key], f"bn #{i - 1} {key}")
            eps = float(layer.attrs.get("epsilon", 1e-5))
            if abs(eps - mod.eps) > 1e-6 * mod.eps:  # (ONNX stores it as float32)
                mod.eps = eps
        elif isinstance(mod, nn.PReLU):
            _copy(mod.weight, take("prelu").tensors["weight"], f"prelu #{i - 1}")
        j += 1
    if i != len(layers):
        raise _Mismatch(f"{len(layers) - i} ONNX layers are left over after the module's last layer")
    return folded


def calibrate_batchnorm(module: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Give the BatchNorms that an import made identities realistic statistics, outputs unchanged.

    images: normalised faces (N,3,112,112), e.g. a few hundred from the fine-tuning set.
    A folded BN is x -> x + b. With its input's mean m and variance v over ``images`` we set
    running_mean m, running_var v, weight sqrt(v + eps), bias b + m: eval outputs stay exactly the
    file's, and in train mode (batch statistics) the network now starts close to them too, instead
    of re-normalising every folded layer to unit variance. BNs whose weight is frozen (the embedding
    BN of arcface_torch) are left as they are. Returns ``module`` (in eval mode).
    """
    names = getattr(module, "bfm_folded_batchnorm", None)
    if names is None:
        raise ValueError("calibrate_batchnorm: the module was not made by import_onnx from a nets layout")
    targets = [module.get_submodule(n) for n in names]
    targets = [bn for bn in targets if bn.weight.requires_grad]
    stats = {id(bn): [0, 0.0, 0.0] for bn in targets}

    def collect(bn, args):
        x = args[0].detach().double()
        dims = [0] + list(range(2, x.dim()))
        count = x.numel() // x.shape[1]
        entry = stats[id(bn)]
        entry[0] += count
        entry[1] = entry[1] + x.sum(dims)
        entry[2] = entry[2] + (x * x).sum(dims)

    module.eval()
    hooks = [bn.register_forward_pre_hook(collect) for bn in targets]
    try:
        device = next(module.parameters()).device
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                module(images[start:start + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for bn in targets:
            count, total, squares = stats[id(bn)]
            if count == 0:
                continue
            mean = total / count
            var = (squares / count - mean * mean).clamp_min(0)
            bn.bias.add_(mean.to(bn.bias))
            bn.running_mean.copy_(mean.to(bn.running_mean))
            bn.running_var.copy_(var.to(bn.running_var))
            bn.weight.copy_(torch.sqrt(var + bn.eps).to(bn.weight))
    return module
