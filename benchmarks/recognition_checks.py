"""The command-line recognition journey on a pack, measured: analyse, compare, gallery search.

Runs the very commands a user would (``bfm analyze``, ``bfm mask``, ``bfm compare``, ``bfm gallery``)
on real photos and prints what they answered:

1. ``bfm analyze`` on insightface's ``t1.jpg`` (faces found, how many called masked), then on a
   masked copy of that single file (``bfm mask t1.jpg --raw``, seed 0, all mask types); both with
   ``--draw`` pictures (look at them: ``OUT/drawn/t1.jpg``, ``OUT/drawn_masked/t1.jpg``);
2. ``bfm compare`` on ``--pairs`` same-person and as many different-person LFW pairs (pairsDevTest,
   aligned crops, ``--aligned``), then with the second face masked: exit statuses, cases, extractors;
3. ``bfm gallery enrol`` of the first ``--people`` LFW people with two photos (the first photo), then
   ``bfm gallery search`` with their second photo and with masked copies of it: top-1 accuracy.

    python benchmarks/recognition_checks.py runs/real_faces/pack --out /tmp/recognition_checks

Writes ``OUT/summary.json``. Needs ``../shared`` (LFW) beside the project.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from insightface_bfm.atomic import atomic_write_text
from insightface_bfm.cli import main as bfm

SHARED = Path(__file__).resolve().parents[2] / "shared"


def run(*args, input=None):
    return CliRunner().invoke(bfm, [str(a) for a in args], input=input)


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def checked(res):
    if res.exit_code not in (0, 1):
        raise SystemExit(f"command failed ({res.exit_code}): {res.output}")
    return res


def analyze_t1(pack, out):
    import insightface

    t1 = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    checked(run("analyze", t1, "--pack", pack, "--json", out / "t1.jsonl", "--draw", out / "drawn",
                "--quiet"))
    checked(run("mask", t1, out / "t1_masked", "--raw", "--detector", pack, "--seed", "0", "--quiet"))
    masked = out / "t1_masked" / "t1.jpg"
    checked(run("analyze", masked, "--pack", pack, "--json", out / "t1_masked.jsonl", "--draw",
                out / "drawn_masked", "--quiet"))
    result = {}
    for key, path in (("t1", out / "t1.jsonl"), ("t1_masked", out / "t1_masked.jsonl")):
        faces = jsonl(path)[0]["faces"]
        result[key] = {"faces": len(faces), "called_masked": sum(f["masked"] for f in faces),
                       "mask_scores": [f["mask_score"] for f in faces]}
    return result


def lfw_pairs(n):
    lines = (SHARED / "data" / "lfw112" / "pairsDevTest.txt").read_text().split("\n")[1:]
    same, diff = [], []
    for line in lines:
        p = line.split()
        if len(p) == 3 and len(same) < n:
            same.append((f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg", f"{p[0]}/{p[0]}_{int(p[2]):04d}.jpg"))
        elif len(p) == 4 and len(diff) < n:
            diff.append((f"{p[0]}/{p[0]}_{int(p[1]):04d}.jpg", f"{p[2]}/{p[2]}_{int(p[3]):04d}.jpg"))
    return same, diff


def compare_pairs(pack, out, n, threshold=()):
    lfw = SHARED / "data" / "lfw112"
    same, diff = lfw_pairs(n)
    # masked copies of every second face, written once by `bfm mask -` (paths on stdin)
    seconds = sorted({b for _, b in same + diff})
    checked(run("mask", "-", out / "lfw_masked", "--quiet", input="\n".join(str(lfw / b) for b in seconds)))
    masked_root = out / "lfw_masked"
    result = {}
    for label, pairs, expect in (("same", same, 0), ("different", diff, 1)):
        for variant in ("unmasked", "second_masked"):
            exits, cases, extractors = [], [], []
            for a, b in pairs:
                # `bfm mask -` names each output after its file (NAME_000N.jpg, unique in LFW)
                second = lfw / b if variant == "unmasked" else masked_root / Path(b).name
                res = checked(run("compare", lfw / a, second, "--pack", pack, "--aligned", "--json",
                                  *threshold))
                r = json.loads(res.output)
                exits.append(res.exit_code)
                cases.append(r["case"])
                extractors.append(r["extractor"])
            result[f"{label}_{variant}"] = {
                "pairs": len(pairs), "answered_right": sum(e == expect for e in exits),
                "cases": {c: cases.count(c) for c in sorted(set(cases))},
                "extractors": {x: extractors.count(x) for x in sorted(set(extractors))},
            }
    return result


def gallery_top1(pack, out, people, threshold=()):
    lfw = SHARED / "data" / "lfw112"
    chosen = [d for d in sorted(lfw.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2][:people]
    for d in chosen:
        first, second = sorted(d.glob("*.jpg"))[:2]
        for kind, img in (("enrol", first), ("probe", second)):
            (out / kind / d.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img, out / kind / d.name / img.name)
    g = out / "gallery.npz"
    checked(run("gallery", "enrol", g, out / "enrol", "--pack", pack, "--aligned", "--quiet"))
    checked(run("mask", out / "probe", out / "probe_masked", "--seed", "0", "--quiet"))
    result = {"people": len(chosen)}
    for key, probes in (("unmasked", out / "probe"), ("masked", out / "probe_masked")):
        checked(run("gallery", "search", g, probes, "--pack", pack, "--aligned", "--quiet",
                    "--json", out / f"search_{key}.jsonl", *threshold))
        records = jsonl(out / f"search_{key}.jsonl")
        top1 = [r["faces"][0]["matches"][0]["identity"] == Path(r["image"]).parent.name for r in records]
        known = [r["faces"][0]["identity"] == Path(r["image"]).parent.name for r in records]
        result[key] = {"probes": len(records), "top1": sum(top1), "top1_accuracy": sum(top1) / len(records),
                       "accepted_and_right": sum(known),
                       "called_masked": sum(r["faces"][0]["masked"] for r in records)}
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pack", help="a BFM pack folder or name")
    ap.add_argument("--out", required=True, help="working folder (emptied first)")
    ap.add_argument("--pairs", type=int, default=20, help="same and different LFW pairs each")
    ap.add_argument("--people", type=int, default=50, help="LFW people in the gallery")
    ap.add_argument("--threshold", type=float,
                    help="verification distance for compare/search (default: the pack's; a pack without one "
                         "needs it)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary = {"pack": str(args.pack), "threshold": args.threshold}
    threshold = () if args.threshold is None else ("--threshold", args.threshold)
    summary["analyze"] = analyze_t1(args.pack, out)
    print(json.dumps(summary["analyze"]), flush=True)
    summary["compare"] = compare_pairs(args.pack, out, args.pairs, threshold)
    print(json.dumps(summary["compare"]), flush=True)
    summary["gallery"] = gallery_top1(args.pack, out, args.people, threshold)
    print(json.dumps(summary["gallery"]), flush=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}; pictures: {out / 'drawn'}, {out / 'drawn_masked'}")
    return summary


if __name__ == "__main__":
    main()
