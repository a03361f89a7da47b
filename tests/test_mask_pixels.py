"""The renderers' pixels, pinned: a fixed set of draws hashed, so that a speed-up (or any refactor)
that changes one pixel of ``render_mask`` or ``MaskAugment`` fails here. A change of the look on
purpose updates these hashes in the same commit and says so.

The hashes were taken with the renderers before their speed-up (commit b3a6c39) and hold for the
sped-up ones (benchmarks/mask_throughput.py measures both). They depend on numpy, OpenCV and torch
computing the same floats, as the pinned versions do on x86-64.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from insightface_bfm.imaging import ARCFACE_KPS, to_network_input
from insightface_bfm.masks import ALL_TYPES, random_style, render_mask


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _face(seed: int, size: int = 112) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(40, 230, (size, size, 3), dtype=np.uint8), (7, 7), 2)


def per_image_digests() -> dict:
    """Every kind, lit and unlit, worn low, at the template and off it, on crops and a big photo."""
    rng = np.random.default_rng(123)
    out = {}
    for i in range(3 * len(ALL_TYPES)):
        kind = ALL_TYPES[i % len(ALL_TYPES)]
        style = random_style(rng, types=[kind], lighting=i % 3 == 0, worn_low=0.3)
        kps = ARCFACE_KPS + (rng.normal(0, 2.0, (5, 2)) if i % 4 == 1 else 0)
        out.setdefault(kind, []).append(_digest(*render_mask(_face(i), kps, style)))
    for i in range(len(ALL_TYPES)):
        kps = ARCFACE_KPS * 2.5 + np.array([60, 40]) + rng.normal(0, 3, (5, 2))
        style = random_style(rng, types=[ALL_TYPES[i]], lighting=i % 2 == 0)
        out.setdefault("photo 400x400", []).append(_digest(*render_mask(_face(1000 + i, 400), kps, style)))
    return {k: _digest(np.array(v)) for k, v in out.items()}


PER_IMAGE = {
    "surgical": "80827c5a68ec40e1", "n95": "daf0b9dcec85592e", "kn95": "b9d220eb924eabfa",
    "cloth": "2f55eec7902c7760", "dark": "ab955afae7ce2e5e", "photo": "34890ca59c95b6df",
    "hand": "5cf1b787836e43a4", "scarf": "bb46c30dedba4219", "object": "d7bd70f5d4ff983d",
    "photo 400x400": "c9bd6452d32ac35d",
}
BATCHED = {
    "default": "8a3704ee910a72b9", "lit": "b8021ab7e08285a8", "jitter 4, any colours": "2c03380e83583a3d",
    "worn low, p 0.7": "571dc6baebbd19b2", "occluders": "a1322e37d236d069",
}


def batched_digests() -> dict:
    torch = pytest.importorskip("torch")
    from insightface_bfm.masks.batched import MaskAugment

    x = torch.from_numpy(to_network_input(np.stack([_face(5000 + i) for i in range(24)])))
    out = {}
    for name, kw in (("default", {}), ("lit", {"lighting": True}),
                     ("jitter 4, any colours", {"kps_jitter": 4.0, "colours": "any"}),
                     ("worn low, p 0.7", {"worn_low": 1.0, "p": 0.7}),
                     ("occluders", {"types": list(ALL_TYPES)})):
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            masked, region = MaskAugment(**kw)(x, generator=g)
        out[name] = _digest(masked.numpy(), region.numpy())
    return out


def test_render_mask_pixels_unchanged():
    assert per_image_digests() == PER_IMAGE


def test_mask_augment_pixels_unchanged():
    assert batched_digests() == BATCHED


if __name__ == "__main__":  # print the digests (to pin a change of the look on purpose)
    print(per_image_digests())
    print(batched_digests())
