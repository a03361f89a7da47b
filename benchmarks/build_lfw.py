"""The README's `bfm models build` run: a BFM pack from LFW's DevTrain people and ../shared's models,
then the pack used as an app would, in a new process.

    python benchmarks/build_lfw.py --root R            # build (about 15 min on 2 idle cores), then check
    python benchmarks/build_lfw.py --root R --check    # only the check of an installed bfm-lfw

The build is the exact command of the README (run as a subprocess: the user's command, with its
progress bars and its printed held-out table); its wall time, CPU time and the load average before
and after go to ``R/build_lfw.json``. The check, in a fresh interpreter:
``FaceAnalysis(name="bfm-lfw", root=R)`` on insightface's ``t1.jpg`` (6 faces), ``app.verify``
on two LFW photos of one person and of two people, answered with the pack's own thresholds, and
``app.get`` on the real masked photos of ``rmfd_dev`` (the share of largest faces called masked).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

CHECK = r"""
import json, sys, cv2
from pathlib import Path
import insightface
from insightface_bfm import FaceAnalysis

root, raw = sys.argv[1], Path(sys.argv[2])
app = FaceAnalysis(name="bfm-lfw", root=root, providers=["CPUExecutionProvider"])
app.prepare(ctx_id=-1, det_size=(640, 640))
t1 = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
faces = app.get(t1)
same = [cv2.imread(str(p)) for p in sorted((raw / "Abdullah_Gul").glob("*.jpg"))[:2]]
other = cv2.imread(str(sorted((raw / "Al_Pacino").glob("*.jpg"))[0]))
r_same, r_other = app.verify(same[0], same[1]), app.verify(same[0], other)
# C on real masks, the way an app meets them: every RMFD photo through app.get, its largest face
from insightface_bfm.imaging import list_image_files
rmfd, called, found = list_image_files(sys.argv[3]), 0, 0
if not rmfd:
    raise SystemExit(f"{sys.argv[3]}: no photos (rmfd_dev of ../shared)")
for rel in rmfd:
    got = app.get(cv2.imread(str(Path(sys.argv[3]) / rel)))
    if got:
        found += 1
        called += bool(max(got, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])).masked)
print(json.dumps({
    "rmfd_photos": len(rmfd), "rmfd_faces_found": found, "rmfd_called_masked": called,
    "rmfd_recall": called / max(found, 1),
    "t1_faces": len(faces),
    "t1_masked": [bool(f.masked) for f in faces],
    "pack_threshold": app.pack.thresholds.verification_distance,
    "pack_threshold_partial": app.pack.thresholds.distance_for("partial"),
    "verify_same_person": {"distance": r_same.distance, "same": r_same.same, "threshold": r_same.threshold},
    "verify_two_people": {"distance": r_other.distance, "same": r_other.same, "threshold": r_other.threshold},
}))
"""


def command(root: Path) -> list[str]:
    """The README's command, word for word (run from the repository's root)."""
    return ["bfm", "models", "build", "bfm-lfw", "--faces", "../shared/data/lfw112",
            "--people", "../shared/data/lfw112/peopleDevTrain.txt",
            "--base", "../shared/models/mobilefacenet_128.onnx",
            "--detector", "../shared/models/scrfd_2.5g_bnkps.onnx", "--root", str(root)]


def check(root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", CHECK, str(root), str(SHARED / "data" / "lfw_raw"),
                        str(SHARED / "data" / "rmfd_dev")],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode:
        raise SystemExit(f"check failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--check", action="store_true", help="only check the installed pack")
    args = ap.parse_args(argv)
    args.root = args.root.resolve()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this benchmark needs ../shared beside the repository")
    record: dict = {}
    out = args.root / "build_lfw.json"
    if out.is_file():
        record = json.loads(out.read_text())
    if not args.check:
        load_before = os.getloadavg()
        t0 = time.time()
        subprocess.run(command(args.root), check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        record["build"] = {"command": " ".join(command(args.root)), "wall_s": round(time.time() - t0, 1),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                           "load_average_before": load_before, "load_average_after": os.getloadavg(),
                           "cpus": os.cpu_count()}
    record["check"] = check(args.root)
    args.root.mkdir(parents=True, exist_ok=True)
    from insightface_bfm.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
