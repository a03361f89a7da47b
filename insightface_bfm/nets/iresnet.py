"""IResNet (the "improved" pre-activation ResNet of ArcFace) with arcface_torch's state-dict layout.

Attribute names and nesting follow insightface's ``recognition/arcface_torch`` backbones exactly
(``conv1``, ``layer1.0.bn1``, ``layer1.0.downsample.0`` ...) so that a published arcface_torch
``backbone.pth`` loads with ``strict=True``. Only the code is ours; the layout is the contract.
"""

from __future__ import annotations

import torch
from torch import nn

# blocks per stage, as in the ArcFace paper's IResNet family
IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}

# 112x112 input halves four times -> 7x7 spatial map before the embedding layer
_FINAL_MAP = 7 * 7
_STAGE_CHANNELS = (64, 128, 256, 512)


def autocast_for(x: torch.Tensor, enabled: bool):
    """Half-precision autocast on x's device: fp16 on CUDA (as arcface_torch), bf16 elsewhere
    (CPU kernels for fp16 convolutions are missing or slow)."""
    dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=x.device.type, dtype=dtype, enabled=enabled)


class IResidualUnit(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            # key names downsample.0 / downsample.1 come from this being a Sequential
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet for aligned 112x112 faces: (B,3,112,112) normalised -> (B, embedding_size), not normalised.

    ``width`` scales every stage's channel count (1.0 = arcface_torch; smaller values give the fast
    CPU models of the quickstart, which are then no longer key-compatible with published weights).
    ``fp16`` runs the convolutional trunk under half-precision autocast and the embedding layer in
    float32, as arcface_torch does.
    """

    def __init__(
        self,
        layers=(3, 4, 14, 3),
        embedding_size: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        width: float = 1.0,
    ):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet layers must be 4 positive block counts, got {tuple(layers)}")
        if width <= 0:
            raise ValueError(f"IResNet width must be > 0, got {width}")
        self.fp16 = fp16
        channels = [max(1, round(c * width)) for c in _STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0], eps=1e-5)
        self.prelu = nn.PReLU(channels[0])
        in_ch = channels[0]
        for index, (count, ch) in enumerate(zip(layers, channels), start=1):
            # each stage opens with a stride-2 unit; arcface_torch names them layer1..layer4
            units = [IResidualUnit(in_ch, ch, stride=2)] + [IResidualUnit(ch, ch) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*units))
            in_ch = ch
        self.bn2 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * _FINAL_MAP, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # arcface_torch keeps the embedding BN's scale fixed at 1 (only its shift learns)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(x, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
            x = self.dropout(x)
        # the embedding layer runs in float32 for a stable feature scale
        x = self.fc(x.float())
        return self.features(x)
