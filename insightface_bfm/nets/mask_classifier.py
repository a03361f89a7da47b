"""The mask classifier C of Balanced Feature Matching, exactly as Table I of the paper."""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = 112
# a 4x4 conv with stride 4 tiles the 112x112 face into 28x28 patches
_PATCH = 4
_MAP = INPUT_SIZE // _PATCH
_CHANNELS = 16
_FLAT = _CHANNELS * _MAP * _MAP  # 12544


class MaskClassifier(nn.Module):
    """(B,3,112,112) normalised face -> logits (B,2); index 0 = unmasked, 1 = masked.

    conv 4x4/4 (3->16, 28x28) -> BN -> ReLU -> flatten 12544 -> linear 512 -> BN1d -> linear 2.
    The network is deliberately tiny: whether a mask is worn is a coarse, lower-face cue.
    """

    UNMASKED = 0
    MASKED = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, _CHANNELS, kernel_size=_PATCH, stride=_PATCH)
        self.bn = nn.BatchNorm2d(_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(_FLAT, 512)
        self.bn1 = nn.BatchNorm1d(512)
        self.fc2 = nn.Linear(512, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"MaskClassifier expects 112x112 faces, got {tuple(x.shape)}")
        x = self.relu(self.bn(self.conv(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.bn1(self.fc1(x)))
