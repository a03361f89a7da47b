"""train.onnxruntime_frozen_layers: an imported graph's frozen first layers through ONNX Runtime
while training on a CPU give torch's activations and gradients (train/frozen_prefix.py)."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from insightface_bfm.export import OnnxGraphModule
from insightface_bfm.train.frozen_prefix import FrozenPrefix, attach
from insightface_bfm.train.model import BFMModel, initialise
from insightface_bfm.train.recipe import Recipe

torch.set_num_threads(1)


def _graph(batch_norm_at: int | None = None) -> onnx.ModelProto:
    """x -> [conv -> relu] x 3 -> global pool -> flatten -> gemm; a BatchNormalization after the
    conv number ``batch_norm_at`` if given; a skip connection across the second block."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for k, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 16)]):
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1],
                                      strides=[2, 2] if k != 1 else [1, 1]))
        out = f"c{k}"
        if batch_norm_at == k:
            inits += [numpy_helper.from_array(np.full(cout, v, np.float32), f"bn{k}_{n}")
                      for n, v in (("s", 1.2), ("b", 0.1), ("m", 0.05), ("v", 0.9))]
            stats = [f"bn{k}_{n}" for n in "sbmv"]
            nodes.append(helper.make_node("BatchNormalization", [out, *stats], [f"n{k}"]))
            out = f"n{k}"
        nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
        prev = f"r{k}"
        if k == 1:  # a residual: the first block's output is read after the second
            nodes.append(helper.make_node("Add", ["r0", "r1"], ["skip"]))
            prev = "skip"
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, (6, 16)).astype(np.float32), "fc")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _frozen_up_to(module, last_frozen: str) -> None:
    """Freeze every weight up to and including ``last_frozen`` (in the order the graph reads them)."""
    frozen = True
    for name, param in module.named_parameters():
        param.requires_grad_(not frozen)
        if name == last_frozen:
            frozen = False


def _pair(batch_norm_at=None, last_frozen="b1"):
    """The same graph twice, frozen alike: one plain, one with its frozen prefix."""
    model = _graph(batch_norm_at)
    plain, fast = OnnxGraphModule(model).train(), OnnxGraphModule(model).train()
    for m in (plain, fast):
        _frozen_up_to(m, last_frozen)
    fast.frozen_prefix = FrozenPrefix.of(fast, threads=1)
    return plain, fast


def _grads(module, x):
    module.zero_grad(set_to_none=True)
    out = module(x)
    (out * torch.linspace(-1, 1, 6)).sum().backward()
    return out.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}


def test_the_prefix_gives_torchs_outputs_and_gradients_and_stops_at_the_first_trainable_weight(monkeypatch):
    plain, fast = _pair()
    prefix = fast.frozen_prefix
    # conv0, relu0, conv1, relu1 are frozen; the Add reads r0 and r1, so both cross the cut
    assert [n.op for n in fast._nodes[:prefix.cut]] == ["Conv", "Relu", "Conv", "Relu", "Add"]
    assert prefix.outputs == ["skip"]
    calls = []
    run = FrozenPrefix.__call__
    monkeypatch.setattr(FrozenPrefix, "__call__", lambda self, x: calls.append(len(x)) or run(self, x))
    x = torch.randn(5, 3, 16, 16)
    out_plain, g_plain = _grads(plain, x)
    out_fast, g_fast = _grads(fast, x)
    assert calls == [5]
    torch.testing.assert_close(out_fast, out_plain, atol=1e-5, rtol=1e-5)
    assert g_fast.keys() == g_plain.keys() == {"w2", "b2", "fc"}
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], atol=1e-4, rtol=1e-4)
    # evaluation, or an input needing a gradient: torch all the way
    fast.eval()
    with torch.no_grad():
        fast(x)
    fast.train()
    fast(x.clone().requires_grad_())
    assert calls == [5]


def test_the_cut_stops_at_batch_normalization_and_follows_weights_changed_in_place():
    # a BatchNormalization in training mode uses the batch's statistics (and moves its own): never
    # in the prefix, even frozen
    plain, fast = _pair(batch_norm_at=1, last_frozen="bn1_b")
    assert fast._nodes[fast.frozen_prefix.cut].op == "BatchNormalization"
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    # a frozen weight overwritten in place (a checkpoint loaded): the prefix is rebuilt from it
    plain, fast = _pair()
    for m in (plain, fast):
        with torch.no_grad():
            m.w0.mul_(-1.5)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    # a prefix weight unfrozen after the prefix was built: torch again (its gradient is needed)
    fast.w0.requires_grad_(True)
    _, grads = _grads(fast, x)
    assert grads["w0"] is not None and grads["w0"].abs().sum() > 0


def test_nothing_frozen_or_nothing_trained_has_no_prefix():
    module = OnnxGraphModule(_graph())
    assert FrozenPrefix.of(module, 1) is None  # every weight trains
    module.requires_grad_(False)
    assert FrozenPrefix.of(module, 1) is None  # nothing trains: no training forward to speed up


def test_a_recipe_fine_tuning_the_last_share_of_the_shared_mobilefacenet_gets_a_prefix(shared):
    """The build's case: init.trainable_share 0.43 of the shared MobileFaceNet; E_P's training
    forward through the prefix equals torch's."""
    path = shared("models", "mobilefacenet_128.onnx")
    r = Recipe.from_dict({"mode": "bfm",
                          "model": {"backbone": "mbf", "embedding_size": 128, "partial_rows": 62},
                          "data": {"path": "synthetic:4:2"},
                          "init": {"full": f"onnx:{path}", "partial": f"onnx:{path}", "freeze_full": True,
                                   "trainable_share": 0.43},
                          "train": {"onnxruntime_frozen_layers": True}})
    model = BFMModel(r, 4)
    initialise(model, r.init)
    lines = attach(model, threads=1)
    assert len(lines) == 1 and lines[0].startswith("partial: its frozen first 76 of 98 nodes")
    model.train()
    x = torch.rand(6, 3, 112, 112) * 2 - 1
    fast = model.partial_extractor(x)
    model.partial.frozen_prefix = None
    plain = model.partial_extractor(x)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
