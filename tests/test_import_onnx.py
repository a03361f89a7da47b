"""ONNX import for fine-tuning: nets round trip, a real pretrained recogniser, training, re-export."""

import io
from pathlib import Path

import export_helpers as helpers
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from insightface_bfm.errors import PackError
from insightface_bfm.export import (
    OnnxGraphModule,
    backbone_from_architecture,
    calibrate_batchnorm,
    export_onnx,
    import_onnx,
)
from insightface_bfm.imaging import read_image, to_network_input
from insightface_bfm.nets import IResNet, MobileFaceNet, get_backbone

torch.set_num_threads(1)





def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(a).max())


# --------------------------------------------------------------------------- our own nets


@pytest.mark.parametrize(
    "name, options, cls",
    [("r18", {"width": 0.25}, IResNet), ("mbf", {"scale": 1, "expansion": 0.5, "blocks": (2, 1, 2, 1)},
                                          MobileFaceNet)],
)
def test_export_then_import_gives_the_nets_class_with_the_same_outputs(tmp_path, name, options, cls):
    net = helpers.randomise(get_backbone(name, embedding_size=48, **options))
    path = export_onnx(net, tmp_path / "full.onnx", "full")
    imported = import_onnx(path)
    assert type(imported) is cls and not imported.training
    assert imported.embedding_size == 48
    assert imported.bfm_architecture["backbone"] == name
    # the arcface_torch state-dict layout, so trainer and checkpoints treat it as any backbone
    fresh = backbone_from_architecture(imported.bfm_architecture)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in imported.state_dict().items()}
    x = helpers.faces(3)
    with torch.no_grad():
        expected, got = net(x).numpy(), imported(x).numpy()
    assert _relative(expected, got) < 1e-5


@pytest.mark.parametrize("name, options", [("r18", {"width": 0.25}), ("mbf", {})])
def test_a_file_exported_the_arcface_torch_way_maps_onto_nets(tmp_path, name, options):
    """arcface_torch's torch2onnx: opset 11, batch frozen to 1 then renamed, input 'data'."""
    import warnings

    net = helpers.randomise(get_backbone(name, **options), seed=4)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, helpers.faces(1), str(path), input_names=["data"], opset_version=11,
                          keep_initializers_as_inputs=False, dynamo=False)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))
    imported = import_onnx(path)
    assert imported.bfm_architecture == {"backbone": name, "embedding_size": 512, **options}
    x = helpers.faces(2, seed=3)
    with torch.no_grad():
        assert _relative(net(x).numpy(), imported(x).numpy()) < 1e-5


def test_calibration_makes_train_mode_start_where_the_file_is(tmp_path):
    import copy

    faces = helpers.faces(16, seed=7)
    net = get_backbone("r18", embedding_size=32, width=0.25, layers=(1, 1, 1, 1))
    helpers.randomise(net, seed=5)  # BN scales != 1: what folding loses
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running statistics = those of ``faces``
    with torch.no_grad():
        net.train()(faces)
        reference_train = net(faces)
    net.eval()
    path = export_onnx(net, tmp_path / "full.onnx", "full")
    imported = import_onnx(path)
    # the stem's BN, and per unit the BNs after conv1, conv2 and the projection shortcut
    assert len(imported.bfm_folded_batchnorm) == 1 + 3 * 4

    def train_mode_gap(module):
        with torch.no_grad():
            out = copy.deepcopy(module).train()(faces)
        return _relative(reference_train.numpy(), out.numpy())

    assert train_mode_gap(imported) > 0.1  # folded BNs re-normalise to unit variance
    with torch.no_grad():
        before = imported(faces).numpy()
    calibrate_batchnorm(imported, faces)
    with torch.no_grad():
        assert _relative(before, imported(faces).numpy()) < 1e-5  # eval outputs unchanged
    assert train_mode_gap(imported) < 0.01


def test_generic_path_also_reproduces_a_nets_export(tmp_path):
    net = helpers.randomise(get_backbone("r18", embedding_size=32, width=0.25, layers=(1, 1, 1, 1)), seed=2)
    path = export_onnx(net, tmp_path / "full.onnx", "full")
    generic = import_onnx(path, architecture="generic")
    assert isinstance(generic, OnnxGraphModule)
    x = helpers.faces(2, seed=1)
    with torch.no_grad():
        assert _relative(net(x).numpy(), generic(x).numpy()) < 1e-5


# --------------------------------------------------------------------------- a real recogniser


def _lfw_faces(shared, n=4):
    root = shared("data", "lfw112")
    files = sorted(root.glob("A*/*.jpg"))[:n]
    return torch.from_numpy(to_network_input(np.stack([read_image(f) for f in files])))


@pytest.fixture
def mobilefacenet(shared):
    path = shared("models", "mobilefacenet_128.onnx")
    return path, import_onnx(path)


def test_mobilefacenet_128_imports_and_matches_onnx_runtime(shared, mobilefacenet):
    path, module = mobilefacenet
    assert isinstance(module, OnnxGraphModule)  # ReLU6 MobileFaceNet: not an arcface_torch layout
    assert module.embedding_size == 128 and not module.training
    faces = _lfw_faces(shared)
    session = helpers.session(path)
    # the file is frozen to batch 1; the module takes any batch
    expected = np.concatenate([session.run(None, {"input": f[None].numpy()})[0] for f in faces])
    with torch.no_grad():
        got = module(faces).numpy()
    assert got.shape == (4, 128)
    assert np.abs(got - expected).max() < 1e-4
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 1 - 1e-6
    assert module.bfm_architecture["backbone"] == "onnx"
    assert Path(module.bfm_architecture["path"]).resolve() == Path(path).resolve()


def test_mobilefacenet_128_fine_tunes_saves_loads_and_exports(shared, mobilefacenet, tmp_path):
    path, module = mobilefacenet
    weights = dict(module.named_parameters())
    assert sum(p.numel() for p in weights.values()) > 900_000  # every conv weight and bias trains
    faces = _lfw_faces(shared)
    with torch.no_grad():
        before = module(faces)

    module.train()
    optimiser = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    target = torch.nn.functional.normalize(torch.randn(4, 128, generator=torch.Generator().manual_seed(0)))
    losses = []
    for _ in range(3):
        optimiser.zero_grad()
        emb = torch.nn.functional.normalize(module(faces))
        loss = (1 - (emb * target).sum(1)).mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights.values())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    module.eval()
    with torch.no_grad():
        after = module(faces)
    assert (after - before).abs().max() > 1e-3

    # state_dict survives a save/load into a fresh import of the same file
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = import_onnx(path, verify=False)
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(faces), after)
    # ... and the state dict alone (as a checkpoint stores it, safetensors, prefixed) rebuilds it
    from safetensors.torch import load, save

    stored = load(save({f"full.{k}": v.contiguous() for k, v in module.state_dict().items()}))
    rebuilt = OnnxGraphModule.from_state_dict(stored, prefix="full.")
    assert rebuilt.embedding_size == 128 and not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(faces), after)

    # the fine-tuned graph exports as an extractor of a pack, with a dynamic batch
    out = export_onnx(module, tmp_path / "partial.onnx", "partial")
    session = helpers.session(out)
    assert session.get_inputs()[0].shape == ["batch", 3, 112, 112]
    got = session.run(None, {"input": faces.numpy()})[0]
    assert np.abs(got - after.numpy()).max() < 1e-4
    # and imports again (now through Shape/Gather/Concat/Reshape of the dynamic batch)
    again = import_onnx(out)
    with torch.no_grad():
        assert np.abs(again(faces).numpy() - after.numpy()).max() < 1e-4


def test_insightface_reads_a_reexported_generic_model(shared, mobilefacenet, tmp_path):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    _, module = mobilefacenet
    out = export_onnx(module, tmp_path / "full.onnx", "full")
    recogniser = get_model(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(recogniser, ArcFaceONNX) and recogniser.input_mean == 127.5
    files = sorted(shared("data", "lfw112").glob("A*/*.jpg"))[:2]
    bgr = [read_image(f) for f in files]
    with torch.no_grad():
        expected = module(torch.from_numpy(to_network_input(np.stack(bgr)))).numpy()
    assert np.abs(recogniser.get_feat(bgr) - expected).max() < 1e-4


def test_nets_only_import_of_a_foreign_architecture_says_why(mobilefacenet):
    path, _ = mobilefacenet
    with pytest.raises(PackError, match="not an arcface_torch"):
        import_onnx(path, architecture="nets")


# --------------------------------------------------------------------------- the interpreter


def _operator_zoo_model() -> onnx.ModelProto:
    """A small graph using the common operators of ONNX recognisers, frozen to batch 1."""
    rng = np.random.default_rng(0)

    def init(name, shape, low=-0.5, high=0.5):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    inits = [
        init("w", (4, 3, 3, 3)), init("b", (4,)),
        init("scale", (4,), 0.5, 1.5), init("shift", (4,)), init("mean", (4,)), init("var", (4,), 0.5, 2),
        init("slope", (4, 1, 1), 0, 0.3), init("gain", (1, 4, 1, 1)),
        numpy_helper.from_array(np.array(0.1, np.float32), "offset"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        init("fc", (6, 8)), init("fc_b", (6,)), init("proj", (6, 5)),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], epsilon=1e-3),
        helper.make_node("PRelu", ["n", "slope"], ["p"]),
        helper.make_node("Mul", ["p", "gain"], ["m"]),
        helper.make_node("Sub", ["m", "offset"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["sig"]),
        helper.make_node("Add", ["s", "sig"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["mp"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Concat", ["t", "mp"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["g"], transB=1),
        helper.make_node("Clip", ["g", "lo", "hi"], ["r6"]),
        helper.make_node("MatMul", ["r6", "proj"], ["mm"]),
        helper.make_node("Reshape", ["mm", "flat"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_interpreter_matches_onnx_runtime_operator_by_operator():
    model = _operator_zoo_model()
    session = helpers.session(model.SerializeToString())
    module = OnnxGraphModule(model).eval()
    x = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    expected = np.concatenate([session.run(None, {"x": row[None]})[0] for row in x])
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 5)  # the frozen batch of 1 in Reshape follows the real batch
    assert np.abs(got - expected).max() < 1e-5
    # weights train, running statistics and shape constants do not
    learnable = {name for name, _ in module.named_parameters()}
    assert {"w", "b", "scale", "shift", "slope", "gain", "fc", "fc_b", "proj"} <= learnable
    assert not learnable & {"mean", "var", "flat", "lo", "hi", "offset"}


def test_in_place_activations_leave_aliases_inputs_and_gradients_alone():
    """Without gradients, an activation whose input nobody reads later runs in place (speed and
    memory of frozen layers); an input another live tensor shares (Identity), the graph's input
    and tensors that need a gradient are never overwritten."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(0.5, np.float32), "hi")]
    nodes = [
        helper.make_node("Identity", ["x"], ["xv"]),  # the caller's input under another name
        helper.make_node("Relu", ["xv"], ["rx"]),  # its last reader: still never in place
        helper.make_node("Conv", ["rx", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["c"], ["alias"]),  # shares c's memory, read at the end
        helper.make_node("Relu", ["c"], ["r"]),  # c's last reader, but aliased: out of place
        helper.make_node("Add", ["alias", "r"], ["a"]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["cl"]),  # a's last reader: in place
        helper.make_node("Add", ["cl", "alias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "inplace", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = OnnxGraphModule(model).eval()
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = helpers.session(model.SerializeToString()).run(None, {"x": x})[0]
    inp = torch.from_numpy(x.copy())
    with torch.no_grad():
        got = module(inp)
    assert np.abs(got.numpy() - expected).max() < 1e-5
    assert torch.equal(inp, torch.from_numpy(x))
    # with gradients: the same values, and the weight's gradient that of the plain ops
    out = module(torch.from_numpy(x))
    out.sum().backward()
    w = torch.from_numpy(numpy_helper.to_array(inits[0])).requires_grad_()
    c = torch.nn.functional.conv2d(torch.from_numpy(x).relu(), w, padding=1)
    ref = (c + c.relu()).clamp(0.0, 0.5) + c
    ref.sum().backward()
    assert torch.allclose(out.detach(), ref.detach(), atol=1e-6)
    assert torch.allclose(module.w.grad, w.grad, atol=1e-5)


def test_a_graph_that_normalises_inside_is_fed_pixels():
    """mxnet conversions open with Sub/Mul nodes (insightface feeds them raw RGB pixels)."""
    consts = [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
              numpy_helper.from_array(np.array(0.0078125, np.float32), "inv_std")]
    nodes = [helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minusscalar0"),
             helper.make_node("Mul", ["centred", "inv_std"], ["scaled"], name="_mulscalar0"),
             helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["fc1"])]
    graph = helper.make_graph(
        nodes, "mx", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = OnnxGraphModule(model)
    assert module.expects_pixels
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    expected = helpers.session(model.SerializeToString()).run(None, {"data": pixels})[0]
    with torch.no_grad():
        got = module(torch.from_numpy((pixels - 127.5) / 127.5)).numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_missing_corrupt_or_unsupported_files_are_pack_errors(tmp_path):
    with pytest.raises(PackError, match="not found"):
        import_onnx(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 3)
    with pytest.raises(PackError, match="garbage.onnx"):
        import_onnx(garbage)
    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 112, 112])],
    )
    unsupported = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(unsupported))
    with pytest.raises(PackError, match="'Erf'"):
        import_onnx(unsupported)
