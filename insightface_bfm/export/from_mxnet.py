"""Legacy insightface MXNet checkpoints (``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params``) to ONNX.

No mxnet and no torch: the symbol's graph is translated operator by operator into an ONNX graph
built with the ``onnx`` helpers, its weights read by ``mxnet_params``. The result is an insightface
recognition ONNX as the package exports them: input ``input`` [batch,3,112,112] float32 RGB
normalised (x - 127.5) / 127.5 outside the graph, output ``embedding`` [batch, D], so insightface's
router loads it as ``ArcFaceONNX``, ``bfm eval`` measures it and ``import_onnx`` fine-tunes it.

Input normalisation. insightface's MXNet symbols normalise inside the graph (``data - 127.5`` then
``* 0.0078125``, i.e. /128, not /127.5) and were fed raw 0..255 RGB pixels. The converter folds that
leading chain of scalar ops, composed with our convention x = 127.5 y + 127.5, into one affine map
of the input y (for insightface's chain: y * 0.99609375). A pure scale feeding one Convolution is
folded into its weights (exact, with zero padding); otherwise it stays as Mul/Add nodes named
``input_scale``/``input_shift`` (names insightface's router does not mistake for an mxnet
normalisation). A symbol with no such chain is taken to want raw pixels, as insightface's MXNet
training fed them. Metadata ``input_normalisation`` records what was folded.

The output is the embedding: ``output=`` (a node name, with or without ``_output``), else the
symbol's head when it is no loss, else node ``fc1`` (insightface's embedding, as its deploy
symbols cut ``get_internals()['fc1_output']``), else the head's input (``SoftmaxOutput`` and the
other loss layers are dropped). Only that output's ancestors are converted. BatchNorm with
``fix_gamma`` (mxnet's default) uses gamma = 1 whatever the file stores, as mxnet does; weights
stored as float16/float64 become float32, and ``Cast``/``amp_cast`` of an fp16 training symbol are
dropped (the converted graph computes in float32).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..atomic import atomic_write_bytes
from ..errors import PackError
from .mxnet_params import read_params
from .mxnet_symbol import MxNode, MxSymbol, read_symbol

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
INPUT_DESCRIPTION = "RGB float32 [batch,3,112,112], (x - 127.5) / 127.5"
# bump when the conversion of some graph changes: cached conversions are keyed on it
CONVERTER_VERSION = "1"
# ops whose output is the network's loss, not a feature: dropped at the head
LOSS_OPS = ("SoftmaxOutput", "LinearRegressionOutput", "LogisticRegressionOutput",
            "MAERegressionOutput", "SVMOutput", "MakeLoss")
# ops that vanish at inference: their output is their first input
PASS_THROUGH = ("Dropout", "identity", "_copy", "BlockGrad", "stop_gradient", "Cast", "amp_cast")
# what the router of insightface (ArcFaceONNX) takes for an in-graph normalisation
_ROUTER_SUB, _ROUTER_MUL = ("Sub", "_minus"), ("Mul", "_mul")


@dataclass
class _Tensor:
    name: str
    shape: tuple  # ints; None for a dimension that carries the batch


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``[mxnet:]PREFIX[,EPOCH]`` -> (prefix, epoch or None)."""
    text = spec[len("mxnet:"):] if spec.startswith("mxnet:") else spec
    prefix, sep, epoch = text.rpartition(",")
    if not sep:
        prefix, epoch = text, None
    elif not epoch.strip().isdigit():
        raise PackError(f"mxnet checkpoint {spec!r}: the epoch after ',' must be an integer (PREFIX[,EPOCH])")
    if not prefix.strip():
        raise PackError(f"mxnet checkpoint {spec!r}: expected PREFIX[,EPOCH], e.g. model-r100-ii/model,0")
    return prefix, (int(epoch) if epoch is not None else None)


def checkpoint_files(spec: str) -> tuple[Path, Path]:
    """(``PREFIX-symbol.json``, ``PREFIX-EPOCH.params``); without EPOCH the highest one present."""
    prefix, epoch = parse_spec(spec)
    symbol = Path(f"{prefix}-symbol.json")
    if not symbol.is_file():
        raise PackError(f"{symbol}: mxnet symbol file not found (checkpoint {spec!r})")
    if epoch is None:
        stem = Path(prefix).name
        found = sorted((int(m.group(1)), p) for p in symbol.parent.glob(f"{stem}-*.params")
                       if (m := re.fullmatch(re.escape(stem) + r"-(\d+)\.params", p.name)))
        if not found:
            raise PackError(f"{prefix}-EPOCH.params: no params file beside {symbol} (checkpoint {spec!r})")
        return symbol, found[-1][1]
    params = Path(f"{prefix}-{epoch:04d}.params")
    if not params.is_file():
        raise PackError(f"{params}: mxnet params file not found (checkpoint {spec!r})")
    return symbol, params


def mxnet_to_onnx(symbol_path, params_path, *, output: str | None = None, input_size: int = 112,
                  check: bool = True) -> onnx.ModelProto:
    """The ONNX model of an mxnet symbol + params (see the module docstring for the conventions).

    check: run the result once in ONNX Runtime (catches a graph ORT rejects at conversion time).
    """
    symbol = read_symbol(symbol_path)
    args, aux = read_params(params_path)
    builder = _Builder(symbol, {**args, **aux}, Path(params_path), input_size)
    model = builder.build(output)
    model.metadata_props.extend([
        onnx.StringStringEntryProto(key=k, value=v) for k, v in {
            "input": INPUT_DESCRIPTION,
            "output": "embedding",
            "embedding_size": str(builder.embedding_size),
            "source": "mxnet",
            "mxnet_symbol": Path(symbol_path).name,
            "mxnet_params": Path(params_path).name,
            "mxnet_output": builder.output_name,
            "input_normalisation": builder.normalisation,
            "bfm_version": __version__,
        }.items()
    ])
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise PackError(f"{symbol_path}: the converted graph is not valid ONNX ({first})") from None
    if check:
        _run_once(model, symbol_path, input_size)
    return model


def import_mxnet(spec: str, out=None, *, output: str | None = None, input_size: int = 112) -> Path:
    """Convert the MXNet checkpoint ``[mxnet:]PREFIX[,EPOCH]`` to an ONNX file; returns its path.

    out: where to write it (atomically); None = the conversion cache
      (``$INSIGHTFACE_BFM_CACHE/mxnet`` or ``~/.cache/insightface_bfm/mxnet``), keyed on the files'
      bytes and the options, so training (``init: mxnet:...``), resumes and pack builds convert
      a checkpoint once. The file is what ``import_onnx`` fine-tunes and insightface loads.
    """
    symbol_path, params_path = checkpoint_files(spec)
    if out is None:
        from ..zoo.download import sha256_file

        files = "|".join(sha256_file(p) for p in (symbol_path, params_path))
        key = f"{CONVERTER_VERSION}|{output}|{input_size}|{files}"
        out = cache_dir() / f"{params_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
        if out.is_file():
            return out
    out = Path(out)
    if out.is_dir():
        raise PackError(f"{out}: is a directory; give the ONNX file to write")
    model = mxnet_to_onnx(symbol_path, params_path, output=output, input_size=input_size)
    atomic_write_bytes(out, model.SerializeToString())
    log.info("converted %s + %s to %s", symbol_path, params_path, out)
    return out


def cache_dir() -> Path:
    root = os.environ.get("INSIGHTFACE_BFM_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "insightface_bfm"
    return Path(root) / "mxnet"


def _run_once(model: onnx.ModelProto, source, input_size: int) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: np.zeros((2, 3, input_size, input_size), np.float32)})
    except Exception as e:  # ORT's own errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PackError(f"{source}: ONNX Runtime cannot run the converted graph ({first})") from None


# --------------------------------------------------------------------------- the graph builder


class _Builder:
    def __init__(self, symbol: MxSymbol, params: dict[str, np.ndarray], params_path: Path, input_size: int):
        self.symbol = symbol
        self.params = params
        self.params_path = params_path
        self.input_size = input_size
        self.nodes: list[onnx.NodeProto] = []
        self.outputs: set[str] = {INPUT_NAME}
        self.initializers: dict[str, np.ndarray] = {}
        self.values: dict[tuple[int, int], _Tensor] = {}
        self.conv_input_scale: dict[int, float] = {}  # conv node index -> scale folded into its weight
        self.normalisation = "none"
        self.output_name = ""
        self.embedding_size = 0

    # ---- helpers the operator handlers use

    def fail(self, node: MxNode, what: str) -> PackError:
        return PackError(f"{self.symbol.source}: node {node.name!r} ({node.op}): {what}")

    def const(self, base: str, array) -> str:
        """An initializer holding ``array``, under ``base`` or a fresh name when that one is taken."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name, n = base, 1
        while name in self.initializers and not (self.initializers[name].dtype == array.dtype
                                                 and np.array_equal(self.initializers[name], array)):
            n += 1
            name = f"{base}_{n}"
        self.initializers[name] = array
        return name

    def param(self, node: MxNode, slot: int) -> np.ndarray:
        """The stored value of ``node``'s input ``slot`` (a weight variable), in float32."""
        if slot >= len(node.inputs):
            raise self.fail(node, f"has {len(node.inputs)} inputs, expected a weight in slot {slot}")
        source = self.symbol.nodes[node.inputs[slot][0]]
        if source.op != "null":
            raise self.fail(node, f"input {slot} comes from node {source.name!r} ({source.op}); only stored "
                                  f"weights are supported there")
        if source.name not in self.params:
            raise self.fail(node, f"weight {source.name!r} is missing from {self.params_path}")
        value = self.params[source.name]
        if value.dtype.kind != "f":
            raise self.fail(node, f"weight {source.name!r} is {value.dtype}, not a float array")
        return value.astype(np.float32)

    def weight_name(self, node: MxNode, slot: int) -> str:
        return self.symbol.nodes[node.inputs[slot][0]].name

    def input(self, node: MxNode, slot: int = 0) -> _Tensor:
        if slot >= len(node.inputs):
            raise self.fail(node, f"has {len(node.inputs)} inputs, expected at least {slot + 1}")
        entry = node.inputs[slot]
        if entry in self.values:
            return self.values[entry]
        source = self.symbol.nodes[entry[0]]
        if source.op == "null" and source.name in self.params:  # a weight used as an operand
            value = self.param(node, slot)
            return _Tensor(self.const(source.name, value), tuple(value.shape))
        raise self.fail(node, f"input {slot} ({source.name!r}) has no value")

    def emit(self, op: str, inputs: list[str], name: str, shape: tuple, **attrs) -> _Tensor:
        output = f"{name}_output"
        if output in self.outputs:
            output = f"{name}_output_{len(self.nodes)}"
        self.outputs.add(output)
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return _Tensor(output, tuple(shape))

    # ---- the conversion

    def build(self, output: str | None) -> onnx.ModelProto:
        head = self._output_entry(output)
        needed = self._ancestors(head[0])
        data = self._data_variable(needed)
        batch_input = _Tensor(INPUT_NAME, (None, 3, self.input_size, self.input_size))
        self._fold_normalisation(data, needed, batch_input)
        for node in self.symbol.nodes:
            if node.index not in needed or node.op == "null" or (node.index, 0) in self.values:
                continue  # (the nodes of the input chain have their value already)
            handler = OPERATORS.get(node.op)
            if node.op in PASS_THROUGH:
                handler = _pass_through
            if handler is None:
                raise PackError(
                    f"{self.symbol.source}: operator {node.op!r} (node {node.name!r}) is not supported by "
                    f"the mxnet converter; supported: {', '.join(supported_operators())}")
            result = handler(self, node)
            for i, tensor in enumerate(result if isinstance(result, list) else [result]):
                self.values[(node.index, i)] = tensor
        if head not in self.values:
            raise PackError(f"{self.symbol.source}: output {self.output_name!r} has no value")
        result = self.values[head]
        if len(result.shape) != 2 or result.shape[1] is None:
            raise PackError(f"{self.symbol.source}: output {self.output_name!r} has shape "
                            f"{_show(result.shape)}; a recogniser's embedding is [batch, D] (choose another "
                            f"output)")
        self.embedding_size = int(result.shape[1])
        if result.name == INPUT_NAME:
            raise PackError(f"{self.symbol.source}: output {self.output_name!r} is the input itself")
        self._rename(result.name, OUTPUT_NAME)
        self._router_safe_names()
        used = {i for n in self.nodes for i in n.input}
        inits = [numpy_helper.from_array(v, k) for k, v in self.initializers.items() if k in used]
        graph = helper.make_graph(
            self.nodes, Path(self.symbol.source).name.removesuffix(".json"),
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, self.input_size,
                                                                           self.input_size])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", self.embedding_size])],
            inits)
        # IR 8 (opset 17's): the newest onnx writes a newer IR than older ONNX Runtimes (>= 1.17) read
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                                  producer_name="insightface-bfm", producer_version=__version__)
        model.doc_string = f"converted from mxnet {self.symbol.source}: {INPUT_DESCRIPTION} -> embedding"
        return model

    def _output_entry(self, output: str | None) -> tuple[int, int]:
        nodes = self.symbol.nodes
        if output is not None:
            base = output.removesuffix("_output")
            node = self.symbol.find(base) or self.symbol.find(output)
            if node is None or node.op == "null":
                raise PackError(f"{self.symbol.source}: no operator node named {output!r} to take as output")
            self.output_name = f"{node.name}_output"
            return node.index, 0
        head = self.symbol.heads[0]
        if len(self.symbol.heads) == 1 and nodes[head[0]].op not in LOSS_OPS:
            self.output_name = f"{nodes[head[0]].name}_output"
            return head
        fc1 = self.symbol.find("fc1")
        if fc1 is not None and fc1.op != "null":
            self.output_name = "fc1_output"
            return fc1.index, 0
        while nodes[head[0]].op in LOSS_OPS:
            head = nodes[head[0]].inputs[0]
        self.output_name = f"{nodes[head[0]].name}_output"
        return head

    def _ancestors(self, index: int) -> set[int]:
        seen, stack = set(), [index]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            stack.extend(j for j, _ in self.symbol.nodes[i].inputs)
        return seen

    def _data_variable(self, needed: set[int]) -> MxNode:
        free = [self.symbol.nodes[i] for i in sorted(needed)
                if self.symbol.nodes[i].op == "null" and self.symbol.nodes[i].name not in self.params]
        if len(free) == 1:
            return free[0]
        if not free:
            raise PackError(f"{self.symbol.source}: every variable of the graph has a value in "
                            f"{self.params_path}; no image input is left")
        data = next((n for n in free if n.name == "data"), free[0])
        missing = [n.name for n in free if n is not data]
        users = [u.name for u in self.symbol.consumers().get(self.symbol.find(missing[0]).index, [])]
        raise PackError(f"{self.params_path}: parameter {missing[0]!r} (input of {users[0]!r}) is missing; "
                        f"{len(missing)} variable(s) besides {data.name!r} have no stored value")

    def _fold_normalisation(self, data: MxNode, needed: set[int], x: _Tensor) -> None:
        """Fold the symbol's leading scalar chain with y -> 127.5 y + 127.5 into one map of the input.

        The chain may hold identities (fresnet opens with ``identity``, then ``- 127.5``, ``* 0.0078125``)."""
        users = {i: [u for u in us if u.index in needed] for i, us in self.symbol.consumers().items()}
        scale, shift, cur, chain = 1.0, 0.0, data.index, []
        while len(users.get(cur, [])) == 1:
            node = users[cur][0]
            if node.inputs[0] != (cur, 0):
                break
            if node.op in _AFFINE:
                try:
                    a, b = _AFFINE[node.op](node.number("scalar"))
                except ZeroDivisionError:
                    raise self.fail(node, "divides by a scalar of 0") from None
                scale, shift = a * scale, a * shift + b
            elif node.op not in PASS_THROUGH or node.text("dtype", "float32") not in _FLOAT_TYPES:
                break
            chain.append(node)
            cur = node.index
        # the graph wants scale * pixels + shift, with pixels = 127.5 y + 127.5
        a, b = scale * 127.5, scale * 127.5 + shift
        if abs(b) < 1e-12 * max(1.0, abs(a)):
            b = 0.0
        folded = " ".join(f"{n.op}({n.attrs.get('scalar')})" for n in chain if n.op in _AFFINE)
        folded = folded or "none (raw 0..255 RGB assumed)"
        self.normalisation = f"symbol's input chain: {folded}; converted input y = (x - 127.5) / 127.5, " \
                             f"graph input = {a:.9g} * y + {b:.9g}"
        consumers = users.get(cur, [])
        if b == 0.0 and a != 1.0 and len(consumers) == 1 and consumers[0].op == "Convolution" and (
                consumers[0].inputs[0] == (cur, 0)):
            self.conv_input_scale[consumers[0].index] = a
            self.normalisation += f" (the scale is folded into the weights of {consumers[0].name!r})"
        else:
            if a != 1.0:
                x = self.emit("Mul", [x.name, self.const("input_scale_value", np.float32(a))], "input_scale",
                              x.shape)
            if b != 0.0:
                x = self.emit("Add", [x.name, self.const("input_shift_value", np.float32(b))], "input_shift",
                              x.shape)
        for index in [data.index] + [n.index for n in chain]:
            self.values[(index, 0)] = x  # only the chain's last value is read: its only user is the next

    def _rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new

    def _router_safe_names(self) -> None:
        """insightface's ArcFaceONNX feeds raw pixels to a graph whose first 8 node names include
        both Sub*/_minus* and Mul*/_mul*; our graphs take normalised input, so never look like that."""
        first = self.nodes[:8]
        names = [n.name for n in first]
        if any(n.startswith(_ROUTER_SUB) for n in names) and any(n.startswith(_ROUTER_MUL) for n in names):
            for node in first:
                if node.name.startswith(_ROUTER_SUB + _ROUTER_MUL):
                    node.name = f"mx.{node.name}"


def supported_operators() -> list[str]:
    return sorted(set(OPERATORS) | set(PASS_THROUGH))


def _show(shape: tuple) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- operators
# Each takes (builder, mxnet node) and returns the output tensor (mxnet's defaults as documented
# for mxnet 1.x operators apply when an attribute is absent).

# scalar ops of the input chain: op(scalar) -> (a, b) of x -> a x + b
_AFFINE = {
    "_minus_scalar": lambda c: (1.0, -c),
    "_plus_scalar": lambda c: (1.0, c),
    "_mul_scalar": lambda c: (c, 0.0),
    "_div_scalar": lambda c: (1.0 / c, 0.0),
    "_rminus_scalar": lambda c: (-1.0, c),
}


_FLOAT_TYPES = ("float16", "float32", "float64", "bfloat16")


def _pass_through(b: _Builder, node: MxNode) -> _Tensor:
    if node.op in ("Cast", "amp_cast"):
        dtype = node.text("dtype", "float32")
        if dtype not in _FLOAT_TYPES:
            raise b.fail(node, f"a cast to {dtype} is not supported (only casts between float types)")
    return b.input(node, 0)


def _spatial(node: MxNode, key: str, rank: int, default: int) -> tuple[int, ...]:
    value = node.ints(key, ())
    return tuple(value) if value else (default,) * rank


def _convolution(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    kernel = node.ints("kernel")
    k = len(kernel)
    if len(x.shape) != k + 2:
        raise b.fail(node, f"a {k}-D kernel on an input of shape {_show(x.shape)}")
    layout = node.attrs.get("layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        raise b.fail(node, f"layout {layout} is not supported (channels first only)")
    stride, dilate, pad = (_spatial(node, "stride", k, 1), _spatial(node, "dilate", k, 1),
                           _spatial(node, "pad", k, 0))
    filters, groups = node.integer("num_filter"), node.integer("num_group", 1)
    channels = x.shape[1]
    weight = b.param(node, 1)
    expected = (filters, channels // groups, *kernel)
    if channels % groups or tuple(weight.shape) != expected:
        raise b.fail(node, f"weight {b.weight_name(node, 1)!r} has shape {tuple(weight.shape)}, expected "
                           f"{expected} for {channels} input channels in {groups} group(s)")
    if node.index in b.conv_input_scale:
        weight = weight * np.float32(b.conv_input_scale[node.index])
    inputs = [x.name, b.const(b.weight_name(node, 1), weight)]
    if not node.boolean("no_bias", False):
        bias = b.param(node, 2)
        if bias.size != filters:
            raise b.fail(node, f"bias has {bias.size} values for {filters} filters")
        inputs.append(b.const(b.weight_name(node, 2), bias.reshape(filters)))
    size = [(d + 2 * p - dl * (kk - 1) - 1) // s + 1
            for d, p, dl, kk, s in zip(x.shape[2:], pad, dilate, kernel, stride)]
    if min(size) < 1:
        raise b.fail(node, f"output size {size} from input {_show(x.shape)}")
    return b.emit("Conv", inputs, node.name, (x.shape[0], filters, *size), kernel_shape=list(kernel),
                  strides=list(stride), dilations=list(dilate), pads=list(pad) * 2, group=groups)


def _batch_norm(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    axis = node.integer("axis", 1)
    if axis not in (1, 1 - len(x.shape)):
        raise b.fail(node, f"axis={axis} is not supported (channels are axis 1)")
    gamma, beta, mean, var = (b.param(node, i) for i in range(1, 5))
    if node.boolean("fix_gamma", True):  # mxnet ignores the stored gamma then
        gamma = np.ones_like(gamma)
    names = [b.weight_name(node, i) for i in range(1, 5)]
    if node.boolean("fix_gamma", True):
        names[0] = f"{names[0]}_fixed"
    inputs = [x.name] + [b.const(n, v) for n, v in zip(names, (gamma, beta, mean, var))]
    return b.emit("BatchNormalization", inputs, node.name, x.shape, epsilon=node.number("eps", 1e-3),
                  momentum=node.number("momentum", 0.9))


_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus",
                "softsign": "Softsign"}


def _activation(b: _Builder, node: MxNode) -> _Tensor:
    kind = node.text("act_type")
    if kind not in _ACTIVATIONS:
        raise b.fail(node, f"act_type {kind!r} is not supported ({', '.join(_ACTIVATIONS)})")
    x = b.input(node, 0)
    return b.emit(_ACTIVATIONS[kind], [x.name], node.name, x.shape)


def _named_activation(onnx_op: str):
    return lambda b, node: b.emit(onnx_op, [b.input(node, 0).name], node.name, b.input(node, 0).shape)


def _leaky_relu(b: _Builder, node: MxNode) -> _Tensor:
    kind = node.text("act_type", "leaky")
    x = b.input(node, 0)
    if kind == "leaky":
        return b.emit("LeakyRelu", [x.name], node.name, x.shape, alpha=node.number("slope", 0.25))
    if kind == "rrelu":  # at inference, the mean of its random slope range
        alpha = (node.number("lower_bound", 0.125) + node.number("upper_bound", 0.334)) / 2
        return b.emit("LeakyRelu", [x.name], node.name, x.shape, alpha=alpha)
    if kind == "elu":
        return b.emit("Elu", [x.name], node.name, x.shape, alpha=node.number("slope", 0.25))
    if kind == "selu":  # mxnet's constants are ONNX's defaults
        return b.emit("Selu", [x.name], node.name, x.shape)
    if kind == "prelu":
        gamma = b.param(node, 1)
        if gamma.size == 1:
            slope = gamma.reshape(1)
        elif len(x.shape) >= 2 and gamma.size == x.shape[1]:
            slope = gamma.reshape((gamma.size,) + (1,) * (len(x.shape) - 2))  # per channel (axis 1)
        else:
            raise b.fail(node, f"{gamma.size} slopes for an input of shape {_show(x.shape)}")
        return b.emit("PRelu", [x.name, b.const(b.weight_name(node, 1), slope)], node.name, x.shape)
    raise b.fail(node, f"act_type {kind!r} is not supported (leaky, prelu, elu, selu, rrelu)")


def _broadcast(b: _Builder, node: MxNode, shapes: list[tuple]) -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise b.fail(node, f"shapes {' and '.join(_show(s) for s in shapes)} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _binary(onnx_op: str):
    def convert(b: _Builder, node: MxNode) -> _Tensor:
        x, y = b.input(node, 0), b.input(node, 1)
        return b.emit(onnx_op, [x.name, y.name], node.name, _broadcast(b, node, [x.shape, y.shape]))
    return convert


def _scalar(onnx_op: str, reverse: bool = False):
    def convert(b: _Builder, node: MxNode) -> _Tensor:
        x = b.input(node, 0)
        c = b.const(f"{node.name}_scalar", np.float32(node.number("scalar")))
        return b.emit(onnx_op, [c, x.name] if reverse else [x.name, c], node.name, x.shape)
    return convert


def _add_n(b: _Builder, node: MxNode) -> _Tensor:
    terms = [b.input(node, i) for i in range(len(node.inputs))]
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        name = node.name if i == len(terms) - 2 else f"{node.name}/{i}"
        total = b.emit("Add", [total.name, term.name], name, _broadcast(b, node, [total.shape, term.shape]))
    return total


def _flatten_shape(shape: tuple) -> tuple:
    rest = shape[1:]
    return (shape[0], None if None in rest else int(np.prod(rest, dtype=np.int64)))


def _fully_connected(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    hidden = node.integer("num_hidden")
    weight = b.param(node, 1)
    bias = None if node.boolean("no_bias", False) else b.param(node, 2).reshape(-1)
    if node.boolean("flatten", True):
        if len(x.shape) > 2:
            x = b.emit("Flatten", [x.name], f"{node.name}/flatten", _flatten_shape(x.shape), axis=1)
        features = x.shape[1]
    else:
        features = x.shape[-1]
    if tuple(weight.shape) != (hidden, features):
        raise b.fail(node, f"weight {b.weight_name(node, 1)!r} has shape {tuple(weight.shape)}, expected "
                           f"{(hidden, features)} for an input of shape {_show(x.shape)}")
    if bias is not None and bias.size != hidden:
        raise b.fail(node, f"bias has {bias.size} values for num_hidden={hidden}")
    if node.boolean("flatten", True):
        inputs = [x.name, b.const(b.weight_name(node, 1), weight)]
        if bias is not None:
            inputs.append(b.const(b.weight_name(node, 2), bias))
        return b.emit("Gemm", inputs, node.name, (x.shape[0], hidden), transB=1)
    shape = (*x.shape[:-1], hidden)  # over the last axis
    w = b.const(f"{b.weight_name(node, 1)}_transposed", weight.T.copy())
    if bias is None:
        return b.emit("MatMul", [x.name, w], node.name, shape)
    y = b.emit("MatMul", [x.name, w], f"{node.name}/matmul", shape)
    return b.emit("Add", [y.name, b.const(b.weight_name(node, 2), bias)], node.name, shape)


def _flatten(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    return b.emit("Flatten", [x.name], node.name, _flatten_shape(x.shape), axis=1)


def _pooling(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    kind = node.text("pool_type", "max")
    spatial = x.shape[2:]
    if kind not in ("max", "avg", "sum"):
        raise b.fail(node, f"pool_type {kind!r} is not supported (max, avg, sum)")
    layout = node.attrs.get("layout", "None")
    if layout not in ("None", "NCW", "NCHW", "NCDHW"):
        raise b.fail(node, f"layout {layout} is not supported (channels first only)")
    if node.boolean("global_pool", False):
        op = "GlobalMaxPool" if kind == "max" else "GlobalAveragePool"
        shape = (*x.shape[:2], *(1,) * len(spatial))
        if kind != "sum":
            return b.emit(op, [x.name], node.name, shape)
        mean = b.emit(op, [x.name], f"{node.name}/mean", shape)
        area = b.const(f"{node.name}_area", np.float32(np.prod(spatial)))
        return b.emit("Mul", [mean.name, area], node.name, shape)
    kernel = node.ints("kernel")
    k = len(kernel)
    if len(spatial) != k:
        raise b.fail(node, f"a {k}-D kernel on an input of shape {_show(x.shape)}")
    stride, pad = _spatial(node, "stride", k, 1), _spatial(node, "pad", k, 0)
    convention = node.text("pooling_convention", "valid")
    if convention not in ("valid", "full") or (kind == "sum" and convention == "full"):
        raise b.fail(node, f"pooling_convention={convention} is not supported for {kind} pooling")
    full = convention == "full"
    size = [(math.ceil if full else math.floor)((d + 2 * p - kk) / s) + 1
            for d, p, kk, s in zip(spatial, pad, kernel, stride)]
    shape = (*x.shape[:2], *size)
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) * 2, ceil_mode=int(full))
    if kind == "max":
        return b.emit("MaxPool", [x.name], node.name, shape, **attrs)
    include_pad = node.boolean("count_include_pad", True)
    if kind == "avg":
        return b.emit("AveragePool", [x.name], node.name, shape, count_include_pad=int(include_pad), **attrs)
    mean = b.emit("AveragePool", [x.name], f"{node.name}/mean", shape, count_include_pad=1, **attrs)
    area = b.const(f"{node.name}_area", np.float32(np.prod(kernel)))
    return b.emit("Mul", [mean.name, area], node.name, shape)


def _reshape(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    if not node.has("shape"):
        raise b.fail(node, "only the 'shape' form of Reshape is supported (not target_shape)")
    target = list(node.ints("shape"))
    src = list(x.shape)
    reverse = node.boolean("reverse", False)
    if reverse:
        if -4 in target:
            raise b.fail(node, "reverse=True with -4 is not supported")
        src, target = src[::-1], target[::-1]
    out, i, s, inferred = [], 0, 0, None
    try:
        while i < len(target):
            code = target[i]
            if code > 0:
                out.append(code)
                s += 1
            elif code == 0:
                out.append(src[s])
                s += 1
            elif code == -1:
                if inferred is not None:
                    raise b.fail(node, "more than one -1 in shape")
                inferred = len(out)
                out.append(1)
                s += 1
            elif code == -2:
                out.extend(src[s:])
                s = len(src)
            elif code == -3:
                d0, d1 = src[s], src[s + 1]
                out.append(None if None in (d0, d1) else d0 * d1)
                s += 2
            elif code == -4:
                d0, d1, d2 = src[s], target[i + 1], target[i + 2]
                if d0 is None:
                    raise b.fail(node, "-4 cannot split the batch dimension")
                d1 = d0 // d2 if d1 == -1 else d1
                d2 = d0 // d1 if d2 == -1 else d2
                out += [d1, d2]
                i += 2
                s += 1
            else:
                raise b.fail(node, f"shape code {code} is not a mxnet Reshape code")
            i += 1
    except IndexError:
        raise b.fail(node, f"shape {node.attrs['shape']} does not fit an input {_show(x.shape)}") from None
    if inferred is not None:
        known_src = int(np.prod([d for d in src if d is not None], dtype=np.int64))
        others = [d for j, d in enumerate(out) if d is not None and j != inferred]
        known_out = int(np.prod(others, dtype=np.int64))
        carries_batch = None in src and None not in out
        out[inferred] = None if carries_batch else known_src // max(known_out, 1)
    if reverse:
        out = out[::-1]
    if out.count(None) > 1:
        raise b.fail(node, f"the result {_show(tuple(out))} has two batch-dependent dimensions")
    onnx_shape = np.array([-1 if d is None else d for d in out], np.int64)
    return b.emit("Reshape", [x.name, b.const(f"{node.name}_shape", onnx_shape)], node.name, tuple(out))


def _concat(b: _Builder, node: MxNode) -> _Tensor:
    parts = [b.input(node, i) for i in range(len(node.inputs))]
    rank = len(parts[0].shape)
    axis = node.integer("dim", 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank:
        raise b.fail(node, f"dim={node.attrs.get('dim')} is not supported (not the batch axis)")
    shape = list(parts[0].shape)
    for p in parts[1:]:
        if len(p.shape) != rank or any(p.shape[j] != shape[j] for j in range(rank) if j != axis):
            raise b.fail(node, f"cannot concatenate {_show(p.shape)} with {_show(tuple(shape))}")
    shape[axis] = sum(p.shape[axis] for p in parts)
    return b.emit("Concat", [p.name for p in parts], node.name, tuple(shape), axis=axis)


def _clip(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    low = b.const(f"{node.name}_min", np.float32(node.number("a_min")))
    high = b.const(f"{node.name}_max", np.float32(node.number("a_max")))
    return b.emit("Clip", [x.name, low, high], node.name, x.shape)


def _slice_axis(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    axis = node.integer("axis")
    axis = axis + len(x.shape) if axis < 0 else axis
    if not 0 < axis < len(x.shape):
        raise b.fail(node, f"axis={axis} is not supported (not the batch axis)")
    size = x.shape[axis]
    begin = node.integer("begin")
    end = size if node.attrs.get("end", "None") == "None" else node.integer("end")
    begin, end = (begin + size if begin < 0 else begin), (end + size if end < 0 else end)
    if not 0 <= begin < end <= size:
        raise b.fail(node, f"begin={begin} end={end} outside axis {axis} of size {size}")
    shape = list(x.shape)
    shape[axis] = end - begin
    consts = [b.const(f"{node.name}_{k}", np.array([v], np.int64))
              for k, v in (("begin", begin), ("end", end), ("axis", axis))]
    return b.emit("Slice", [x.name, *consts], node.name, tuple(shape))


def _reduction(onnx_op: str):
    """``sum``/``mean``: mxnet's ``axis`` (absent: every axis, batch too), ``keepdims``, ``exclude``."""
    def convert(b: _Builder, node: MxNode) -> _Tensor:
        x = b.input(node, 0)
        rank = len(x.shape)
        axes = sorted({a + rank if a < 0 else a for a in node.ints("axis", ())}) or list(range(rank))
        if node.boolean("exclude", False):
            axes = [a for a in range(rank) if a not in axes]
        keep = node.boolean("keepdims", False)
        if keep:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        if onnx_op == "ReduceSum":  # opset 13+: axes as an input
            axes_input = b.const(f"{node.name}_axes", np.array(axes, np.int64))
            return b.emit(onnx_op, [x.name, axes_input], node.name, shape, keepdims=int(keep))
        return b.emit(onnx_op, [x.name], node.name, shape, axes=axes, keepdims=int(keep))
    return convert


def _square(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    return b.emit("Mul", [x.name, x.name], node.name, x.shape)


def _tile(b: _Builder, node: MxNode) -> _Tensor:
    x = b.input(node, 0)
    reps = list(node.ints("reps"))
    rank = max(len(x.shape), len(reps))
    if len(x.shape) < rank:
        raise b.fail(node, f"reps {tuple(reps)} has more axes than the input {_show(x.shape)}")
    reps = [1] * (rank - len(reps)) + reps  # mxnet pads reps with leading ones
    shape = tuple(None if d is None else d * r for d, r in zip(x.shape, reps))
    return b.emit("Tile", [x.name, b.const(f"{node.name}_reps", np.array(reps, np.int64))], node.name, shape)


OPERATORS = {
    "Convolution": _convolution,
    "BatchNorm": _batch_norm,
    "Activation": _activation,
    "relu": _named_activation("Relu"),
    "sigmoid": _named_activation("Sigmoid"),
    "tanh": _named_activation("Tanh"),
    "LeakyReLU": _leaky_relu,
    "FullyConnected": _fully_connected,
    "Flatten": _flatten,
    "flatten": _flatten,
    "Pooling": _pooling,
    "Reshape": _reshape,
    "reshape": _reshape,
    "Concat": _concat,
    "concat": _concat,
    "clip": _clip,
    "slice_axis": _slice_axis,
    "sum": _reduction("ReduceSum"),
    "mean": _reduction("ReduceMean"),
    "sqrt": _named_activation("Sqrt"),
    "square": _square,
    "exp": _named_activation("Exp"),
    "tile": _tile,
    "add_n": _add_n,
    "ElementWiseSum": _add_n,
    "_plus_scalar": _scalar("Add"),
    "_minus_scalar": _scalar("Sub"),
    "_rminus_scalar": _scalar("Sub", reverse=True),
    "_mul_scalar": _scalar("Mul"),
    "_div_scalar": _scalar("Div"),
    "_rdiv_scalar": _scalar("Div", reverse=True),
}
for _names, _op in ((("elemwise_add", "broadcast_add", "broadcast_plus", "_plus", "_Plus", "_add"), "Add"),
                    (("elemwise_sub", "broadcast_sub", "broadcast_minus", "_minus", "_Minus", "_sub"), "Sub"),
                    (("elemwise_mul", "broadcast_mul", "_mul", "_Mul"), "Mul"),
                    (("elemwise_div", "broadcast_div", "_div", "_Div"), "Div")):
    for _name in _names:
        OPERATORS[_name] = _binary(_op)
