"""Legacy MXNet checkpoints without mxnet: the .params reader, the symbol reader, the conversion of each
operator against a NumPy reference of mxnet's semantics, and the errors of bad input."""

import math
import struct

import mxnet_helpers as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.errors import PackError
from insightface_bfm.export import import_mxnet
from insightface_bfm.export.from_mxnet import checkpoint_files, parse_spec
from insightface_bfm.export.metadata import read_metadata
from insightface_bfm.export.mxnet_params import read_ndarrays, read_params
from insightface_bfm.export.mxnet_symbol import read_symbol

S = 9  # input size of the operator tests: odd, so pooling windows clip at the border


def run_onnx(path, pixels):
    """The converted file on pixels, fed as the package's convention: (x - 127.5) / 127.5."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": ((pixels - 127.5) / 127.5).astype(np.float32)})[0]


def pixels(n=2, size=S, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, size, size)).astype(np.float32)


def close(got, expected, tol=1e-4):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    scale = max(1.0, np.abs(expected).max())
    assert np.abs(got - expected).max() <= tol * scale, np.abs(got - expected).max()


# --------------------------------------------------------------------------- NumPy references


def conv_ref(x, w, b=None, stride=(1, 1), pad=(0, 0), dilate=(1, 1), groups=1):
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (h + 2 * pad[0] - dilate[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pad[1] - dilate[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, f, ho, wo))
    fg = f // groups
    for g in range(groups):
        xs, ws = xp[:, g * cg:(g + 1) * cg], w[g * fg:(g + 1) * fg]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilate[0], j * dilate[1]
                rows = slice(r0, r0 + stride[0] * (ho - 1) + 1, stride[0])
                cols = slice(c0, c0 + stride[1] * (wo - 1) + 1, stride[1])
                patch = xs[:, :, rows, cols]
                out[:, g * fg:(g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch, ws[:, :, i, j])
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def pool_ref(x, kind, kernel, stride, pad, full=False, include_pad=True):
    """mxnet's pooling kernels (src/operator/nn/pool.h): windows clipped to the padded input for the
    divisor of an average that counts padding, to the input otherwise."""
    h, w = x.shape[2:]
    rnd = math.ceil if full else math.floor
    ho = rnd((h + 2 * pad[0] - kernel[0]) / stride[0]) + 1
    wo = rnd((w + 2 * pad[1] - kernel[1]) / stride[1]) + 1
    out = np.zeros(x.shape[:2] + (ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            hs, ws = oh * stride[0] - pad[0], ow * stride[1] - pad[1]
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            if kind == "max":
                out[:, :, oh, ow] = win.max((2, 3))
            elif kind == "sum":
                out[:, :, oh, ow] = win.sum((2, 3))
            else:
                out[:, :, oh, ow] = win.sum((2, 3)) / (size if include_pad else (he - hs) * (we - ws))
    return out


def bn_ref(x, gamma, beta, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var, gamma, beta = (v.reshape(shape) for v in (mean, var, gamma, beta))
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def flat(x):
    return x.reshape(len(x), -1)


# --------------------------------------------------------------------------- operator cases
# Each builds a graph after insightface's input chain (the op sees z = (pixels - 127.5) / 128) and
# returns (head node, reference: z -> expected output).

RNG = np.random.default_rng(7)


def _w(*shape, scale=0.5):
    return RNG.uniform(-scale, scale, shape).astype(np.float32)


def _conv1x1(g, x, name, cin=3, cout=3):
    w = _w(cout, cin, 1, 1)
    node = g.op("Convolution", name, [x, g.var(f"{name}_weight", w)], kernel=(1, 1), num_filter=cout,
                no_bias=True)
    return node, lambda z: conv_ref(z, w)


def case_conv_dense(g):
    w, b = _w(4, 3, 3, 3), _w(4)
    c = g.op("Convolution", "conv", [g.x, g.var("conv_weight", w), g.var("conv_bias", b)], kernel=(3, 3),
             stride=(2, 2), pad=(1, 1), num_filter=4)
    return g.op("Flatten", "flat", [c]), lambda z: flat(conv_ref(z, w, b, (2, 2), (1, 1)))


def case_conv_grouped_dilated(g):
    c1, ref1 = _conv1x1(g, g.x, "expand", 3, 6)
    w = _w(6, 2, 3, 3)
    c2 = g.op("Convolution", "grouped", [c1, g.var("grouped_weight", w)], kernel=(3, 3), pad=(2, 2),
              dilate=(2, 2), num_filter=6, num_group=3, no_bias=True)
    return g.op("Flatten", "flat", [c2]), lambda z: flat(conv_ref(ref1(z), w, None, pad=(2, 2), dilate=(2, 2),
                                                                  groups=3))


def case_conv_depthwise(g):
    c1, ref1 = _conv1x1(g, g.x, "expand", 3, 6)
    w = _w(6, 1, 3, 3)
    c2 = g.op("Convolution", "dw", [c1, g.var("dw_weight", w)], kernel=(3, 3), stride=(2, 2), pad=(1, 1),
              num_filter=6, num_group=6, no_bias=True)
    return g.op("Flatten", "flat", [c2]), lambda z: flat(conv_ref(ref1(z), w, None, (2, 2), (1, 1), groups=6))


def _bn(g, x, name, fix_gamma=None, eps=None, **attrs):
    gamma, beta = RNG.uniform(0.5, 1.5, 3).astype(np.float32), _w(3)
    mean, var = _w(3), RNG.uniform(0.001, 0.01, 3).astype(np.float32)  # small: eps matters
    if fix_gamma is not None:
        attrs["fix_gamma"] = fix_gamma
    if eps is not None:
        attrs["eps"] = eps
    node = g.op("BatchNorm", name, [x, g.var(f"{name}_gamma", gamma), g.var(f"{name}_beta", beta),
                                    g.var(f"{name}_moving_mean", mean, aux=True),
                                    g.var(f"{name}_moving_var", var, aux=True)], **attrs)
    used_gamma = np.ones(3, np.float32) if fix_gamma in (None, True) else gamma
    return node, lambda z: bn_ref(z, used_gamma, beta, mean, var, 1e-3 if eps is None else eps)


def case_batchnorm_defaults(g):  # fix_gamma defaults to True (stored gamma ignored), eps to 1e-3
    node, ref = _bn(g, g.x, "bn")
    return g.op("Flatten", "flat", [node]), lambda z: flat(ref(z))


def case_batchnorm_explicit(g):
    node, ref = _bn(g, g.x, "bn", fix_gamma=False, eps=2e-5, use_global_stats=True, momentum=0.9)
    return g.op("Flatten", "flat", [node]), lambda z: flat(ref(z))


def case_batchnorm_on_features(g):  # insightface's fc1: BatchNorm on the [batch, D] embedding
    f = g.op("Flatten", "flat", [g.x])
    gamma, beta, mean, var = _w(3 * S * S) + 1, _w(3 * S * S), _w(3 * S * S), RNG.uniform(0.5, 2, 3 * S * S)
    node = g.op("BatchNorm", "fc1", [f, g.var("g", gamma), g.var("b", beta), g.var("m", mean, aux=True),
                                     g.var("v", var.astype(np.float32), aux=True)], fix_gamma=True, eps=2e-5)
    return node, lambda z: bn_ref(flat(z), np.ones_like(gamma), beta, mean, var.astype(np.float32), 2e-5)


ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0), "sigmoid": sigmoid, "tanh": np.tanh,
               "softrelu": lambda z: np.log1p(np.exp(z)), "softsign": lambda z: z / (1 + np.abs(z))}


def case_activation(kind):
    def build(g):
        c, ref = _conv1x1(g, g.x, "c")
        a = g.op("Activation", "act", [c], act_type=kind)
        return g.op("Flatten", "flat", [a]), lambda z: flat(ACTIVATIONS[kind](ref(z)))
    return build


def case_prelu(g):
    gamma = RNG.uniform(0.1, 0.3, 3).astype(np.float32)
    a = g.op("LeakyReLU", "relu", [g.x, g.var("relu_gamma", gamma)], act_type="prelu")
    return g.op("Flatten", "flat", [a]), lambda z: flat(np.where(z > 0, z, z * gamma.reshape(1, 3, 1, 1)))


def case_leaky_kinds(g):
    x1 = g.op("LeakyReLU", "leaky", [g.x], act_type="leaky", slope=0.1)
    x2 = g.op("LeakyReLU", "elu", [x1], act_type="elu", slope=0.3)
    x3 = g.op("LeakyReLU", "rrelu", [x2], act_type="rrelu")
    x4 = g.op("LeakyReLU", "default", [x3])  # act_type leaky, slope 0.25
    x5 = g.op("LeakyReLU", "selu", [x4], act_type="selu")

    def ref(z):
        z = np.where(z > 0, z, 0.1 * z)
        z = np.where(z > 0, z, 0.3 * (np.exp(z) - 1))
        z = np.where(z > 0, z, (0.125 + 0.334) / 2 * z)
        z = np.where(z > 0, z, 0.25 * z)
        return 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * (np.exp(z) - 1))
    return g.op("Flatten", "flat", [x5]), lambda z: flat(ref(z))


BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def case_binary(op):
    def build(g):
        c, ref_c = _conv1x1(g, g.x, "c")
        s = g.op("Activation", "sig", [c], act_type="sigmoid")
        d = g.op("_plus_scalar", "shifted", [s], scalar=0.5)  # in (0.5, 1.5): safe divisor
        y = g.op(op, "binary", [g.x, d])
        if op.startswith("broadcast"):  # SE-style: a [B,C,1,1] gate over [B,C,H,W]
            p = g.op("Pooling", "gap", [d], global_pool=True, pool_type="avg", kernel=(1, 1))
            y = g.op(op, "binary2", [y, p])
            w = _w(1, 3, 1, 1)
            y = g.op(op, "binary3", [y, g.var("gain", w)])
        fn = BINARY[op.split("_")[1]]

        def ref(z):
            dz = sigmoid(ref_c(z)) + 0.5
            out = fn(z, dz)
            if op.startswith("broadcast"):
                out = fn(fn(out, dz.mean((2, 3), keepdims=True)), w)
            return flat(out)
        return g.op("Flatten", "flat", [y]), ref
    return build


def case_scalars(g):
    c, ref_c = _conv1x1(g, g.x, "c")
    x = g.op("_plus_scalar", "p", [c], scalar=0.5)
    x = g.op("_minus_scalar", "m", [x], scalar=0.25)
    x = g.op("_rminus_scalar", "rm", [x], scalar=1.0)
    x = g.op("_mul_scalar", "mu", [x], scalar=3.0)
    x = g.op("_div_scalar", "d", [x], scalar=4.0)
    s = g.op("Activation", "s", [x], act_type="sigmoid")
    x = g.op("_rdiv_scalar", "rd", [s], scalar=2.0)
    return g.op("Flatten", "flat", [x]), lambda z: flat(2 / sigmoid((1 - (ref_c(z) + 0.5 - 0.25)) * 3 / 4))


def case_fully_connected(g):
    w1, b1 = _w(5, 3 * S * S, scale=0.05), _w(5)
    fc = g.op("FullyConnected", "pre_fc1", [g.x, g.var("pre_fc1_weight", w1), g.var("pre_fc1_bias", b1)],
              num_hidden=5)  # flatten=True by default: the 4-D input is flattened first
    w2 = _w(4, 5)
    fc2 = g.op("FullyConnected", "fc2", [fc, g.var("fc2_weight", w2)], num_hidden=4, no_bias=True)
    return fc2, lambda z: (flat(z) @ w1.T + b1) @ w2.T


def case_fully_connected_no_flatten(g):
    w, b = _w(4, S), _w(4)
    fc = g.op("FullyConnected", "fc", [g.x, g.var("fc_weight", w), g.var("fc_bias", b)], num_hidden=4,
              flatten=False)  # over the last axis: [B,3,S,S] -> [B,3,S,4]
    return g.op("Flatten", "flat", [fc]), lambda z: flat(z @ w.T + b)


POOLS = {
    "global_avg": (dict(global_pool=True, pool_type="avg", kernel=(3, 3)),
                   lambda z: z.mean((2, 3), keepdims=True)),
    "global_max": (dict(global_pool=True, kernel=(1, 1)), lambda z: z.max((2, 3), keepdims=True)),
    "global_sum": (dict(global_pool="1", pool_type="sum", kernel=(1, 1)),
                   lambda z: z.sum((2, 3), keepdims=True)),
    "max_valid_pad": (dict(kernel=(3, 3), stride=(2, 2), pad=(1, 1)),
                      lambda z: pool_ref(z, "max", (3, 3), (2, 2), (1, 1))),
    "max_full": (dict(kernel=(2, 2), stride=(2, 2), pooling_convention="full"),
                 lambda z: pool_ref(z, "max", (2, 2), (2, 2), (0, 0), full=True)),
    "avg_full_count_pad": (dict(pool_type="avg", kernel=(2, 2), stride=(2, 2), pooling_convention="full"),
                           lambda z: pool_ref(z, "avg", (2, 2), (2, 2), (0, 0), full=True)),
    "avg_full_pad_count_pad": (dict(pool_type="avg", kernel=(3, 3), stride=(2, 2), pad=(1, 1),
                                    pooling_convention="full"),
                               lambda z: pool_ref(z, "avg", (3, 3), (2, 2), (1, 1), full=True)),
    "avg_full_no_count_pad": (dict(pool_type="avg", kernel=(2, 2), stride=(2, 2), pooling_convention="full",
                                   count_include_pad=False),
                              lambda z: pool_ref(z, "avg", (2, 2), (2, 2), (0, 0), True, False)),
    "avg_valid_pad_no_count": (dict(pool_type="avg", kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                    count_include_pad=False),
                               lambda z: pool_ref(z, "avg", (3, 3), (1, 1), (1, 1), False, False)),
    "avg_valid_pad": (dict(pool_type="avg", kernel=(3, 3), stride=(2, 2), pad=(1, 1)),
                      lambda z: pool_ref(z, "avg", (3, 3), (2, 2), (1, 1))),
    "sum_valid": (dict(pool_type="sum", kernel=(2, 2), stride=(1, 1)),
                  lambda z: pool_ref(z, "sum", (2, 2), (1, 1), (0, 0))),
}


def case_pool(kind):
    def build(g):
        attrs, ref = POOLS[kind]
        p = g.op("Pooling", "pool", [g.x], **attrs)
        return g.op("Flatten", "flat", [p]), lambda z: flat(ref(z))
    return build


def case_pass_through(g):
    x = g.op("Dropout", "drop", [g.x], p=0.4)
    x = g.op("_copy", "copy", [x])
    x = g.op("BlockGrad", "bg", [x])
    x = g.op("identity", "id", [x])
    return g.op("Flatten", "flat", [x]), flat


def case_reshapes(g):
    a = g.op("Reshape", "r1", [g.x], shape=(0, -3, -2))  # [B,3S,S]
    b = g.op("Reshape", "r2", [a], shape=(0, -4, 3, -1, -2))  # [B,3,S,S]
    c = g.op("Reshape", "r3", [b], shape=(0, -1))  # [B,3SS]
    d = g.op("Reshape", "r4", [c], shape=(-1, 0), reverse=True)  # [B,3SS], inferred from the right
    e = g.op("reshape", "r5", [d], shape=(-1, 3, S * S))  # the batch folded into the inferred dim
    f = g.op("Reshape", "r6", [e], shape=(0, -1))
    return f, flat


def case_concat_slice_clip_add_n(g):
    c1, ref1 = _conv1x1(g, g.x, "a", 3, 2)
    cat = g.op("Concat", "cat", [g.x, c1], dim=1, num_args=2)  # 5 channels
    sl = g.op("slice_axis", "sl", [cat], axis=1, begin=1, end="None")  # 4 channels
    cl = g.op("clip", "cl", [sl], a_min=-0.5, a_max=0.5)
    total = g.op("add_n", "sum3", [cl, sl, cl], num_args=3)

    def ref(z):
        s = np.concatenate([z, ref1(z)], axis=1)[:, 1:]
        c = np.clip(s, -0.5, 0.5)
        return flat(c + s + c)
    return g.op("Flatten", "flat", [total]), ref


def case_fp16_symbol(g):  # insightface's fp16 training symbols cast around the network
    x = g.op("Cast", "to16", [g.x], dtype="float16")
    c, ref = _conv1x1(g, x, "c")
    y = g.op("Cast", "to32", [c], dtype="float32")
    return g.op("Flatten", "flat", [y]), lambda z: flat(ref(z))


def case_gnap_attention(g):  # symbol_utils' GNAP head: spatial norms over their mean, tiled, as weights
    sq = g.op("square", "sq", [g.x])
    norm = g.op("sqrt", "norm", [g.op("sum", "norm2", [sq], axis=1, keepdims=True)])
    mean = g.op("mean", "mean", [norm])  # no axis: every axis, the batch included (as the GNAP code)
    inverse = g.op("broadcast_div", "inverse", [mean, norm])
    weighted = g.op("elemwise_mul", "weighted", [g.x, g.op("tile", "tiled", [inverse], reps=(1, 3, 1, 1))])
    pooled = g.op("mean", "gap", [weighted], axis=(2, 3))
    summed = g.op("sum", "total", [g.op("exp", "e", [weighted])], axis=(0, 1), exclude=True)

    def ref(z):
        n = np.sqrt((z * z).sum(1, keepdims=True))
        w = z * np.tile(n.mean() / n, (1, 3, 1, 1))
        return w.mean((2, 3)) + np.exp(w).sum((2, 3)) / 100
    total = g.op("_div_scalar", "scaled", [summed], scalar=100)
    return g.op("elemwise_add", "fc1", [pooled, total]), ref


CASES = {
    "conv_dense": case_conv_dense, "conv_grouped_dilated": case_conv_grouped_dilated,
    "conv_depthwise": case_conv_depthwise, "batchnorm_defaults": case_batchnorm_defaults,
    "batchnorm_explicit": case_batchnorm_explicit, "batchnorm_on_features": case_batchnorm_on_features,
    **{f"activation_{k}": case_activation(k) for k in ACTIVATIONS},
    "prelu": case_prelu, "leaky_kinds": case_leaky_kinds,
    **{op: case_binary(op) for op in ("elemwise_add", "elemwise_sub", "elemwise_mul", "elemwise_div",
                                      "broadcast_add", "broadcast_sub", "broadcast_mul", "broadcast_div")},
    "scalars": case_scalars, "fully_connected": case_fully_connected,
    "fully_connected_no_flatten": case_fully_connected_no_flatten,
    **{f"pool_{k}": case_pool(k) for k in POOLS},
    "pass_through": case_pass_through, "reshapes": case_reshapes,
    "concat_slice_clip_add_n": case_concat_slice_clip_add_n, "fp16_symbol": case_fp16_symbol,
    "gnap_attention": case_gnap_attention,
}


@pytest.mark.parametrize("name", list(CASES))
def test_operator_matches_numpy_reference(tmp_path, name):
    g = mx.Graph()
    head, ref = CASES[name](g)
    spec = g.save(tmp_path, heads=[head])
    out = import_mxnet(spec, tmp_path / "m.onnx", input_size=S)
    x = pixels()
    close(run_onnx(out, x), ref((x.astype(np.float64) - 127.5) / 128))


@pytest.mark.parametrize("name", list(CASES))
def test_converted_operators_fine_tune_through_the_onnx_interpreter(tmp_path, name):
    """import_onnx (the path of init mxnet:) runs each converted graph in torch and checks it against ORT."""
    pytest.importorskip("torch")
    from insightface_bfm.export import import_onnx

    g = mx.Graph()
    head, _ = CASES[name](g)
    module = import_onnx(import_mxnet(g.save(tmp_path, heads=[head]), tmp_path / "m.onnx", input_size=S),
                         architecture="generic")  # raises when torch and ONNX Runtime disagree
    assert module.embedding_size > 0


# --------------------------------------------------------------------------- whole graphs


def _small_net(g, x=None, cout=4):
    """conv (bias) -> BN -> PReLU -> global pool -> FC 'fc1': a tiny recogniser; returns (node, reference)."""
    w, b = _w(cout, 3, 3, 3), _w(cout)
    weights = [g.var("conv0_weight", w), g.var("conv0_bias", b)]
    c = g.op("Convolution", "conv0", [g.x if x is None else x, *weights], kernel=(3, 3), pad=(1, 1),
             num_filter=cout)
    bn, bn_ref_fn = _bn(g, c, "bn0", fix_gamma=False, eps=2e-5) if cout == 3 else (c, lambda z: z)
    gamma = RNG.uniform(0.1, 0.3, cout).astype(np.float32)
    a = g.op("LeakyReLU", "relu0", [bn, g.var("relu0_gamma", gamma)], act_type="prelu")
    p = g.op("Pooling", "pool0", [a], global_pool=True, pool_type="avg", kernel=(7, 7))
    wf, bf = _w(5, cout), _w(5)
    fc = g.op("FullyConnected", "fc1", [p, g.var("fc1_weight", wf), g.var("fc1_bias", bf)], num_hidden=5)

    def ref(z):
        y = bn_ref_fn(conv_ref(z, w, b, pad=(1, 1)))
        y = np.where(y > 0, y, y * gamma.reshape(1, -1, 1, 1))
        return y.mean((2, 3)) @ wf.T + bf
    return fc, ref


def test_training_symbol_loses_its_softmax_and_gives_fc1(tmp_path):
    g = mx.Graph()
    fc1, ref = _small_net(g)
    w7 = _w(10, 5)
    fc7 = g.op("FullyConnected", "fc7", [fc1, g.var("fc7_weight", w7)], num_hidden=10, no_bias=True)
    label = len(g.nodes)
    g.nodes.append({"op": "null", "name": "softmax_label", "inputs": []})  # no stored value
    softmax = g.op("SoftmaxOutput", "softmax", [fc7, label], normalization="valid")
    spec = g.save(tmp_path, heads=[softmax])
    x = pixels()
    z = (x.astype(np.float64) - 127.5) / 128
    out = import_mxnet(spec, tmp_path / "fc1.onnx", input_size=S)
    close(run_onnx(out, x), ref(z))
    assert read_metadata(out)["mxnet_output"] == "fc1_output"
    # any named node can be the output instead (with or without mxnet's _output suffix)
    out = import_mxnet(spec, tmp_path / "fc7.onnx", output="fc7_output", input_size=S)
    close(run_onnx(out, x), ref(z) @ w7.T)
    # without a node fc1 the loss layer is dropped from the head
    g.nodes[fc1]["name"] = "embedding_fc"
    spec = g.save(tmp_path / "no_fc1", heads=[softmax])
    close(run_onnx(import_mxnet(spec, tmp_path / "head.onnx", input_size=S), x), ref(z) @ w7.T)


@pytest.mark.parametrize("chain, expected_nodes", [
    ([], ["Mul", "Add"]),  # no normalisation in the graph: it wanted raw pixels
    ([("_minus_scalar", 100.0), ("_div_scalar", 50.0)], ["Mul", "Add"]),
    ([("_minus_scalar", 127.5), ("_mul_scalar", 0.0078125)], []),  # folded into conv0's weights
])
def test_input_normalisation_is_folded(tmp_path, chain, expected_nodes):
    g = mx.Graph(normalise=False)
    for i, (op, value) in enumerate(chain):
        g.x = g.op(op, f"norm{i}", [g.x], scalar=value)
    fc1, ref = _small_net(g)
    out = import_mxnet(g.save(tmp_path), tmp_path / "m.onnx", input_size=S)
    x = pixels()
    z = x.astype(np.float64)
    for op, value in chain:
        z = z - value if op == "_minus_scalar" else (z * value if op == "_mul_scalar" else z / value)
    close(run_onnx(out, x), ref(z))
    model = onnx.load(str(out))
    before_conv = [n.op_type for n in model.graph.node[:[n.op_type for n in model.graph.node].index("Conv")]]
    assert before_conv == expected_nodes
    assert "graph input =" in read_metadata(out)["input_normalisation"]


def test_insightface_never_mistakes_a_converted_graph_for_a_pixel_model(tmp_path):
    """ArcFaceONNX feeds raw pixels when the first 8 node names hold Sub*/_minus* and Mul*/_mul*."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    g = mx.Graph(normalise=False)
    c, ref = _conv1x1(g, g.x, "c", 3, 3)
    m = g.op("_minus_scalar", "_minusscalar0", [c], scalar=1.0)  # scalar ops, but not at the input
    m = g.op("_mul_scalar", "_mulscalar0", [m], scalar=2.0)
    p = g.op("Pooling", "gap", [m], global_pool=True, pool_type="avg", kernel=(1, 1))
    head = g.op("Flatten", "fc1", [p])
    out = import_mxnet(g.save(tmp_path), tmp_path / "m.onnx")
    model = get_model(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX) and model.input_mean == 127.5 and model.input_std == 127.5
    x = pixels(size=112)
    close(run_onnx(out, x), flat(((ref(x.astype(np.float64)) - 1) * 2).mean((2, 3), keepdims=True)))
    names = [n.name for n in onnx.load(str(out)).graph.node]
    assert "mx._minusscalar0" in names and "mx._mulscalar0" in names and head == len(g.nodes) - 1


@pytest.mark.parametrize("version", ["v2", "v3", "v1", "legacy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_params_versions_and_dtypes_convert_alike(tmp_path, version, dtype):
    g = mx.Graph()
    fc1, ref = _small_net(g, cout=3)
    for table in (g.arg, g.aux):  # round in place to the values the file will hold (the reference sees them)
        for v in table.values():
            v[...] = v.astype(dtype).astype(np.float32)
    spec = g.save(tmp_path, version=version, dtype=dtype)
    arg, aux = read_params(checkpoint_files(spec)[1])
    assert {a.dtype for a in arg.values()} == {np.dtype(dtype)}
    assert set(aux) == {"bn0_moving_mean", "bn0_moving_var"}
    x = pixels()
    close(run_onnx(import_mxnet(spec, tmp_path / "m.onnx", input_size=S), x),
          ref((x.astype(np.float64) - 127.5) / 128))


# --------------------------------------------------------------------------- the .params reader


def test_reader_handles_every_header_and_the_empty_cases(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, -2], np.float16),
              np.zeros((0, 4), np.float64), np.array([[7]], np.int32), None]
    for version in ("v1", "v2", "legacy"):
        path = tmp_path / f"{version}.params"
        path.write_bytes(mx.pack_params(arrays, ["arg:a", "arg:b", "aux:c", "d", "arg:none"], version))
        got, names = read_ndarrays(path)
        assert names == ["arg:a", "arg:b", "aux:c", "d", "arg:none"] and got[4] is None
        for a, b in zip(arrays[:4], got[:4]):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        args, aux = read_params(path)
        assert set(args) == {"a", "b", "d"} and set(aux) == {"c"}  # bare names count as arguments
    # V3 (numpy shape semantics): ndim 0 is a scalar holding one value, ndim -1 the none array
    path = tmp_path / "v3.params"
    path.write_bytes(mx.pack_params([np.array(3.0, np.float32), None], version="v3"))
    got, names = read_ndarrays(path)
    assert names == [] and got[0].shape == () and got[0] == 3.0 and got[1] is None
    with pytest.raises(PackError, match="unnamed arrays, not a checkpoint"):
        read_params(path)
    # bfloat16 (type flag 12) widens to float32
    raw = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiiqiiiHH", 0xF993FAC9, 0, 1, 2, 1, 0, 12,
                                                         0x3FC0, 0xC000) + struct.pack("<Q", 0)
    (tmp_path / "bf16.params").write_bytes(raw)
    assert read_ndarrays(tmp_path / "bf16.params")[0][0].tolist() == [1.5, -2.0]


def test_reader_on_the_real_mxnet_file(shared):
    path = shared("data", "mxnet_models", "mobilefacenet", "model-0000.params")
    arrays, names = read_ndarrays(path)
    assert len(arrays) == 284 and sum(a.size for a in arrays) == 1_022_848
    assert names[0] == "arg:conv_1_conv2d_weight" and arrays[0].shape == (64, 3, 3, 3)
    args, aux = read_params(path)
    assert len(args) == 184 and len(aux) == 100 and all(a.dtype == np.float32 for a in arrays)


def _one_line(message: str) -> str:
    assert "\n" not in message
    return message


def test_truncated_and_foreign_params_are_one_line_errors(tmp_path, shared):
    data = shared("data", "mxnet_models", "mobilefacenet", "model-0000.params").read_bytes()
    for cut in (5, 30, 2_000_000, len(data) - 3):
        bad = tmp_path / f"cut{cut}.params"
        bad.write_bytes(data[:cut])
        with pytest.raises(PackError, match=f"cut{cut}.params: truncated mxnet params file") as e:
            read_ndarrays(bad)
        _one_line(str(e.value))
    foreign = tmp_path / "foreign.params"
    foreign.write_bytes(b"\x08\x07" + b"protobuf?" * 10)
    with pytest.raises(PackError, match="not an mxnet NDArray file"):
        read_ndarrays(foreign)
    sparse = tmp_path / "sparse.params"
    sparse.write_bytes(struct.pack("<QQQIi", 0x112, 0, 1, 0xF993FAC9, 1) + b"\0" * 64)
    with pytest.raises(PackError, match="array #0 is row_sparse; only dense"):
        read_ndarrays(sparse)
    with pytest.raises(PackError, match="mxnet params file not found"):
        read_ndarrays(tmp_path / "absent.params")


# --------------------------------------------------------------------------- errors of the converter


def test_symbol_reader_accepts_old_files_and_refuses_foreign_ones(tmp_path):
    old = tmp_path / "old-symbol.json"
    old.write_text('{"nodes": [{"op": "null", "name": "data", "inputs": []}, {"op": "Activation", '
                   '"name": "a", "param": {"act_type": "relu"}, "inputs": [[0, 0]]}], "heads": [[1, 0]]}')
    symbol = read_symbol(old)
    assert symbol.nodes[1].text("act_type") == "relu" and symbol.nodes[1].inputs == [(0, 0)]
    (tmp_path / "bad-symbol.json").write_text("[1, 2]")
    with pytest.raises(PackError, match="not an mxnet symbol file"):
        read_symbol(tmp_path / "bad-symbol.json")
    (tmp_path / "cycle-symbol.json").write_text(
        '{"nodes": [{"op": "relu", "name": "r", "inputs": [[0, 0]]}], "heads": [[0, 0]]}')
    with pytest.raises(PackError, match="is not \\[earlier node, slot\\]"):
        read_symbol(tmp_path / "cycle-symbol.json")
    # malformed lists are one-line errors, not a TypeError from iterating an int
    (tmp_path / "heads-symbol.json").write_text('{"nodes": [], "heads": 5}')
    with pytest.raises(PackError, match="not an mxnet symbol file"):
        read_symbol(tmp_path / "heads-symbol.json")
    (tmp_path / "inputs-symbol.json").write_text(
        '{"nodes": [{"op": "null", "name": "data", "inputs": 3}], "heads": [[0, 0]]}')
    with pytest.raises(PackError, match="node 'data': 'inputs' is not a list"):
        read_symbol(tmp_path / "inputs-symbol.json")


def test_converter_errors_are_one_line_and_name_the_culprit(tmp_path):
    g = mx.Graph()
    fc1, _ = _small_net(g)
    spec = g.save(tmp_path / "ok")
    # a missing symbol file
    (tmp_path / "ok" / "model-symbol.json").rename(tmp_path / "ok" / "elsewhere.json")
    with pytest.raises(PackError, match="model-symbol.json: mxnet symbol file not found") as e:
        import_mxnet(spec, tmp_path / "m.onnx")
    _one_line(str(e.value))
    # an operator outside the list
    g = mx.Graph()
    odd = g.op("Correlation", "corr0", [g.x, g.x])
    spec = g.save(tmp_path / "odd", heads=[g.op("Flatten", "fc1", [odd])])
    with pytest.raises(PackError, match="operator 'Correlation' \\(node 'corr0'\\) is not supported") as e:
        import_mxnet(spec, tmp_path / "m.onnx")
    _one_line(str(e.value))
    # an unsupported attribute value
    g = mx.Graph()
    a = g.op("LeakyReLU", "act0", [g.x], act_type="gelu")
    spec = g.save(tmp_path / "gelu", heads=[g.op("Flatten", "fc1", [a])])
    with pytest.raises(PackError, match="node 'act0' \\(LeakyReLU\\): act_type 'gelu' is not supported"):
        import_mxnet(spec, tmp_path / "m.onnx")
    # a weight the params file lacks
    g = mx.Graph()
    fc1, _ = _small_net(g)
    del g.arg["conv0_bias"]
    with pytest.raises(PackError, match="parameter 'conv0_bias' \\(input of 'conv0'\\) is missing"):
        import_mxnet(g.save(tmp_path / "missing"), tmp_path / "m.onnx")
    # a weight of the wrong shape
    g = mx.Graph()
    fc1, _ = _small_net(g)
    g.arg["conv0_weight"] = g.arg["conv0_weight"][:, :2]
    with pytest.raises(PackError, match=r"'conv0_weight' has shape \(4, 2, 3, 3\), expected \(4, 3, 3, 3\)"):
        import_mxnet(g.save(tmp_path / "shape"), tmp_path / "m.onnx")
    # an output that is no embedding
    g = mx.Graph()
    head = g.op("Activation", "fc1", [g.x], act_type="relu")
    with pytest.raises(PackError, match="output 'fc1_output' has shape \\[batch, 3, 112, 112\\]"):
        import_mxnet(g.save(tmp_path / "map", heads=[head]), tmp_path / "m.onnx")
    # specs
    with pytest.raises(PackError, match="the epoch after ',' must be an integer"):
        parse_spec("mxnet:model,last")
    with pytest.raises(PackError, match="expected PREFIX\\[,EPOCH\\]"):
        parse_spec("mxnet:,0")
    assert parse_spec("mxnet:a/b/model,12") == ("a/b/model", 12)
    assert parse_spec("x/model") == ("x/model", None)


def test_epoch_defaults_to_the_newest_and_conversions_are_cached(tmp_path, monkeypatch):
    g = mx.Graph()
    fc1, _ = _small_net(g)
    g.save(tmp_path, epoch=3)
    g.save(tmp_path, epoch=12)
    assert checkpoint_files(str(tmp_path / "model"))[1].name == "model-0012.params"
    monkeypatch.setenv("INSIGHTFACE_BFM_CACHE", str(tmp_path / "cache"))
    first = import_mxnet(f"mxnet:{tmp_path / 'model'},3")
    assert first.parent == tmp_path / "cache" / "mxnet" and first.name.startswith("model-0003-")
    stamp = first.stat().st_mtime_ns
    assert import_mxnet(f"{tmp_path / 'model'},3") == first and first.stat().st_mtime_ns == stamp
    assert import_mxnet(f"{tmp_path / 'model'},12") != first


def test_cli_convert_errors_exit_2_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["convert", "mxnet", str(tmp_path / "nothing") + ",0",
                                       str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "nothing-symbol.json: mxnet symbol file not found" in result.output


# --------------------------------------------------------------------------- recipes: init mxnet:PREFIX,EPOCH


def _recipe(tmp_path, spec, embedding_size=5):
    return {
        "mode": "bfm",
        "model": {"backbone": "r18", "embedding_size": embedding_size, "s": 16.0, "m": 0.2,
                  "backbone_options": {"width": 0.0625, "layers": [1, 1, 1, 1]}},
        "data": {"path": "synthetic:4:2:0", "num_workers": 0},
        "optim": {"batch_size": 4, "epochs": 1, "lr": 0.01},
        "init": {"full": spec, "partial": spec, "freeze_full": True},
        "train": {"output": str(tmp_path / "run"), "log_every": 1, "progress": False, "max_steps": 1},
    }


def test_recipe_init_from_mxnet_trains_and_exports(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from insightface_bfm.data import open_dataset
    from insightface_bfm.export import OnnxGraphModule, export_checkpoint
    from insightface_bfm.train.recipe import Recipe
    from insightface_bfm.train.trainer import Trainer

    g = mx.Graph()
    w = _w(4, 3, 8, 8, scale=0.1)
    c = g.op("Convolution", "conv0", [g.x, g.var("conv0_weight", w)], kernel=(8, 8), stride=(8, 8),
             num_filter=4, no_bias=True)
    wf, bf = _w(5, 4 * 14 * 14, scale=0.05), _w(5)
    fc1 = g.op("FullyConnected", "fc1", [c, g.var("fc1_weight", wf), g.var("fc1_bias", bf)], num_hidden=5)
    spec = "mxnet:" + g.save(tmp_path / "mx", heads=[fc1])
    monkeypatch.setenv("INSIGHTFACE_BFM_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(Recipe.from_dict(_recipe(tmp_path, spec)), dataset=open_dataset("synthetic:4:2:0"))
    assert isinstance(trainer.model.partial, OnnxGraphModule)
    before = trainer.model.partial.fc1_weight.detach().clone()
    trainer.fit()
    assert not np.array_equal(before.numpy(), trainer.model.partial.fc1_weight.detach().numpy())
    written = export_checkpoint(tmp_path / "run", tmp_path / "onnx")
    x = pixels(size=112)
    z = (x.astype(np.float64) - 127.5) / 128
    close(run_onnx(written["full"], x), flat(conv_ref(z, w, stride=(8, 8))) @ wf.T + bf)  # E_F: frozen


def test_recipe_refuses_a_bad_mxnet_spec_in_one_line(tmp_path):
    from insightface_bfm.errors import RecipeError
    from insightface_bfm.train.recipe import Recipe

    with pytest.raises(RecipeError, match="'init.full': .*nowhere-symbol.json: mxnet symbol file not") as e:
        Recipe.from_dict(_recipe(tmp_path, f"mxnet:{tmp_path / 'nowhere'},0"))
    _one_line(str(e.value))
    with pytest.raises(RecipeError, match="'init.full': .*the epoch after ',' must be an integer"):
        Recipe.from_dict(_recipe(tmp_path, "mxnet:model,best"))


def _fresnet(g, channels=(4, 8, 16, 32), embedding=8):
    """insightface's fresnet (LResNet-IR, e.g. model-r100-ii) at one unit per stage: input version 1,
    residual_unit_v3, output 'E' (bn1, dropout, pre_fc1, fc1 with fix_gamma)."""
    def bn(x, name, size, fix_gamma=False):
        return g.op("BatchNorm", name, [x, g.var(f"{name}_gamma", RNG.uniform(0.5, 1.5, size)),
                                        g.var(f"{name}_beta", _w(size, scale=0.1)),
                                        g.var(f"{name}_moving_mean", _w(size, scale=0.1), aux=True),
                                        g.var(f"{name}_moving_var", RNG.uniform(0.5, 1.5, size), aux=True)],
                    fix_gamma=fix_gamma, eps=2e-5, momentum=0.9)

    def conv(x, name, cin, cout, k, stride):
        w = RNG.normal(0, math.sqrt(2 / (cin * k * k)), (cout, cin, k, k))
        return g.op("Convolution", name, [x, g.var(f"{name}_weight", w)], kernel=(k, k),
                    stride=(stride, stride), pad=(k // 2,) * 2, num_filter=cout, no_bias=True, workspace=256)

    def prelu(x, name, size):
        return g.op("LeakyReLU", name, [x, g.var(f"{name}_gamma", np.full(size, 0.25))], act_type="prelu")

    x = g.op("_copy", "id", [g.x])  # data = identity(data); data = data - 127.5; data = data * 0.0078125
    x = g.op("_minus_scalar", "_minusscalar0", [x], scalar=127.5)
    x = g.op("_mul_scalar", "_mulscalar0", [x], scalar=0.0078125)
    x = prelu(bn(conv(x, "conv0", 3, channels[0], 3, 1), "bn0", channels[0]), "relu0", channels[0])
    cin = channels[0]
    for stage, cout in enumerate(channels, start=1):
        name = f"stage{stage}_unit1"
        body = bn(x, f"{name}_bn1", cin)
        body = bn(conv(body, f"{name}_conv1", cin, cout, 3, 1), f"{name}_bn2", cout)
        body = prelu(body, f"{name}_relu1", cout)
        body = bn(conv(body, f"{name}_conv2", cout, cout, 3, 2), f"{name}_bn3", cout)
        shortcut = bn(conv(x, f"{name}_conv1sc", cin, cout, 1, 2), f"{name}_sc", cout)
        x, cin = g.op("elemwise_add", f"_plus{stage}", [body, shortcut]), cout
    x = g.op("Dropout", "dropout0", [bn(x, "bn1", cin)], p=0.4)
    x = g.op("FullyConnected", "pre_fc1", [x, g.var("pre_fc1_weight", _w(embedding, cin * 49, scale=0.05)),
                                           g.var("pre_fc1_bias", _w(embedding))], num_hidden=embedding)
    return bn(x, "fc1", embedding, fix_gamma=True)


def test_an_lresnet_checkpoint_fine_tunes_as_our_iresnet(tmp_path):
    """A converted fresnet maps onto insightface_bfm.nets.IResNet (so init mxnet: with model.backbone r100
    fine-tunes model-r100-ii as our own network), reproducing ONNX Runtime."""
    pytest.importorskip("torch")
    import torch

    from insightface_bfm.export import import_onnx
    from insightface_bfm.nets import IResNet

    g = mx.Graph(normalise=False)
    head = _fresnet(g)
    out = import_mxnet(g.save(tmp_path, heads=[head]), tmp_path / "r.onnx")
    assert onnx.load(str(out)).graph.node[0].op_type == "Conv"  # identity + normalisation folded into conv0
    module = import_onnx(out)  # checks itself against ONNX Runtime, else falls back to the generic graph
    assert isinstance(module, IResNet), module.bfm_architecture
    assert module.bfm_architecture == {"backbone": "r50", "embedding_size": 8, "width": 4 / 64,
                                       "layers": (1, 1, 1, 1)}
    x = pixels(size=112)
    with torch.no_grad():
        got = module(torch.from_numpy((x - 127.5) / 127.5)).numpy()
    close(got, run_onnx(out, x))
