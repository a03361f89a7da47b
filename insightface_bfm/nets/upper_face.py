"""``UpperFace``: E_P's view of a crop when it is told to look above the mask line only.

The paper's E_P sees the whole aligned crop and learns, with eq. 4, to ignore what the mask
covers. Trained on synthetic masks, it also learns *those* masks: a mask drawn by another tool
or a real one reads differently. With ``model.partial_rows: N`` (a named deviation, off in the
paper recipe) E_P sees only the top N rows of the 112x112 crop (eyes, brows, nose bridge); the
rows below are set to 0, mid-grey in the network's normalisation, whatever is there: E_P's
feature then cannot depend on the mask's look below that line, only on the face above it.
Bare and masked faces alike pass through it, so Case 2 compares like with like.

The cut is part of the extractor (``BFMModel.partial_extractor``), so it travels into
``partial.onnx`` and every consumer of the pack applies it without knowing.
"""

from __future__ import annotations

import torch
from torch import nn

CROP_SIZE = 112


class UpperFace(nn.Module):
    """(B,3,112,112) normalised crops -> the same with rows ``rows``..111 set to 0."""

    def __init__(self, rows: int):
        super().__init__()
        if not isinstance(rows, int) or not 0 < rows < CROP_SIZE:
            raise ValueError(f"UpperFace: rows must be an integer in 1..{CROP_SIZE - 1}, got {rows!r}")
        self.rows = rows
        keep = (torch.arange(CROP_SIZE) < rows).float().reshape(1, 1, CROP_SIZE, 1)
        # not in the state dict: it follows from the recipe, and checkpoints keep their keys
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != CROP_SIZE:
            raise ValueError(f"UpperFace: expected {CROP_SIZE}-row aligned crops, got shape {tuple(x.shape)}")
        return x * self.keep.to(x.dtype)

    def extra_repr(self) -> str:
        return f"rows={self.rows}"
