"""A trainable torch module that runs an ONNX graph: the generic path of ``import_onnx``.

Face recognisers published as ONNX come from many code bases (mxnet, PyTorch, Paddle ...), and
most are a plain chain of common operators. Rather than guessing each source architecture, we
interpret the graph: every weight initializer becomes an ``nn.Parameter`` (so it trains), running
statistics and constants become buffers, and ``forward`` executes the nodes in their (topological)
file order with differentiable torch ops. The result exports back to ONNX with ``export_onnx``.

Two liberties, both needed to train what was exported for inference:
- the batch dimension is free: a ``Reshape`` of an input-derived tensor whose target shape starts
  with the file's static batch size (usually 1, e.g. ``[1, -1]``) keeps the actual batch instead;
- ``BatchNormalization`` uses batch statistics in ``train()`` mode, like ``nn.BatchNorm``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from ..errors import PackError


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    name: str = ""
    # whether the first input depends on the graph input (and so carries the batch dimension)
    dynamic: bool = False


# (op type, input slot) pairs whose float initializer is a learnable weight
_WEIGHT_SLOTS = {
    ("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2),
    ("Gemm", 0), ("Gemm", 1), ("Gemm", 2), ("MatMul", 0), ("MatMul", 1),
    ("PRelu", 1), ("BatchNormalization", 1), ("BatchNormalization", 2),
    ("InstanceNormalization", 1), ("InstanceNormalization", 2),
    ("LayerNormalization", 1), ("LayerNormalization", 2),
}
# element-wise ops whose non-scalar float constant operand is a learnable bias or scale
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}


# marks a tensor whose values were left out of a skeleton (they live in the state dict)
_STRIPPED = "bfm:stripped"
SKELETON_KEY = "onnx_skeleton"


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.doc_string == _STRIPPED:
        return np.zeros(tuple(tensor.dims), dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    return numpy_helper.to_array(tensor)


def _skeleton(model: onnx.ModelProto) -> bytes:
    """The model without its weight values: enough to rebuild the module before load_state_dict."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)

    def strip(tensor):
        tensor.CopyFrom(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                         doc_string=_STRIPPED))

    for tensor in skeleton.graph.initializer:
        strip(tensor)
    for node in skeleton.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    strip(attr.t)
    return skeleton.SerializeToString(deterministic=True)


def _attribute_values(node: onnx.NodeProto) -> dict:
    values = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            values[attr.name] = _array(attr.t)
            continue
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, onnx.TensorProto):
            value = _array(value)
        elif isinstance(value, list | tuple):
            value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
        values[attr.name] = value
    return values


def _constant_value(node: _Node) -> np.ndarray:
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    raise PackError(f"ONNX Constant node {node.name!r} has no supported value attribute ({sorted(a)})")


def _safe_key(name: str, taken: set[str]) -> str:
    """An attribute name for an ONNX tensor name (which may hold '.', ':', '/' ...)."""
    key = re.sub(r"\W", "_", name) or "tensor"
    if key[0].isdigit():
        key = "t_" + key
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


class OnnxGraphModule(nn.Module):
    """Runs one ONNX graph (one image input, one output) with torch ops; weights are Parameters.

    Build it with ``OnnxGraphModule(onnx.load(path))`` or, better, ``import_onnx(path)``.
    ``forward(x)`` takes normalised RGB (B,3,112,112) like every insightface recogniser (graphs that
    normalise inside, as mxnet conversions do, get x*127.5+127.5) and returns the graph's output.
    ``embedding_size`` is the output's last dimension.
    """

    def __init__(self, model: onnx.ModelProto, source: str = "<onnx>"):
        super().__init__()
        graph = model.graph
        self.source = source
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

        # mxnet-converted insightface models normalise inside the graph (their first nodes are
        # named Sub/_minus and Mul/_mul: insightface's own test); they are fed raw RGB pixels
        first = [n.name for n in graph.node[:8]]
        self.expects_pixels = any(n.startswith(("Sub", "_minus")) for n in first) and any(
            n.startswith(("Mul", "_mul")) for n in first)

        initializers = {t.name: _array(t) for t in graph.initializer}
        nodes = []
        for proto in graph.node:
            if proto.domain not in ("", "ai.onnx"):
                raise PackError(f"{source}: custom operator domain {proto.domain!r} (node {proto.name!r})")
            node = _Node(proto.op_type, list(proto.input), list(proto.output), _attribute_values(proto),
                         proto.name)
            if node.op == "Constant":
                # constants are folded into the tensor table once, not re-created per call
                initializers[node.outputs[0]] = _constant_value(node)
                continue
            if node.op == "Identity" and node.inputs[0] in initializers:
                # exporters alias equal-valued weights through Identity: give each alias its own copy
                initializers[node.outputs[0]] = np.array(initializers[node.inputs[0]])
                continue
            if node.op not in _OPS:
                raise PackError(
                    f"{source}: ONNX operator {node.op!r} (node {node.name!r}) is not supported by the "
                    f"generic importer; supported: {', '.join(sorted(_OPS))}"
                )
            nodes.append(node)

        graph_inputs = [i for i in graph.input if i.name not in initializers]
        if len(graph_inputs) != 1 or len(graph.output) != 1:
            raise PackError(
                f"{source}: expected one image input and one output, found inputs "
                f"{[i.name for i in graph_inputs]} and outputs {[o.name for o in graph.output]}"
            )
        self.input_name = graph_inputs[0].name
        self.output_name = graph.output[0].name
        dims = graph_inputs[0].type.tensor_type.shape.dim
        self.input_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        # the batch size the file was frozen to, if any (Reshape targets may repeat it)
        self.static_batch = self.input_shape[0] if self.input_shape and self.input_shape[0] else None
        out_dims = graph.output[0].type.tensor_type.shape.dim
        last = out_dims[-1] if len(out_dims) else None
        self.embedding_size = int(last.dim_value) if last is not None and last.HasField("dim_value") else None

        # which tensors depend on the input: only those carry a batch dimension
        dynamic = {self.input_name}
        for node in nodes:
            if any(i in dynamic for i in node.inputs if i):
                dynamic.update(o for o in node.outputs if o)
            node.dynamic = bool(node.inputs) and node.inputs[0] in dynamic

        learnable = set()
        for node in nodes:
            for slot, name in enumerate(node.inputs):
                if name not in initializers:
                    continue
                value = initializers[name]
                if value.dtype.kind != "f":
                    continue
                if (node.op, slot) in _WEIGHT_SLOTS or (node.op in _ELEMENTWISE and value.size > 1):
                    if name in learnable:
                        # one stored tensor feeding two layers is deduplication, not weight tying:
                        # each layer trains its own copy
                        copy = f"{name}:{node.name or len(initializers)}:{slot}"
                        initializers[copy] = np.array(value)
                        node.inputs[slot] = name = copy
                    learnable.add(name)

        used = {i for node in nodes for i in node.inputs if i}
        taken: set[str] = set(dir(nn.Module())) | {"source", "opset", "input_name", "output_name",
                                                   "input_shape", "static_batch", "embedding_size",
                                                   "expects_pixels", "bfm_architecture", SKELETON_KEY}
        self._tensor_keys: dict[str, str] = {}
        for name, value in initializers.items():
            if name not in used:
                continue
            key = _safe_key(name, taken)
            if value.dtype.kind == "f":
                tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            elif value.dtype == np.bool_:
                tensor = torch.from_numpy(np.array(value))
            else:
                tensor = torch.from_numpy(np.array(value, dtype=np.int64))
            if name in learnable:
                self.register_parameter(key, nn.Parameter(tensor))
            else:
                self.register_buffer(key, tensor)
            self._tensor_keys[name] = key
        self._nodes = nodes
        self._release = _last_uses(nodes, self.output_name)
        # train.onnxruntime_frozen_layers: the frozen first nodes through ONNX Runtime while training
        # on a CPU (train/frozen_prefix.py; set by the trainer, never saved)
        self.frozen_prefix = None
        # the graph travels in the state dict, so a checkpoint alone rebuilds the module
        skeleton = bytearray(_skeleton(model))
        self.register_buffer(SKELETON_KEY, torch.frombuffer(skeleton, dtype=torch.uint8).clone())

    @classmethod
    def from_state_dict(cls, state: dict, prefix: str = "", source: str = "<state dict>") -> OnnxGraphModule:
        """Rebuild a module from its state dict alone (e.g. the ``full.`` part of a checkpoint)."""
        key = prefix + SKELETON_KEY
        if key not in state:
            raise PackError(f"{source}: no '{key}' in the state dict: not an imported ONNX graph")
        try:
            model = onnx.load_from_string(state[key].cpu().numpy().tobytes())
        except Exception as e:  # protobuf DecodeError and friends
            raise PackError(f"{source}: '{key}' is not a serialised ONNX graph ({e})") from None
        module = cls(model, source)
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(own, strict=True)
        module.probe_embedding_size()
        return module.eval()

    def probe_embedding_size(self) -> int:
        """``embedding_size`` from the graph's output shape or, where that is symbolic, one forward."""
        if self.embedding_size is None:
            shape = [d if d else 1 for d in self.input_shape] or [1, 3, 112, 112]
            device = next((p.device for p in self.parameters()), torch.device("cpu"))
            with torch.no_grad():
                self.embedding_size = int(self(torch.zeros(shape, device=device)).shape[-1])
        return self.embedding_size

    def extra_repr(self) -> str:
        return f"source={self.source!r}, nodes={len(self._nodes)}, embedding_size={self.embedding_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expects_pixels:
            x = x * 127.5 + 127.5  # our convention is normalised input; this graph wants pixels
        weights = {name: getattr(self, key) for name, key in self._tensor_keys.items()}
        live: dict[str, torch.Tensor | None] = {self.input_name: x}  # the activations still to be read
        start = 0
        prefix = self.frozen_prefix
        if prefix is not None and self.training and prefix.usable(x):
            live, start = prefix(x), prefix.cut
        # memory never written in place: the caller's input and the weights (a view of one may flow on)
        kept = {t.untyped_storage().data_ptr() for t in (x, *weights.values())}
        for node, release in zip(self._nodes[start:], self._release[start:]):
            args = [live[i] if i in live else weights.get(i) for i in node.inputs]  # "" (absent) -> None
            # an activation whose input is used by no later node and needs no gradient (a frozen
            # layer, or inference) runs in place: the same values without a new full-size tensor
            first = node.inputs[0] if node.inputs else ""
            inplace = (node.op in _INPLACE and first in release and first in live
                       and not args[0].requires_grad and args[0].untyped_storage().data_ptr() not in kept
                       and not _aliased(live, first))
            result = _INPLACE[node.op](self, node, args) if inplace else _OPS[node.op](self, node, args)
            if isinstance(result, tuple):
                for name, value in zip(node.outputs, result):
                    live[name] = value
            else:
                live[node.outputs[0]] = result
            for name in release:  # its last reader: freed now, so the allocator reuses the memory
                live.pop(name, None)
        return live[self.output_name]


def _aliased(live: dict, name: str) -> bool:
    """Whether another live activation shares ``live[name]``'s memory (a view, Identity, Reshape...)."""
    ptr = live[name].untyped_storage().data_ptr()
    return any(k != name and isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr
               for k, v in live.items())


def _last_uses(nodes, output_name: str) -> list[frozenset]:
    """Per node, the tensor names no later node reads (the graph's output excepted)."""
    last: dict[str, int] = {}
    for k, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                last[name] = k
    out = [set() for _ in nodes]
    for name, k in last.items():
        if name != output_name:
            out[k].add(name)
    return [frozenset(s) for s in out]


# --------------------------------------------------------------------------- operators
# Each takes (module, node, input tensors) and returns a tensor or a tuple, with ONNX semantics.


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _spatial_padding(m, node, x, kernel, strides, dilations, value=0.0):
    """ONNX pads/auto_pad -> (explicitly padded x, symmetric padding for the torch op)."""
    spatial = x.dim() - 2
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for i in range(spatial):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            pads_begin.append(small if auto_pad == "SAME_UPPER" else big)
            pads_end.append(big if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        pads_begin = pads_end = [0] * spatial
    else:
        pads = node.attrs.get("pads", [0] * 2 * spatial)
        pads_begin, pads_end = list(pads[:spatial]), list(pads[spatial:])
    if pads_begin == pads_end:
        return x, pads_begin
    flat = []
    for b, e in zip(reversed(pads_begin), reversed(pads_end)):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * spatial


def _conv(m, node, args):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    kernel = node.attrs.get("kernel_shape", list(w.shape[2:]))
    strides = node.attrs.get("strides", [1] * spatial)
    dilations = node.attrs.get("dilations", [1] * spatial)
    x, padding = _spatial_padding(m, node, x, kernel, strides, dilations)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(spatial)
    if conv is None:
        raise PackError(f"{m.source}: Conv node {node.name!r} with {spatial} spatial dims is not supported")
    groups = node.attrs.get("group", 1)
    return conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=groups)


def _batch_norm(m, node, args):
    x, scale, bias, mean, var = args[:5]
    momentum = 1.0 - float(node.attrs.get("momentum", 0.9))  # ONNX weights the old value
    training = m.training and isinstance(mean, torch.Tensor) and not mean.requires_grad
    return F.batch_norm(x, mean, var, scale, bias, training=training, momentum=momentum,
                        eps=float(node.attrs.get("epsilon", 1e-5)))


def _prelu(m, node, args):
    x, slope = args
    # per-channel slope stored as [C], [C,1,1] ... : the native op (exports back as PRelu)
    if slope.numel() == 1:
        return F.prelu(x, slope.reshape(1))
    if x.dim() >= 2 and slope.numel() == x.shape[1] and (
        slope.dim() == x.dim() - 1 and all(s == 1 for s in slope.shape[1:])
        or slope.dim() == 1 and x.dim() == 2
    ):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)  # general numpy broadcasting


def _clip(m, node, args, inplace: bool = False):
    x = args[0]
    if m.opset < 11:
        low, high = node.attrs.get("min"), node.attrs.get("max")
    else:
        low = args[1] if len(args) > 1 else None
        high = args[2] if len(args) > 2 else None
        low = None if low is None else float(low)
        high = None if high is None else float(high)
    if low is None and high is None:
        return x
    if inplace:
        return x.clamp_(min=low, max=high)
    if low is not None and high is not None:
        # the same values; its backward is one kernel where clamp's is several (ReLU6 in MobileFaceNets)
        return F.hardtanh(x, low, high)
    return torch.clamp(x, min=low, max=high)


def _gemm(m, node, args):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if node.attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if alpha == 1.0 and beta == 1.0 and (c is None or c.dim() <= 1):
        weight = b if node.attrs.get("transB", 0) else b.transpose(0, 1)
        return F.linear(a, weight, c)  # exports back as Gemm
    if node.attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = alpha * (a @ b)
    return y if c is None else y + beta * c


def _reshape(m, node, args):
    x, shape = args[0], _ints(args[1])
    allow_zero = node.attrs.get("allowzero", 0)
    if not allow_zero:
        shape = [x.shape[i] if s == 0 and i < x.dim() else s for i, s in enumerate(shape)]
    if node.dynamic and shape and shape[0] > 0 and x.dim() > 0 and (
        shape[0] == m.static_batch or shape[0] == x.shape[0]
    ):
        # a batch frozen into the file ([1, -1]) or read from Shape: keep the actual batch
        shape[0] = x.shape[0]
    return x.reshape(shape)


def _flatten(m, node, args):
    x = args[0]
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    if axis == 0:
        return x.reshape(1, -1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1) if axis > 1 else torch.flatten(x, 1)


def _axes(m, node, args, slot=1):
    if m.opset >= 13 and len(args) > slot and args[slot] is not None:
        return _ints(args[slot])
    return node.attrs.get("axes")


def _unsqueeze(m, node, args):
    x = args[0]
    rank = x.dim() + len(_axes(m, node, args))
    for axis in sorted(_axis(a, rank) for a in _axes(m, node, args)):
        x = x.unsqueeze(axis)
    return x


def _squeeze(m, node, args):
    x = args[0]
    axes = _axes(m, node, args)
    if axes is None:
        return x.squeeze()
    for axis in sorted((_axis(a, x.dim()) for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _reduce(fn):
    def run(m, node, args):
        x = args[0]
        axes = _axes(m, node, args) if (m.opset >= 18 or node.op == "ReduceSum") else node.attrs.get("axes")
        keep = bool(node.attrs.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=[_axis(a, x.dim()) for a in axes], keepdim=keep)
    return run


def _pool(kind):
    def run(m, node, args):
        x = args[0]
        kernel = node.attrs["kernel_shape"]
        spatial = len(kernel)
        strides = node.attrs.get("strides", [1] * spatial)
        dilations = node.attrs.get("dilations", [1] * spatial)
        ceil_mode = bool(node.attrs.get("ceil_mode", 0))
        # asymmetric max-pool padding is filled with -inf so that it never wins the max
        fill = -math.inf if kind == "max" else 0.0
        padded, padding = _spatial_padding(m, node, x, kernel, strides, dilations, value=fill)
        if kind == "max":
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
            return pool(padded, kernel, strides, padding, dilations, ceil_mode)
        include = bool(node.attrs.get("count_include_pad", 0))
        if padded is not x and not include:
            raise PackError(f"{m.source}: AveragePool {node.name!r} with asymmetric padding excluding pads")
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        return pool(padded, kernel, strides, padding, ceil_mode, include)
    return run


def _pad(m, node, args):
    x = args[0]
    if m.opset < 11:
        pads, value = node.attrs["pads"], float(node.attrs.get("value", 0.0))
    else:
        pads = _ints(args[1])
        value = float(args[2]) if len(args) > 2 and args[2] is not None and args[2].numel() else 0.0
    mode = node.attrs.get("mode", "constant")
    rank = x.dim()
    flat = []
    for i in reversed(range(rank)):
        flat += [pads[i], pads[rank + i]]
    while len(flat) > 2 and flat[-1] == 0 and flat[-2] == 0:
        flat = flat[:-2]  # torch pads from the last dimension: drop untouched leading dims
    if mode == "constant":
        return F.pad(x, flat, value=value)
    return F.pad(x, flat, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _softmax(fn):
    def run(m, node, args):
        x = args[0]
        axis = _axis(int(node.attrs.get("axis", -1 if m.opset >= 13 else 1)), x.dim())
        if m.opset < 13 and axis != x.dim() - 1:
            # before opset 13 the input is coerced to 2-D at axis
            shape = x.shape
            return fn(x.reshape(*shape[:axis], -1), dim=-1).reshape(shape)
        return fn(x, dim=axis)
    return run


def _gather(m, node, args):
    data, indices = args
    axis = _axis(int(node.attrs.get("axis", 0)), data.dim())
    indices = indices.long()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    out = torch.index_select(data, axis, indices.reshape(-1))
    return out.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]))


def _slice(m, node, args):
    x = args[0]
    if m.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 1:
            raise PackError(f"{m.source}: Slice {node.name!r} with step {step} is not supported")
        size = x.shape[_axis(axis, x.dim())]
        index[_axis(axis, x.dim())] = slice(max(-size, min(start, size)), max(-size, min(end, size)), step)
    return x[tuple(index)]


_CAST = {
    1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
}


def _cast(m, node, args):
    dtype = _CAST.get(int(node.attrs["to"]))
    if dtype is None:
        raise PackError(f"{m.source}: Cast {node.name!r} to ONNX type {node.attrs['to']} is not supported")
    return args[0].to(dtype)


def _split(m, node, args):
    x = args[0]
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    if m.opset >= 13 and len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    else:
        sizes = node.attrs.get("split")
    if sizes is None:
        count = len(node.outputs)
        sizes = [x.shape[axis] // count] * count
    return tuple(torch.split(x, list(sizes), dim=axis))


def _lp_normalization(m, node, args):
    return F.normalize(args[0], p=float(node.attrs.get("p", 2)), dim=int(node.attrs.get("axis", -1)))


# in-place forms for ``OnnxGraphModule.forward`` (same values, no new tensor)
_INPLACE = {
    "Relu": lambda m, n, a: a[0].relu_(),
    "Clip": lambda m, n, a: _clip(m, n, a, inplace=True),
}

_OPS = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "PRelu": _prelu,
    "Relu": lambda m, n, a: F.relu(a[0]),
    "LeakyRelu": lambda m, n, a: F.leaky_relu(a[0], float(n.attrs.get("alpha", 0.01))),
    "Sigmoid": lambda m, n, a: torch.sigmoid(a[0]),
    "HardSigmoid": lambda m, n, a: torch.clamp(
        float(n.attrs.get("alpha", 0.2)) * a[0] + float(n.attrs.get("beta", 0.5)), 0.0, 1.0),
    "HardSwish": lambda m, n, a: F.hardswish(a[0]),
    "Tanh": lambda m, n, a: torch.tanh(a[0]),
    "Elu": lambda m, n, a: F.elu(a[0], float(n.attrs.get("alpha", 1.0))),
    "Selu": lambda m, n, a: float(n.attrs.get("gamma", 1.0507009873554805)) * F.elu(
        a[0], float(n.attrs.get("alpha", 1.6732632423543772))),
    "Softplus": lambda m, n, a: F.softplus(a[0]),
    "Softsign": lambda m, n, a: F.softsign(a[0]),
    "Tile": lambda m, n, a: a[0].repeat(*_ints(a[1])),
    "Clip": _clip,
    "Add": lambda m, n, a: a[0] + a[1],
    "Sub": lambda m, n, a: a[0] - a[1],
    "Mul": lambda m, n, a: a[0] * a[1],
    "Div": lambda m, n, a: a[0] / a[1],
    "Pow": lambda m, n, a: torch.pow(a[0], a[1]),
    "Sqrt": lambda m, n, a: torch.sqrt(a[0]),
    "Neg": lambda m, n, a: -a[0],
    "Exp": lambda m, n, a: torch.exp(a[0]),
    "Max": lambda m, n, a: torch.stack(torch.broadcast_tensors(*a)).amax(0),
    "Min": lambda m, n, a: torch.stack(torch.broadcast_tensors(*a)).amin(0),
    "Gemm": _gemm,
    "MatMul": lambda m, n, a: torch.matmul(a[0], a[1]),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda m, n, a: a[0].permute(n.attrs.get("perm", list(range(a[0].dim() - 1, -1, -1)))),
    "Concat": lambda m, n, a: torch.cat([t for t in a if t is not None], dim=int(n.attrs["axis"])),
    "Split": _split,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Identity": lambda m, n, a: a[0],
    # inference graphs: Dropout is the identity (its optional mask output is never used)
    "Dropout": lambda m, n, a: (a[0], torch.ones_like(a[0], dtype=torch.bool)),
    "GlobalAveragePool": lambda m, n, a: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda m, n, a: a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "Pad": _pad,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "Softmax": _softmax(torch.softmax),
    "LogSoftmax": _softmax(torch.log_softmax),
    "LpNormalization": _lp_normalization,
    "Shape": lambda m, n, a: torch.tensor(list(a[0].shape), dtype=torch.int64, device=a[0].device),
    "Gather": _gather,
    "Cast": _cast,
}
