"""Overhead of BFM routing: insightface_bfm.FaceAnalysis.get vs insightface's own FaceAnalysis.get.

Both run on the same pack folder in the same process: a BFM pack's manifest declares its
detector and E_F as insightface manifest-V2 tasks, so plain insightface loads exactly the
same detector and recognition model from it. Calls alternate image by image, so load on a
shared machine hits both alike. The ratio is median(BFM time per image set) /
median(insightface time per image set); target <= 1.05.

    python benchmarks/app_overhead.py                       # pack built from ../shared models
    python benchmarks/app_overhead.py --pack bfm --root ~/.insightface -n 20

Without --pack, a temporary pack is built from ../shared/models (SCRFD-2.5G detector,
mobilefacenet_128 as E_F and E_P) and the paper's Table-I classifier exported by
insightface_bfm.export (needs torch; random weights: the cost does not depend on them).
Without torch, a one-layer ONNX classifier stands in and the output says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _classifier(path: Path, kind: str) -> str:
    if kind == "stand-in":
        sys.path.insert(0, str(REPO / "tests"))
        from bfm_inference_helpers import make_classifier

        make_classifier(path, "darkness")
        return "stand-in ONNX classifier (--classifier stand-in)"
    try:
        import torch

        from insightface_bfm.export import export_onnx
        from insightface_bfm.nets import MaskClassifier
    except ImportError:
        sys.path.insert(0, str(REPO / "tests"))
        from bfm_inference_helpers import make_classifier

        make_classifier(path, "darkness")
        return "stand-in ONNX classifier (torch not installed)"
    torch.manual_seed(0)
    torch.set_num_threads(1)
    export_onnx(MaskClassifier().eval(), path, "mask_classifier")
    return "Table-I MaskClassifier exported by insightface_bfm.export (random weights)"


def build_default_pack(workdir: Path, classifier: str = "table1") -> tuple[Path, str]:
    """A pack from ../shared models, returned with a description of its classifier."""
    import shutil

    from insightface_bfm.zoo.packs import build_pack

    rec = SHARED / "models" / "mobilefacenet_128.onnx"
    det = SHARED / "models" / "scrfd_2.5g_bnkps.onnx"
    if not (rec.is_file() and det.is_file()):
        raise SystemExit(f"{SHARED}/models is absent: pass --pack NAME (and --root) instead")
    export = workdir / "export"
    export.mkdir(parents=True)
    note = _classifier(export / "mask_classifier.onnx", classifier)
    shutil.copyfile(rec, export / "full.onnx")
    shutil.copyfile(rec, export / "partial.onnx")
    return build_pack(export, workdir / "models" / "bench", detector=det).path, note


def default_images(limit: int) -> list:
    import insightface

    paths = [Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"]
    for folder in ("lfw_raw", "rmfd_dev"):
        found = sorted((SHARED / "data" / folder).glob("*/*.jpg"))[:limit]
        paths.extend(found)
    return [img for img in (cv2.imread(str(p)) for p in paths) if img is not None]


def measure(pack_dir, images, repeats: int, det_size: int, root=None) -> dict:
    from insightface.app import FaceAnalysis as InsightFaceAnalysis

    from insightface_bfm import FaceAnalysis

    providers = ["CPUExecutionProvider"]
    ours = FaceAnalysis(name=str(pack_dir), root=root, providers=providers)
    ours.prepare(ctx_id=0, det_size=(det_size, det_size))
    theirs = InsightFaceAnalysis(name=str(ours.pack.path), providers=providers)
    theirs.prepare(ctx_id=0, det_size=(det_size, det_size))
    assert set(theirs.models) == {"detection", "recognition"}
    faces = 0
    for img in images:  # warm-up: SCRFD builds its static-shape sessions on first use
        faces += len(ours.get(img))
        theirs.get(img)
    ours_t, theirs_t = [], []
    for _ in range(repeats):
        a = b = 0.0
        for img in images:
            t0 = time.perf_counter()
            ours.get(img)
            t1 = time.perf_counter()
            theirs.get(img)
            t2 = time.perf_counter()
            a += t1 - t0
            b += t2 - t1
        ours_t.append(a)
        theirs_t.append(b)
    ratio = statistics.median(ours_t) / statistics.median(theirs_t)
    return {
        "images": len(images),
        "faces": faces,
        "repeats": repeats,
        "det_size": det_size,
        "bfm_median_s": statistics.median(ours_t),
        "insightface_median_s": statistics.median(theirs_t),
        "overhead_ratio": ratio,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", help="pack name (under ROOT/models) or directory; default: from ../shared")
    parser.add_argument("--root", help="insightface root for --pack")
    parser.add_argument("-n", "--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=3, help="photos per ../shared folder besides t1.jpg")
    parser.add_argument(
        "--classifier",
        choices=("table1", "stand-in"),
        default="table1",
        help="classifier of the default pack",
    )
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        note = "given pack"
        pack = args.pack
        if pack is None:
            pack, note = build_default_pack(Path(tmp), args.classifier)
        images = default_images(args.images)
        result = measure(pack, images, args.repeats, args.det_size, args.root)
    result["classifier"] = note
    print(
        f"{result['images']} images, {result['faces']} faces, "
        f"{result['repeats']} repeats, det {args.det_size}"
    )
    print(f"classifier: {note}")
    print(
        f"insightface FaceAnalysis.get:     {result['insightface_median_s'] * 1000:.1f} ms "
        "per image set (median)"
    )
    print(f"insightface_bfm FaceAnalysis.get: {result['bfm_median_s'] * 1000:.1f} ms per image set (median)")
    print(f"overhead ratio (median): {result['overhead_ratio']:.3f} (target <= 1.05)")
    if args.json:
        from insightface_bfm.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
