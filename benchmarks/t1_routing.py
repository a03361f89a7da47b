"""Does a trained pack route real photos? insightface's t1.jpg before and after `bfm mask --raw`.

Issue 4's check on a real, trained pack (e.g. the one benchmarks/real_faces/run.py writes):
FaceAnalysis must find the 6 faces of t1.jpg and call them unmasked, then find the same faces
after `bfm mask --raw` has put synthetic masks on them and call them masked. Several seeds, so
several mask styles per face:

    python benchmarks/t1_routing.py runs/real_faces/pack [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from insightface_bfm import FaceAnalysis
from insightface_bfm.cli import main as bfm


def centres(faces) -> np.ndarray:
    return np.array([(f.bbox[:2] + f.bbox[2:]) / 2 for f in faces])


def run(pack: str, seeds=(0, 1, 2, 3, 4)) -> dict:
    import insightface

    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    app = FaceAnalysis(name=pack, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    before = app.get(cv2.imread(str(t1)))
    result = {
        "pack": str(pack),
        "faces": len(before),
        "unmasked_called_unmasked": sum(not f.masked for f in before),
        "unmasked_scores": [round(f.mask_score, 4) for f in before],
        "masked": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bfm_t1_"))
    try:
        (work / "src").mkdir()
        shutil.copyfile(t1, work / "src" / "t1.jpg")
        for seed in seeds:
            out = work / f"seed{seed}"
            r = CliRunner().invoke(
                bfm, ["mask", str(work / "src"), str(out), "--raw", "--detector", str(pack),
                      "--seed", str(seed), "--quiet"]
            )
            if r.exit_code != 0:
                raise RuntimeError(f"bfm mask failed: {r.output}")
            after = app.get(cv2.imread(str(out / "t1.jpg")))
            gaps = np.linalg.norm(centres(before)[:, None] - centres(after)[None], axis=-1)
            same = len(after) == len(before) and gaps.min(axis=0).max() < 10
            lines = (out / "mask_manifest.jsonl").read_text().splitlines()[1:]
            styles = [face["style"]["type"] for line in lines for face in json.loads(line).get("faces", [])]
            result["masked"].append({
                "seed": seed, "faces": len(after), "same_faces": bool(same),
                "called_masked": sum(f.masked for f in after),
                "scores": [round(f.mask_score, 4) for f in after], "types": styles,
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = sum(m["called_masked"] for m in result["masked"])
    total = sum(m["faces"] for m in result["masked"])
    result["masked_recall"] = found / max(total, 1)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    r = run(args.pack, args.seeds)
    print(f"t1.jpg: {r['faces']} faces, {r['unmasked_called_unmasked']} called unmasked "
          f"(scores {r['unmasked_scores']})")
    for m in r["masked"]:
        print(f"  masked, seed {m['seed']}: {m['faces']} faces (same: {m['same_faces']}), "
              f"{m['called_masked']} called masked; types {m['types']}; scores {m['scores']}")
    print(f"masked recall over seeds: {r['masked_recall']:.3f}")


if __name__ == "__main__":
    main()
