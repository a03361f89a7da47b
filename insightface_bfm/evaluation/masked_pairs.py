"""Masked verification sets: synthetic masks on one or both faces of every pair, rebuildable.

``mode="one"`` masks the second face of every pair (a Case 2 set from an unmasked one, e.g. LFW),
``mode="both"`` masks both faces (Case 3, "masked LFW"). Masks are drawn per pair and side, not
per image: an image that appears in several pairs gets a different mask each time, as two photos
would. Each masked face's randomness comes from its own generator seeded by (seed, pair, side),
so the set is the same whatever order or subset is rendered; the style drawn for each face is
written to a manifest, from which ``render`` rebuilds the very same pixels.
"""

from __future__ import annotations

import json

import numpy as np

from ..atomic import atomic_write_text
from ..errors import DatasetError
from ..imaging import ARCFACE_KPS

MODES = ("one", "both")
MANIFEST_VERSION = 1


def _rng(seed: int, pair: int, side: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(pair), int(side)])


def plan_masks(left: list[str], right: list[str], mode: str, seed: int = 0, types=None) -> dict:
    """The manifest: for every face to mask, its pair, side (0 left, 1 right), image and style."""
    from ..masks import random_style

    if types is not None:
        from ..masks import check_types

        try:
            types = check_types(types)  # family names stand for their types
        except ValueError as e:
            raise DatasetError(str(e)) from None
    if mode not in MODES:
        raise DatasetError(f"mask mode {mode!r}: expected one of {', '.join(MODES)}")
    sides = (1,) if mode == "one" else (0, 1)
    entries = []
    for k in range(len(left)):
        for side in sides:
            style = random_style(_rng(seed, k, side), types=types)
            entries.append(
                {"pair": k, "side": side, "image": (left, right)[side][k], "style": style.to_dict()}
            )
    return {"version": MANIFEST_VERSION, "mode": mode, "seed": int(seed),
            "types": None if types is None else list(types), "entries": entries}


def render(crop: np.ndarray, entry: dict, seed: int) -> np.ndarray:
    """The masked crop of one manifest entry (the same pixels every time)."""
    from ..masks import MaskStyle, render_mask

    style = MaskStyle.from_dict(entry["style"])
    # a fresh generator past the one that drew the style: rendering noise is reproducible too
    rng = _rng(seed, entry["pair"], entry["side"] + 2)
    masked, _ = render_mask(crop, ARCFACE_KPS, style=style, rng=rng)
    return masked


def save_manifest(path, manifest: dict) -> None:
    """JSON with one entry a line: small, diffable, still one ``json.load``."""
    head = {k: v for k, v in manifest.items() if k != "entries"}
    lines = [json.dumps(e, separators=(",", ":")) for e in manifest["entries"]]
    text = json.dumps(head)[:-1] + ', "entries": [\n' + ",\n".join(lines) + "\n]}\n"
    atomic_write_text(path, text)


def load_manifest(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read mask manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("mode") not in MODES or "entries" not in manifest:
        raise DatasetError(f"{path}: not a mask manifest (needs mode, seed and entries)")
    return manifest


def expected_case(mode: str | None) -> int:
    """The matching case a set built with ``mode`` is, when its source faces are unmasked."""
    return {None: 1, "one": 2, "both": 3}[mode]
