"""Photo variation for the mask classifier's inputs, batched on the training device.

C learns "masked or not" from clean aligned crops; real photos are darker, brighter, greyer,
blurrier and lower in resolution than the training set, and a classifier that never saw that
takes a smooth, low-resolution lower face for a mask (or misses a real mask). Generic photo
variation (not fitted to any test set) on C's inputs only keeps E_F and E_P training as the
paper has it. Every draw comes from the caller's generator, so a resumed run repeats it exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R BT.601 luma weights for RGB
_LUMA = (0.299, 0.587, 0.114)


class PhotoVariation(nn.Module):
    """Exposure, contrast, grey, blur, low resolution and sensor noise on (B,3,H,W) in [-1, 1].

    ``p`` is the share of images that get varied; the rest pass through unchanged.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"PhotoVariation: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0.0 or x.numel() == 0:
            return x
        n, dev = x.shape[0], x.device

        def rand(*shape):
            return torch.rand(*shape, device=dev, generator=generator)

        chosen = (rand(n) < self.p)[:, None, None, None]
        out = x
        # exposure and contrast: 0.7x..1.25x around the image mean, shifted by up to +-20 grey levels
        gain = 0.7 + 0.55 * rand(n, 1, 1, 1)
        shift = (rand(n, 1, 1, 1) - 0.5) * (40.0 / 127.5)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * gain + mean + shift
        # grey photos (one in ten)
        luma = sum(w * out[:, i : i + 1] for i, w in enumerate(_LUMA))
        out = torch.where(rand(n, 1, 1, 1) < 0.1, luma.expand_as(out), out)
        # low resolution (half of them): one scale per batch, 0.15..0.8 of the side, then back up
        side = x.shape[-1]
        small = max(8, int(side * (0.15 + 0.65 * float(rand(1)))))
        low = F.interpolate(F.interpolate(out, size=(small, small), mode="area"), size=x.shape[-2:],
                            mode="bilinear", align_corners=False)
        out = torch.where(rand(n, 1, 1, 1) < 0.5, low, out)
        # a soft focus (one in five): 3x3 binomial blur
        k = torch.tensor([1.0, 2.0, 1.0], device=dev, dtype=out.dtype)
        k = (k[:, None] * k[None, :] / 16.0).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), k, groups=3)
        out = torch.where(rand(n, 1, 1, 1) < 0.2, blurred, out)
        # sensor noise, up to 4 grey levels
        noise = torch.randn(out.shape, device=dev, generator=generator, dtype=out.dtype)
        out = out + noise * (4.0 / 127.5) * rand(n, 1, 1, 1)
        return torch.where(chosen, out.clamp(-1.0, 1.0), x)
