"""The losses of Balanced Feature Matching, one function per equation of the paper (torch).

    eq. 1  mask_loss            mask classifier C: softmax CE, unmasked -> 0, masked -> 1
    eq. 2  arcface_full_loss    full extractor E_F: ArcFace CE on unmasked faces
    eq. 4  guided_loss          partial extractor E_P: masked features pulled onto unmasked ones
    eq. 5  arcface_partial_loss partial extractor E_P: ArcFace CE on x and on masked x
    eq. 7  total_loss           weighted sum of the terms (weights default to 1)

Margin logits come from ``insightface_bfm.nets.margin`` heads (eqs. 3 and 6 apply the margin).

Eqs. 1 and 5 are printed as (1/B) sum_i [term on x_i + term on masked x_i]: per sample, the *sum* of
the two terms (``pair_reduction="sum"``, the default). ``pair_reduction="mean"`` halves them (the mean
over all 2B samples), which keeps eq. 5 on eq. 2's scale; it is a named deviation (recipe key
``loss.pair_reduction``), off in ``recipes/paper_casia_r50.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .nets.mask_classifier import MaskClassifier

# names of the terms total_loss accepts; the trainer logs them under these names
TERMS = ("mask", "full", "guided", "partial")
# how eqs. 1 and 5 combine the term on x and the term on masked x of each sample
PAIR_REDUCTIONS = ("sum", "mean")


def _pair_scale(pair_reduction: str) -> float:
    if pair_reduction not in PAIR_REDUCTIONS:
        raise ValueError(
            f"pair_reduction must be one of {', '.join(PAIR_REDUCTIONS)}, got {pair_reduction!r}"
        )
    return 1.0 if pair_reduction == "sum" else 0.5


def mask_loss(logits_unmasked: torch.Tensor, logits_masked: torch.Tensor,
              pair_reduction: str = "sum") -> torch.Tensor:
    """Eq. 1: (1/B) sum_i [CE(C(x_i), unmasked=0) + CE(C(masked x_i), masked=1)].

    ``pair_reduction="mean"``: half of that (the mean over all 2B samples).
    """
    scale = _pair_scale(pair_reduction)
    device = logits_unmasked.device

    def batch_mean_ce(logits, target):
        targets = torch.full((len(logits),), target, dtype=torch.long, device=device)
        return F.cross_entropy(logits.float(), targets)

    return scale * (batch_mean_ce(logits_unmasked, MaskClassifier.UNMASKED)
                    + batch_mean_ce(logits_masked, MaskClassifier.MASKED))


def arcface_full_loss(margin_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean softmax cross-entropy of the margin logits s*cos(theta [+ m]) of E_F."""
    return F.cross_entropy(margin_logits.float(), labels.long())


def guided_loss(feat: torch.Tensor, feat_masked: torch.Tensor) -> torch.Tensor:
    """Eq. 4: batch mean of || f/|f| - f_m/|f_m| ||^2 between L2-normalised features.

    Gradients flow into both arguments; pass ``feat.detach()`` to make ``feat`` a fixed target.
    """
    if feat.shape != feat_masked.shape:
        raise ValueError(
            f"guided_loss: feature shapes differ: {tuple(feat.shape)} vs {tuple(feat_masked.shape)}"
        )
    diff = F.normalize(feat.float(), dim=1) - F.normalize(feat_masked.float(), dim=1)
    return diff.pow(2).sum(dim=1).mean()


def arcface_partial_loss(
    margin_logits: torch.Tensor, margin_logits_masked: torch.Tensor, labels: torch.Tensor,
    pair_reduction: str = "sum",
) -> torch.Tensor:
    """Eq. 5: (1/B) sum_i [ArcFace CE of E_P on x_i + ArcFace CE on masked x_i].

    ``pair_reduction="mean"``: half of that, the mean over the 2B samples, which puts this term on
    eq. 2's scale (with all weights 1, E_P's identity term then weighs as much as E_F's).
    """
    scale = _pair_scale(pair_reduction)
    on_x = arcface_full_loss(margin_logits, labels)
    return scale * (on_x + arcface_full_loss(margin_logits_masked, labels))


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """Eq. 7: sum of weights[name] * terms[name]; a missing weight is 1.

    Term names must be among TERMS ("mask", "full", "guided", "partial"); a weight for a term that
    is not present is allowed (a baseline run has no "mask" term) but an unknown name is an error.
    """
    if not terms:
        raise ValueError("total_loss: no loss terms given")
    weights = dict(weights or {})
    for where, names in (("term", terms), ("weight", weights)):
        unknown = sorted(set(names) - set(TERMS))
        if unknown:
            raise ValueError(
                f"total_loss: unknown {where} name(s) {', '.join(map(repr, unknown))}; "
                f"expected among {', '.join(TERMS)}"
            )
    total = None
    for name, value in terms.items():
        weighted = float(weights.get(name, 1.0)) * value
        total = weighted if total is None else total + weighted
    return total
