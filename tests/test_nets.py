"""Backbones (arcface_torch layout), the Table I mask classifier and the margin heads."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from insightface_bfm.nets import (
    BACKBONES,
    ArcFaceHead,
    CosFaceHead,
    MaskClassifier,
    get_backbone,
    make_head,
)

torch.set_num_threads(1)

FIXTURE_PATH = Path(__file__).parent / "fixtures" / "nets" / "arcface_torch_state_dict.json"
FIXTURE = json.loads(FIXTURE_PATH.read_text())


def _shape(tensor):
    return "x".join(str(d) for d in tensor.shape)


@pytest.mark.parametrize("name", BACKBONES)
def test_state_dict_matches_arcface_torch(name):
    expected = FIXTURE[name]
    state = get_backbone(name).state_dict()
    for key, shape in expected["sample"].items():
        assert key in state, f"{name}: missing arcface_torch key {key}"
        assert _shape(state[key]) == shape, key
    assert len(state) == expected["count"]
    assert sum(t.numel() for t in state.values()) == expected["numel"]
    text = "\n".join(f"{key}:{_shape(t)}" for key, t in state.items())
    assert hashlib.sha256(text.encode()).hexdigest() == expected["sha256"]


def test_arcface_torch_state_dict_loads_strictly_and_reproduces_output():
    # a "published" checkpoint stand-in: another instance's weights with non-trivial BN statistics
    torch.manual_seed(0)
    source = get_backbone("mbf")
    for module in source.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    target = get_backbone("mbf")
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def formula_state(model):
    """RNG-free weights for a backbone, a function of each tensor's position in the state dict only."""
    state = {}
    for i, (key, t) in enumerate(model.state_dict().items()):
        if key.endswith("num_batches_tracked"):
            state[key] = t.clone()
            continue
        wave = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7853 + i).reshape(t.shape)
        if key.endswith("running_var"):
            value = 1.0 + 0.5 * wave.abs()
        elif key.endswith(("running_mean", "bias")):
            value = 0.05 * wave
        elif t.dim() == 1 and key.endswith(("prelu.weight", "layers.2.weight")):  # PReLU slopes
            value = 0.25 + 0.05 * wave
        elif t.dim() == 1:  # BatchNorm scales
            value = 1.0 + 0.2 * wave
        else:
            value = wave * (3.0 / (t.numel() // t.shape[0])) ** 0.5
        state[key] = value.to(t.dtype)
    return state


def formula_input():
    wave = torch.cos(torch.arange(2 * 3 * 112 * 112, dtype=torch.float64) * 0.01237)
    return wave.reshape(2, 3, 112, 112).float()


@pytest.mark.parametrize("name", ["r18", "mbf"])
def test_forward_matches_arcface_torch_golden_output(name):
    """Same weights -> same embedding as arcface_torch's forward (values in the fixture were computed
    with arcface_torch's module structure and forward order, eval mode)."""
    model = get_backbone(name)
    model.load_state_dict(formula_state(model), strict=True)
    with torch.no_grad():
        out = model.eval()(formula_input())
    golden = FIXTURE["golden_output"][name]
    torch.testing.assert_close(out[:, :4].flatten(), torch.tensor(golden["first"]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.sum(1), torch.tensor(golden["row_sums"]), rtol=1e-4, atol=1e-3)


def test_known_parameter_counts():
    # parameters (no buffers) of arcface_torch's backbones; r50's is the widely quoted 43.6M
    counts = {"r18": 24_025_600, "r50": 43_590_848, "mbf": 2_059_520}
    for name, count in counts.items():
        assert sum(p.numel() for p in get_backbone(name).parameters()) == count


def test_embedding_size_changes_only_the_head():
    ref = get_backbone("r18").state_dict()
    small = get_backbone("r18", embedding_size=128).state_dict()
    assert ref.keys() == small.keys()
    assert tuple(small["fc.weight"].shape) == (128, 512 * 7 * 7)
    assert tuple(get_backbone("mbf", embedding_size=128).state_dict()["features.layers.2.weight"].shape) == (
        128,
        512,
    )


def test_forward_shapes_small_variants():
    x = torch.randn(2, 3, 112, 112)
    r = get_backbone("r18", embedding_size=64, width=0.125, layers=(1, 1, 1, 1))
    m = get_backbone("mbf", embedding_size=32, scale=1, blocks=(2, 1, 1, 1), expansion=0.25)
    assert r(x).shape == (2, 64)
    assert m(x).shape == (2, 32)
    assert r(x).dtype == m(x).dtype == torch.float32


def test_mbf_default_forward_shape():
    model = get_backbone("mbf").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 512)


def test_fp16_flag_autocasts_trunk_but_returns_float32():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 112, 112)
    for name, opts in (("r18", {"width": 0.125, "layers": (1, 1, 1, 1)}), ("mbf", {"scale": 1})):
        plain = get_backbone(name, embedding_size=16, **opts).eval()
        half = get_backbone(name, embedding_size=16, fp16=True, **opts).eval()
        half.load_state_dict(plain.state_dict())
        seen = []
        trunk = half.layer4 if name == "r18" else half.layers[-1]
        trunk.register_forward_hook(lambda mod, inp, out, seen=seen: seen.append(out.dtype))
        with torch.no_grad():
            a, b = plain(x), half(x)
        assert seen == [torch.bfloat16]  # CPU autocast uses bf16
        assert b.dtype == torch.float32
        assert not torch.equal(a, b)
        assert torch.allclose(a, b, rtol=0.1, atol=0.1 * a.abs().max().item())


def test_dropout_only_in_training_and_keys_unchanged():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 112, 112)
    for name, opts in (("r18", {"width": 0.125, "layers": (1, 1, 1, 1)}), ("mbf", {"scale": 1})):
        model = get_backbone(name, embedding_size=16, dropout=0.5, **opts)
        assert model.state_dict().keys() == get_backbone(name, embedding_size=16, **opts).state_dict().keys()
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.equal(first, model(x))


def test_embedding_bn_scale_is_frozen_like_arcface_torch():
    assert get_backbone("r18").features.weight.requires_grad is False


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'r51'"):
        get_backbone("r51")
    with pytest.raises(ValueError, match="does not take option"):
        get_backbone("r18", scale=1)
    with pytest.raises(ValueError, match="dropout"):
        get_backbone("mbf", dropout=1.5)


# ---- Table I mask classifier ---------------------------------------------------------------


def test_mask_classifier_table_one_shapes_and_parameter_count():
    model = MaskClassifier()
    x = torch.randn(3, 3, 112, 112)
    conv = model.conv(x)
    assert conv.shape == (3, 16, 28, 28)
    assert torch.flatten(conv, 1).shape[1] == 12544
    assert model.fc1.in_features == 12544 and model.fc1.out_features == 512
    assert model(x).shape == (3, 2)
    # conv 3*16*4*4 + 16, BN 2*16, linear 12544*512 + 512, BN1d 2*512, linear 512*2 + 2
    expected = (768 + 16) + 32 + (6422528 + 512) + 1024 + (1024 + 2)
    assert sum(p.numel() for p in model.parameters()) == expected == 6425906


def test_mask_classifier_rejects_wrong_size():
    with pytest.raises(ValueError, match="112x112"):
        MaskClassifier()(torch.randn(1, 3, 96, 96))


# ---- margin heads ----------------------------------------------------------------------------


def _head_with_centres(cls, centres, **kw):
    head = cls(2, len(centres), **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres))
    return head


def test_arcface_head_hand_computed():
    # centres along x and y; feature at 60 degrees from x (unnormalised, length 2)
    head = _head_with_centres(ArcFaceHead, [[1.0, 0.0], [0.0, 3.0]], s=10.0, m=0.5)
    feat = torch.tensor([[1.0, math.sqrt(3.0)]])
    logits = head(feat, torch.tensor([0]))
    # target: s*cos(60deg + 0.5 rad); other: s*cos(30deg)
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(math.pi / 3 + 0.5), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10 * math.sqrt(3.0) / 2, abs=1e-5)


def test_arcface_head_past_pi_is_monotonic_with_finite_gradient():
    # theta = 170 degrees, theta + m > pi: fallback cos(theta) - m*sin(m) (sin(pi - m) = sin(m))
    head = _head_with_centres(ArcFaceHead, [[1.0, 0.0], [0.0, 1.0]], s=1.0, m=0.5)
    theta = math.radians(170)
    feat = torch.tensor([[math.cos(theta), math.sin(theta)]], requires_grad=True)
    logit = head(feat, torch.tensor([0]))[0, 0]
    assert logit.item() == pytest.approx(math.cos(theta) - 0.5 * math.sin(0.5), abs=1e-5)
    # cos(theta + m) would have been larger than at a smaller angle: the fallback keeps the order
    assert logit.item() < math.cos(math.radians(150) + 0.5)
    logit.backward()
    assert torch.isfinite(feat.grad).all()
    # exactly opposite and exactly aligned: sqrt(1 - cos^2) at 0 must not give inf/nan gradients
    for vec in ([-1.0, 0.0], [1.0, 0.0]):
        f = torch.tensor([vec], requires_grad=True)
        out = head(f, torch.tensor([0]))
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(f.grad).all()
        assert torch.isfinite(head.weight.grad).all()


def test_arcface_target_logit_decreases_with_angle():
    head = _head_with_centres(ArcFaceHead, [[1.0, 0.0]], s=1.0, m=0.5)
    angles = torch.linspace(0.01, math.pi - 0.01, 200)
    feats = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    logits = head(feats, torch.zeros(200, dtype=torch.long))[:, 0]
    assert (logits[1:] < logits[:-1]).all()


def test_cosface_head_hand_computed():
    head = _head_with_centres(CosFaceHead, [[1.0, 0.0], [0.0, 1.0]], s=64.0)
    feat = torch.tensor([[3.0, 4.0]])  # cos to x = 0.6, to y = 0.8
    logits = head(feat, torch.tensor([1]))
    assert logits.tolist()[0] == pytest.approx([64 * 0.6, 64 * (0.8 - 0.35)], abs=1e-4)


def test_make_head_and_bad_arguments():
    assert isinstance(make_head("arcface", 8, 5), ArcFaceHead)
    head = make_head("cosface", 8, 5, s=30.0, m=0.4)
    assert isinstance(head, CosFaceHead) and head.s == 30.0 and head.m == 0.4
    assert head(torch.randn(4, 8), torch.tensor([0, 1, 2, 4])).shape == (4, 5)
    with pytest.raises(ValueError, match="unknown margin head 'sphereface'"):
        make_head("sphereface", 8, 5)
    with pytest.raises(ValueError, match="labels must be in"):
        make_head("arcface", 8, 5)(torch.randn(2, 8), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="margin m"):
        ArcFaceHead(8, 5, m=2.0)


def test_heads_compute_cosines_in_float32_under_autocast():
    torch.manual_seed(0)
    head = make_head("arcface", 16, 10)
    feats = torch.randn(4, 16)
    labels = torch.tensor([0, 3, 9, 3])
    plain = head(feats, labels)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = head(feats, labels)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
