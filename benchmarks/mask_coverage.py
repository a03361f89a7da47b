"""Check the mask geometry on every face of an aligned set (default ../shared/data/lfw112).

For each crop: the nose tip and both mouth corners must be covered (region true at their
pixels) and no pixel above the eye line may change. Points are the crop's own 5 points (the
raw-image landmarks of ``landmarks.tsv`` mapped through the alignment transform) or, with
``--points template``, the ArcFace template. Types cycle image by image, so each type sees a
fifth of the set with a fresh random style.

    python benchmarks/mask_coverage.py [--root ../shared/data/lfw112] [--points landmarks|template]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from insightface_bfm.imaging import ARCFACE_KPS
from insightface_bfm.masks import MASK_TYPES, random_style, render_mask


def crop_points(root: Path, names=None) -> dict[str, np.ndarray]:
    """Per-crop 5 points in crop pixels: landmarks.tsv points through norm_crop's transform, for
    ``names`` only when given (an estimate per face: all 13,233 of LFW take 7 s here)."""
    from insightface.utils.face_align import estimate_norm

    wanted = None if names is None else set(names)
    out = {}
    with open(root / "landmarks.tsv") as f:
        next(f)
        for line in f:
            name, _source, vals = line.rstrip("\n").split("\t")
            if wanted is not None and name not in wanted:
                continue
            lmk = np.asarray(vals.split(), dtype=np.float64).reshape(5, 2)
            with warnings.catch_warnings():  # skimage's deprecation notice inside insightface
                warnings.simplefilter("ignore", FutureWarning)
                m = estimate_norm(lmk, 112)
            out[name] = lmk @ m[:, :2].T + m[:, 2]
    return out


def landmark_names(root: Path) -> list[str]:
    """The crops listed in landmarks.tsv, sorted."""
    with open(root / "landmarks.tsv") as f:
        next(f)
        return sorted(line.split("\t", 1)[0] for line in f if line.strip())


def above_eye_line(kps, shape):
    (lx, ly), (rx, ry) = kps[0], kps[1]
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (xs - lx) * (ry - ly) - (ys - ly) * (rx - lx) > 0


def check_coverage(root, limit=None, seed=0, points="landmarks", progress=False) -> dict:
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    table = crop_points(root, files) if points == "landmarks" else {}
    rng = np.random.default_rng(seed)
    failures, per_type = [], {t: 0 for t in MASK_TYPES}
    coverage = []
    t0 = time.perf_counter()
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, unit="img")
    for i, name in enumerate(it):
        img = cv2.imread(str(root / name))
        kps = table.get(name, ARCFACE_KPS)
        kind = MASK_TYPES[i % len(MASK_TYPES)]
        style = random_style(rng, types=[kind])
        per_type[kind] += 1
        try:
            out, region = render_mask(img, kps, style)
        except Exception as e:  # an error is a failure to report, not a crash of the check
            failures.append((name, kind, f"error: {e}"))
            continue
        coverage.append(region.mean())
        h, w = region.shape
        for label, (px, py) in zip(("nose tip", "left mouth corner", "right mouth corner"), kps[2:]):
            x, y = int(np.clip(round(px), 0, w - 1)), int(np.clip(round(py), 0, h - 1))
            if not region[y, x]:
                failures.append((name, kind, f"{label} ({px:.1f}, {py:.1f}) not covered"))
        touched = (out != img).any(-1) & above_eye_line(kps, img.shape)
        if touched.any():
            failures.append((name, kind, f"{int(touched.sum())} pixels above the eye line touched"))
    return {
        "images": len(files),
        "points": points,
        "per_type": per_type,
        "failures": failures,
        "failed_images": len({f[0] for f in failures}),
        "mean_coverage": float(np.mean(coverage)) if coverage else 0.0,
        "seconds": time.perf_counter() - t0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"))
    ap.add_argument("--points", choices=("landmarks", "template"), default="landmarks")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    r = check_coverage(args.root, args.limit, args.seed, args.points, progress=True)
    print(f"{r['images']} images ({r['points']} points), per type {r['per_type']}: "
          f"{r['failed_images']} failed, mean mask coverage {r['mean_coverage']:.1%}, {r['seconds']:.1f} s")
    for name, kind, reason in r["failures"][:20]:
        print(f"  {name} [{kind}]: {reason}")


if __name__ == "__main__":
    main()
