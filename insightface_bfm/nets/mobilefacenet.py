"""MobileFaceNet with arcface_torch's state-dict layout (its ``mbf`` backbone).

Every sub-block stores its layers in a Sequential called ``layers`` and the trunk is a list also
called ``layers``: that nesting produces keys such as ``layers.3.layers.0.layers.1.layers.0.weight``,
which published arcface_torch ``mbf`` checkpoints use. Only the code is ours.
"""

from __future__ import annotations

import torch
from torch import nn

from .iresnet import autocast_for

# the 1x1 expansion widths of arcface_torch's MobileFaceNet; they do not follow ``scale``
_EXPANSIONS = (128, 256, 512)
_HEAD_CHANNELS = 512


class ConvBNPReLU(nn.Module):
    def __init__(self, in_ch, out_ch, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
        )

    def forward(self, x):
        return self.layers(x)


class ConvBN(nn.Module):
    """Linear (activation-free) projection: conv + BN."""

    def __init__(self, in_ch, out_ch, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x):
        return self.layers(x)


class InvertedBottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear project; identity shortcut when residual."""

    def __init__(self, in_ch, out_ch, expansion, stride=1, residual=False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNPReLU(in_ch, expansion),
            ConvBNPReLU(expansion, expansion, kernel=3, stride=stride, padding=1, groups=expansion),
            ConvBN(expansion, out_ch),
        )

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStage(nn.Module):
    def __init__(self, channels, count, expansion):
        super().__init__()
        self.layers = nn.Sequential(
            *[InvertedBottleneck(channels, channels, expansion, residual=True) for _ in range(count)]
        )

    def forward(self, x):
        return self.layers(x)


class GlobalDepthwiseEmbedding(nn.Module):
    """GDC: a 7x7 depthwise conv collapses the map, then linear + BN1d give the embedding.

    Index 1 of ``layers`` is the (parameter-free) flatten, kept as a module so indices match.
    Dropout lives outside ``layers`` so enabling it does not shift any key.
    """

    def __init__(self, embedding_size, channels=_HEAD_CHANNELS, dropout=0.0):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBN(channels, channels, kernel=7, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        x = self.layers[1](self.layers[0](x))
        x = self.dropout(x)
        return self.layers[3](self.layers[2](x))


class MobileFaceNet(nn.Module):
    """MobileFaceNet: (B,3,112,112) normalised -> (B, embedding_size), not normalised.

    Defaults equal arcface_torch ``get_model("mbf")`` (blocks=(1,4,6,2), scale=2). ``scale``
    multiplies the trunk widths (64*scale, 128*scale); ``expansion`` multiplies the inner 1x1
    expansion widths (128/256/512). Values other than the defaults make smaller, faster models
    (used by the CPU quickstart) that are not key-compatible with published weights.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        blocks=(1, 4, 6, 2),
        scale: int = 2,
        expansion: float = 1.0,
    ):
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"MobileFaceNet blocks must be 4 positive counts, got {tuple(blocks)}")
        if scale < 1 or int(scale) != scale:
            raise ValueError(f"MobileFaceNet scale must be a positive integer, got {scale}")
        if expansion <= 0:
            raise ValueError(f"MobileFaceNet expansion must be > 0, got {expansion}")
        self.fp16 = fp16
        scale = int(scale)
        c1, c2 = 64 * scale, 128 * scale
        e1, e2, e3 = (max(1, round(e * expansion)) for e in _EXPANSIONS)
        stem_groups = 64  # arcface_torch's second stem conv is grouped by 64 at every scale
        self.layers = nn.ModuleList([ConvBNPReLU(3, c1, kernel=3, stride=2, padding=1)])
        if blocks[0] == 1:
            self.layers.append(ConvBNPReLU(c1, c1, kernel=3, padding=1, groups=stem_groups))
        else:
            self.layers.append(ResidualStage(c1, blocks[0], e1))
        self.layers.extend(
            [
                InvertedBottleneck(c1, c1, e1, stride=2),
                ResidualStage(c1, blocks[1], e1),
                InvertedBottleneck(c1, c2, e2, stride=2),
                ResidualStage(c2, blocks[2], e2),
                InvertedBottleneck(c2, c2, e3, stride=2),
                ResidualStage(c2, blocks[3], e2),
            ]
        )
        self.conv_sep = ConvBNPReLU(c2, _HEAD_CHANNELS)
        self.features = GlobalDepthwiseEmbedding(embedding_size, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_for(x, self.fp16):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float())
        return self.features(x)
