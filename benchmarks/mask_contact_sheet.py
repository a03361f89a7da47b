"""Contact sheet: every mask kind, both renderers, on 8 LFW faces, to look at.

Rows, labelled on the left with the kind, its family and the renderer: each kind of
``ALL_TYPES`` (the masks, then the opt-in lower-face occluders) by the per-image
``render_mask`` (numpy, at each crop's own 5 points from ``landmarks.tsv`` through the
alignment) and by the trainer's batched ``MaskAugment`` (torch, at the template with its default
jitter); then two more placements of the trainer: masks worn low
(``data.mask_worn_low``) and masks placed off the template as the real-faces and build recipes
place them (``data.mask_kps_jitter: 4``), also in any type's colours (``data.mask_colours:
any``); last, every mask type lit (contact shadows and the sheen of synthetic fabrics:
``data.mask_lighting``, ``bfm mask --lighting``) by both renderers. Columns: 8 aligned LFW
crops (``../shared/data/lfw112``) spread over the set, a fresh random style each. Writes a PNG atomically:

    python benchmarks/mask_contact_sheet.py --out /tmp/mask_sheet.png [--faces 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from insightface_bfm.atomic import atomic_write_bytes
from insightface_bfm.imaging import encode_image, to_network_input
from insightface_bfm.masks import ALL_TYPES, OCCLUDER_TYPES, family_of, random_style, render_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mask_coverage import crop_points, landmark_names  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"
LABEL_W = 150


def pick_faces(root: Path, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` crops spread over the set (different people, lighting, poses) and their points."""
    names = landmark_names(root)
    chosen = names[:: max(1, len(names) // n)][:n]
    table = crop_points(root, chosen)
    return [cv2.imread(str(root / name)) for name in chosen], np.stack([table[name] for name in chosen])


def numpy_row(crops, kps, kind: str | None, seed: int, lighting: bool = False) -> np.ndarray:
    """One kind (None: every mask type) by the per-image renderer, a fresh style per crop."""
    rng = np.random.default_rng([seed, ALL_TYPES.index(kind) if kind else len(ALL_TYPES)])
    types = [kind] if kind else None
    styles = [random_style(rng, types=types, lighting=lighting) for _ in crops]
    masked = [render_mask(c, k, style)[0] for c, k, style in zip(crops, kps, styles)]
    return np.concatenate(masked, 1)


def torch_row(crops, types, seed: int, **augment) -> np.ndarray:
    import torch

    from insightface_bfm.masks.batched import MaskAugment

    x = torch.from_numpy(to_network_input(np.stack(crops)))  # RGB in [-1, 1]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        masked, _ = MaskAugment(types=types, **augment)(x, generator=g)
    rgb = ((masked.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return np.concatenate(list(rgb[..., ::-1]), 1)


def label(row: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((row.shape[0], LABEL_W, 3), 255, np.uint8)
    for i, line in enumerate(text.split("\n")):
        cv2.putText(strip, line, (6, 28 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, row], 1)


def contact_sheet(root=LFW, faces: int = 8, seed: int = 0, with_torch: bool = True) -> np.ndarray:
    crops, kps = pick_faces(Path(root), faces)
    rows = []
    for i, kind in enumerate(ALL_TYPES):
        name = f"{kind}\n({family_of(kind)}{', opt-in' if kind in OCCLUDER_TYPES else ''})"
        rows.append(label(numpy_row(crops, kps, kind, seed), f"{name}\nrender_mask"))
        if with_torch:
            rows.append(label(torch_row(crops, [kind], seed * 1000 + i), f"{name}\nMaskAugment"))
    if with_torch:
        worn_low = torch_row(crops, None, seed + 1, worn_low=1.0)
        rows.append(label(worn_low, "worn low\n(every mask type)\nMaskAugment"))
        off_template = torch_row(crops, None, seed + 2, kps_jitter=4.0)
        rows.append(label(off_template, "off template\n(jitter 4)\nMaskAugment"))
        any_colours = torch_row(crops, None, seed + 3, kps_jitter=4.0, colours="any")
        rows.append(label(any_colours, "any colours\n(jitter 4)\nMaskAugment"))
    lit_label = "lit, opt-in\n(every mask type)\n"
    rows.append(label(numpy_row(crops, kps, None, seed + 4, lighting=True), lit_label + "render_mask"))
    if with_torch:
        lit = torch_row(crops, None, seed + 4, lighting=True)
        rows.append(label(lit, lit_label + "MaskAugment"))
    return np.concatenate(rows, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--root", default=str(LFW), help="aligned LFW crops with landmarks.tsv")
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (Path(args.root) / "landmarks.tsv").is_file():
        print(f"skipped: {args.root} with landmarks.tsv is not here (../shared is absent)")
        return
    try:
        import torch  # noqa: F401
        with_torch = True
    except ImportError:
        print("torch is not installed (the [train] extra): drawing the per-image renderer only")
        with_torch = False
    sheet = contact_sheet(args.root, args.faces, args.seed, with_torch)
    atomic_write_bytes(args.out, encode_image(sheet, ".png"))
    print(f"wrote {args.out}: {sheet.shape[1]}x{sheet.shape[0]}")


if __name__ == "__main__":
    main()
