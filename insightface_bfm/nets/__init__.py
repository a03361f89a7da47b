"""Networks of Balanced Feature Matching (torch): backbones, the mask classifier, margin heads, Partial FC.

Backbones keep insightface arcface_torch's state-dict layout at their default configuration, so a
published arcface_torch ``backbone.pth`` loads into ``get_backbone(name)`` with ``strict=True``.
"""

from __future__ import annotations

from torch import nn

from .iresnet import IRESNET_LAYERS, IResNet
from .margin import ArcFaceHead, CosFaceHead, make_head
from .mask_classifier import MaskClassifier
from .mobilefacenet import MobileFaceNet
from .partial_fc import PartialFC
from .upper_face import UpperFace

BACKBONES = ("r18", "r34", "r50", "r100", "mbf")

# extra keyword options each family accepts (beyond embedding_size, dropout, fp16)
_OPTIONS = {"iresnet": ("width", "layers"), "mbf": ("scale", "blocks", "expansion")}


def get_backbone(
    name: str, embedding_size: int = 512, dropout: float = 0.0, fp16: bool = False, **options
) -> nn.Module:
    """Build a face embedding backbone: (B,3,112,112) normalised RGB -> (B, embedding_size).

    name: one of BACKBONES. With default options the state-dict keys and shapes equal arcface_torch's
    ``get_model(name, num_features=embedding_size)``.
    options, for small/fast variants (not key-compatible with published weights):
      r18/r34/r50/r100: ``width`` (channel multiplier, default 1.0), ``layers`` (4 block counts);
      mbf: ``scale`` (trunk width multiplier, default 2), ``blocks`` (default (1, 4, 6, 2)),
      ``expansion`` (inner 1x1 width multiplier, default 1.0).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if not isinstance(embedding_size, int) or embedding_size < 1:
        raise ValueError(f"embedding_size must be a positive integer, got {embedding_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    family = "mbf" if name == "mbf" else "iresnet"
    unknown = sorted(set(options) - set(_OPTIONS[family]))
    if unknown:
        raise ValueError(
            f"backbone {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(_OPTIONS[family])}"
        )
    if family == "mbf":
        return MobileFaceNet(embedding_size=embedding_size, dropout=dropout, fp16=fp16, **options)
    layers = options.pop("layers", IRESNET_LAYERS[name])
    return IResNet(layers=layers, embedding_size=embedding_size, dropout=dropout, fp16=fp16, **options)


__all__ = [
    "BACKBONES",
    "ArcFaceHead",
    "CosFaceHead",
    "IRESNET_LAYERS",
    "IResNet",
    "MaskClassifier",
    "MobileFaceNet",
    "PartialFC",
    "UpperFace",
    "get_backbone",
    "make_head",
]
