"""Additive-margin softmax heads (ArcFace, CosFace) for face identity training.

A head holds one centre per identity, normalises both the features and the centres, and returns
scaled cosine logits with the margin applied to each sample's own class. Feed its output to a plain
softmax cross-entropy (``insightface_bfm.losses.arcface_full_loss``).

The margin functions work on a cosine matrix and take ``labels`` where -1 means "the true class is
not among these columns" (no margin on that row); Partial FC uses that for its sharded centres.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# keeps sqrt(1 - cos^2) away from 0, where its derivative is infinite
_SIN_EPS = 1e-7


def _target_mask(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # (B, C) bool, True at each row's label column; rows labelled -1 match nothing. Built without
    # nonzero()/item() so it never forces a device sync in the training step.
    columns = torch.arange(cosine.shape[1], device=cosine.device)
    return columns.unsqueeze(0) == labels.unsqueeze(1)


def arcface_margin(cosine: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s*cos(theta + m) at each row's label column, s*cos(theta) elsewhere (paper eqs. 3 and 6).

    When theta + m would pass pi, cos(theta + m) turns back up and stops penalising worse
    angles; there we switch to cos(theta) - m*sin(m), the linear continuation used by ArcFace,
    so the target logit stays monotonically decreasing in theta and gradients stay finite.
    """
    cosine = cosine.clamp(-1.0, 1.0)
    target = cosine.gather(1, labels.clamp_min(0).long().unsqueeze(1))
    sine = torch.sqrt((1.0 - target * target).clamp_min(_SIN_EPS))
    with_margin = target * math.cos(m) - sine * math.sin(m)
    threshold = math.cos(math.pi - m)  # theta + m == pi
    fallback = target - math.sin(math.pi - m) * m
    target_logit = torch.where(target > threshold, with_margin, fallback)
    return torch.where(_target_mask(cosine, labels), target_logit, cosine) * s


def cosface_margin(cosine: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s*(cos(theta) - m) at each row's label column, s*cos(theta) elsewhere."""
    cosine = cosine.clamp(-1.0, 1.0)
    return torch.where(_target_mask(cosine, labels), cosine - m, cosine) * s


def normalized_cosine(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """cos(theta) between every feature row and every centre row, in float32.

    Autocast is switched off here: under bf16 autocast the product would be rounded to ~3
    significant digits, i.e. about +-0.25 logit at s=64 on cosines near 1, the size of the margin's
    effect. The head's matrix product is small next to the backbone, so float32 costs little.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        return F.linear(F.normalize(features.float()), F.normalize(centres.float()))


MARGINS = {"arcface": arcface_margin, "cosface": cosface_margin}
DEFAULT_M = {"arcface": 0.5, "cosface": 0.35}


def check_margin(kind: str, s: float, m: float) -> None:
    if kind not in MARGINS:
        raise ValueError(f"unknown margin head {kind!r}; expected one of {sorted(MARGINS)}")
    if not s > 0:
        raise ValueError(f"{kind} scale s must be > 0, got {s}")
    if kind == "arcface" and not 0 <= m < math.pi / 2:
        raise ValueError(f"arcface margin m must be in [0, pi/2), got {m}")
    if kind == "cosface" and not 0 <= m < 1:
        raise ValueError(f"cosface margin m must be in [0, 1), got {m}")


class MarginHead(nn.Module):
    """Normalised class centres + an additive margin; forward(features, labels) -> (B, num_classes)."""

    kind = "arcface"

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float | None = None):
        super().__init__()
        m = DEFAULT_M[self.kind] if m is None else float(m)
        check_margin(self.kind, s, m)
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.m = m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return normalized_cosine(features, self.weight)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # checked on CPU only: on an accelerator the check would sync every step
        if labels.device.type == "cpu" and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{self.kind} head: labels must be in [0, {self.num_classes}), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        return MARGINS[self.kind](self.cosine(features), labels, self.s, self.m)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, m={self.m}"


class ArcFaceHead(MarginHead):
    kind = "arcface"

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__(embedding_size, num_classes, s=s, m=m)


class CosFaceHead(MarginHead):
    kind = "cosface"

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_size, num_classes, s=s, m=m)


HEADS = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


def make_head(kind: str, embedding_size: int, num_classes: int, **kw) -> MarginHead:
    """``make_head("arcface"|"cosface", embedding_size, num_classes, s=..., m=...)``."""
    if kind not in HEADS:
        raise ValueError(f"unknown margin head {kind!r}; expected one of {sorted(HEADS)}")
    return HEADS[kind](embedding_size, num_classes, **kw)
