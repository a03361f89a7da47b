"""Each loss of the paper against a value worked out by hand."""

import math

import pytest
import torch

from insightface_bfm.losses import (
    arcface_full_loss,
    arcface_partial_loss,
    guided_loss,
    mask_loss,
    total_loss,
)

LN3 = math.log(3.0)


def test_mask_loss_eq1_as_printed():
    # eq. 1: (1/B) sum_i [-log p(unmasked | x_i) - log p(masked | masked x_i)], B = 2 pairs.
    # x_1: softmax [0, ln3] -> p0 = 1/4; x_2: [ln3, 0] -> p0 = 3/4
    # masked x_1: [0, 0] -> p1 = 1/2; masked x_2: [0, ln3] -> p1 = 3/4
    unmasked = torch.tensor([[0.0, LN3], [LN3, 0.0]])
    masked = torch.tensor([[0.0, 0.0], [0.0, LN3]])
    expected = ((math.log(4) + math.log(2)) + (math.log(4 / 3) + math.log(4 / 3))) / 2
    assert mask_loss(unmasked, masked).item() == pytest.approx(expected, abs=1e-6)
    # the named deviation: the mean over all 2B samples, half the printed value
    assert mask_loss(unmasked, masked, "mean").item() == pytest.approx(expected / 2, abs=1e-6)
    with pytest.raises(ValueError, match="pair_reduction must be one of sum, mean"):
        mask_loss(unmasked, masked, "avg")


def test_mask_loss_label_convention():
    # one pair: the sum of the two terms, each -log sigmoid(+-10)
    confident_right = mask_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[-5.0, 5.0]]))
    confident_wrong = mask_loss(torch.tensor([[-5.0, 5.0]]), torch.tensor([[5.0, -5.0]]))
    assert confident_right.item() == pytest.approx(2 * math.log(1 + math.exp(-10)), abs=1e-6)
    assert confident_wrong.item() == pytest.approx(2 * (10 + math.log(1 + math.exp(-10))), abs=1e-5)


def test_arcface_full_loss_eq2():
    # row 1: [ln2, 0, 0], label 0 -> p = 2/4; row 2: [0, ln3, 0], label 2 -> p = 1/5
    logits = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, LN3, 0.0]])
    loss = arcface_full_loss(logits, torch.tensor([0, 2]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(5)) / 2, abs=1e-6)


def test_guided_loss_eq4():
    # (3,4)/5 vs (4,3)/5 -> diff (-0.2, 0.2) -> 0.08 ; (1,0) vs (0,1) after normalising (0,2) -> 2
    feat = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    feat_masked = torch.tensor([[4.0, 3.0], [0.0, 2.0]], requires_grad=True)
    loss = guided_loss(feat, feat_masked)
    assert loss.item() == pytest.approx((0.08 + 2.0) / 2, abs=1e-6)
    loss.backward()
    assert feat.grad.abs().sum() > 0 and feat_masked.grad.abs().sum() > 0
    # scale invariance: only directions matter
    assert guided_loss(feat * 7, feat_masked * 0.1).item() == pytest.approx(loss.item(), abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        guided_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_arcface_partial_loss_eq5_as_printed():
    # eq. 5: (1/B) sum_i [CE on x_i + CE on masked x_i], B = 2 pairs, labels 0 and 2.
    # x_1: [ln2, 0, 0] -> -log(2/4) = ln 2 ; masked x_1: [0, ln3, 0] -> -log(1/5) = ln 5
    # x_2: [0, 0, ln3] -> -log(3/5) = ln 5/3 ; masked x_2: [ln2, 0, 0] -> -log(1/4) = ln 4
    logits = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, LN3]])
    logits_masked = torch.tensor([[0.0, LN3, 0.0], [math.log(2), 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    expected = ((math.log(2) + math.log(5)) + (math.log(5 / 3) + math.log(4))) / 2
    assert arcface_partial_loss(logits, logits_masked, labels).item() == pytest.approx(expected, abs=1e-6)
    mean = arcface_partial_loss(logits, logits_masked, labels, pair_reduction="mean")
    assert mean.item() == pytest.approx(expected / 2, abs=1e-6)


def test_total_loss_eq7():
    guided = torch.tensor(0.5, requires_grad=True)
    terms = {"mask": torch.tensor(1.0), "full": torch.tensor(2.0), "guided": guided}
    assert total_loss(terms).item() == pytest.approx(3.5)
    weighted = total_loss(terms, {"guided": 4.0, "partial": 3.0})  # partial absent: its weight is unused
    assert weighted.item() == pytest.approx(1 + 2 + 0.5 * 4)
    weighted.backward()
    assert terms["guided"].grad.item() == pytest.approx(4.0)


def test_total_loss_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown term name.*'guide'"):
        total_loss({"guide": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unknown weight name.*'mask_loss'"):
        total_loss({"mask": torch.tensor(1.0)}, {"mask_loss": 2.0})
    with pytest.raises(ValueError, match="no loss terms"):
        total_loss({})
