"""Leave one mask family out: do C and E_P hold on masks of a kind they never saw?

The development proxy for masks drawn by others (issue 10). Never touches LFW's DevTest: it
trains and measures on LFW's DevTrain people only, split into training people and held-out
people (``benchmarks/real_faces/run.py``'s ``--val-ids`` split, same seed).

For each family of ``insightface_bfm.masks.MASK_FAMILIES`` (and once with every family), the
product's trainer (``bfm-train``'s ``Trainer``) trains BFM with ``recipes/real_faces_bfm.yaml``
(C + E_P from the pretrained MobileFaceNet, as run.py does) on the training people, with
``data.mask_types`` = every type but that family's. Each model is then measured on the held-out
people with masks of every family (``train.holdout.evaluate_holdout_per_mask_set``, masks from a fixed
generator, 600 pairs):

* C's recall on held-out faces masked with the left-out family (and its specificity on the same
  faces bare), and C's recall on the real masked photos of ``../shared/data/rmfd_dev``;
* E_P's Case 2 / Case 3 on the left-out family (the true mask state routes, so this is E_P's
  accuracy whatever C said), next to the all-families model's on the same faces and masks.

    python benchmarks/mask_families.py --out DIR [--max-ids 1200] [--val-ids 300] [--set KEY=VALUE]
        [--add-types occluder --mask-repeat 2]   # every training also draws the opt-in occluders

Writes DIR/results.json and DIR/results.md; a rerun reuses the models it already measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from insightface_bfm.atomic import atomic_write_text
from insightface_bfm.masks import MASK_FAMILIES, MASK_TYPES, check_types, types_without

sys.path.insert(0, str(Path(__file__).resolve().parent / "real_faces"))
import run as real_faces  # noqa: E402

RECIPE = real_faces.RECIPES["bfm"]


def rmfd_crops(out: Path, limit: int | None = None) -> np.ndarray:
    """The RMFD photos (the first ``limit`` of them) detected and aligned once (``bfm align``'s
    code, as run.py does), kept in DIR."""
    from insightface_bfm.imaging import list_image_files, read_image

    aligned = out / f"rmfd_aligned_{limit or 'all'}"
    if not (aligned / "landmarks.tsv").is_file():
        real_faces.align_rmfd(out, aligned, limit)
    return np.stack([read_image(aligned / p) for p in list_image_files(aligned)])


def mask_recall(model, crops: np.ndarray, batch: int = 256) -> float:
    """Share of ``crops`` that C (``model.mask_probability``) calls masked at 0.5."""
    import torch

    from insightface_bfm.train.trainer import to_network_tensor

    model.eval()
    with torch.no_grad():
        p = torch.cat([model.mask_probability(to_network_tensor(torch.from_numpy(crops[i:i + batch])))
                       for i in range(0, len(crops), batch)])
    return float((p >= 0.5).float().mean())


def train_and_measure(name: str, types, args, train_dir: Path, val_dir: Path, rmfd, out: Path, log) -> dict:
    from insightface_bfm.train.holdout import evaluate_holdout_per_mask_set
    from insightface_bfm.train.recipe import load_recipe
    from insightface_bfm.train.trainer import Trainer

    overrides = [
        f"data.path={train_dir}",
        f"init.full=onnx:{real_faces.PRETRAINED}",
        f"init.partial=onnx:{real_faces.PRETRAINED}",
        f"train.output={out / 'runs' / name}",
        f"train.seed={args.seed}",
        "train.save_every=0",
    ]
    if types is not None or args.add_types:
        # each mask type args.mask_repeat times, then the added kinds once (a repeat weighs a kind)
        masks = list(types if types is not None else MASK_TYPES) * args.mask_repeat
        overrides.append(f"data.mask_types=[{','.join(masks + list(args.add_types))}]")
    recipe = load_recipe(RECIPE, overrides + args.set)
    t0 = time.time()
    trainer = Trainer(recipe)
    trainer.fit()
    seconds = time.time() - t0
    model = trainer.model
    row = {"trained_on": list(types) if types else "every family", "added": list(args.add_types),
           "train_seconds": round(seconds, 1),
           "rmfd_recall": mask_recall(model, rmfd), "families": {}, "c_specificity": None}
    per_family = evaluate_holdout_per_mask_set(model, str(val_dir), MASK_FAMILIES, pairs=args.pairs,
                                               seed=args.eval_seed, route="truth")
    for family, r in per_family.items():
        row["c_specificity"] = r["classifier_specificity"]  # the same bare faces for every family
        row["families"][family] = {
            "c_recall": r["classifier_recall"],
            "ep_case2": r["case2"]["accuracy"],
            "ep_case3": r["case3"]["accuracy"],
        }
    fam = row["families"]
    log(f"{name}: {seconds:.0f} s training; RMFD recall {100 * row['rmfd_recall']:.1f}%; "
        + "; ".join(f"{f}: C {100 * v['c_recall']:.1f}% E_P case 2 {100 * v['ep_case2']:.2f}%"
                    for f, v in fam.items()))
    return row


def markdown(rows: dict) -> str:
    lines = [
        "| left out | C recall on it (without / with it) | C specificity (bare held-out faces) | "
        "C recall RMFD | "
        "E_P Case 2 on it (without / with it) | E_P Case 3 (without / with it) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    every = rows["all"]
    for family in MASK_FAMILIES:
        if family not in rows:
            continue
        held, ref = rows[family]["families"][family], every["families"][family]
        lines.append(
            f"| {family} | {100 * held['c_recall']:.1f} / {100 * ref['c_recall']:.1f} | "
            f"{100 * rows[family]['c_specificity']:.1f} | {100 * rows[family]['rmfd_recall']:.1f} | "
            f"{100 * held['ep_case2']:.2f} / {100 * ref['ep_case2']:.2f} | "
            f"{100 * held['ep_case3']:.2f} / {100 * ref['ep_case3']:.2f} |"
        )
    lines.append(f"\nEvery family: C recall on RMFD {100 * every['rmfd_recall']:.1f}%, "
                 f"specificity {100 * every['c_specificity']:.1f}%.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path,
                    help="folder for the data links, runs and results (a rerun reuses what it measured)")
    ap.add_argument("--max-ids", type=int, default=1200, help="DevTrain people to train on")
    ap.add_argument("--val-ids", type=int, default=300, help="DevTrain people (2+ faces) held out")
    ap.add_argument("--families", default=",".join(MASK_FAMILIES), help="families to leave out in turn")
    ap.add_argument("--pairs", type=int, default=600, help="held-out pairs per case and family")
    ap.add_argument("--seed", type=int, default=0, help="people split and training seed")
    ap.add_argument("--eval-seed", type=int, default=1234, help="held-out pairs and their masks")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--max-rmfd", type=int, help="C's recall on the first N RMFD photos only (smoke)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every training (repeatable)")
    ap.add_argument("--add-types", default="",
                    help="comma-separated types or families added once to every training's mask types, e.g. "
                         "occluder (hand, scarf, object); never to the measured masks")
    ap.add_argument("--mask-repeat", type=int, default=1,
                    help="with --add-types: the training's own mask types (not the added ones) listed this "
                         "many times, which sets the added kinds' share: 1 (default) and the three occluders "
                         "make a third of the masks occluders with every family, 2 a fifth (3/11 to 3/13 "
                         "when a family is left out)")
    args = ap.parse_args(argv)
    try:
        args.add_types = check_types(args.add_types) if args.add_types else ()
    except ValueError as e:
        ap.error(f"--add-types: {e}")
    if args.mask_repeat < 1 or (args.mask_repeat != 1 and not args.add_types):
        ap.error("--mask-repeat must be a positive count, and is for --add-types only")
    for path in (real_faces.LFW, real_faces.RMFD, real_faces.PRETRAINED, real_faces.DETECTOR):
        if not path.exists():
            print(f"skipped: {path} is absent (this benchmark needs ../shared beside the repository)")
            return 0
    import torch

    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    for f in families:
        types_without(f)  # a clear error for an unknown family before any training
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(text):
        print(f"[{time.time() - t_start:7.1f} s] {text}", flush=True)

    train_dir, val_dir, info = real_faces.training_folder(out, args.max_ids, args.val_ids, args.seed)
    rmfd = rmfd_crops(out, args.max_rmfd)
    results_path = out / "results.json"
    done = json.loads(results_path.read_text()).get("models", {}) if results_path.is_file() else {}
    rows = {}
    for name in ["all", *families]:
        # what the numbers depend on (the code too: a rerun after a change should pass a new --out)
        key = json.dumps([name, args.set, args.max_ids, args.val_ids, args.seed, args.pairs, args.max_rmfd,
                          args.eval_seed, args.threads, *([args.add_types, args.mask_repeat] if args.add_types
                                                          else [])])
        if done.get(name, {}).get("key") == key:
            rows[name] = done[name]
            log(f"{name}: measured before, reused")
            continue
        types = None if name == "all" else types_without(name)
        rows[name] = {"key": key, **train_and_measure(name, types, args, train_dir, val_dir, rmfd, out, log)}
        atomic_write_text(results_path, json.dumps({"models": {**done, **rows}}, indent=1))
    rows = {**{k: v for k, v in done.items() if k not in rows}, **rows}  # earlier families kept
    summary = {"benchmark": "benchmarks/mask_families.py", "command": " ".join(sys.argv), "data": info,
               "rmfd_faces": len(rmfd), "overrides": args.set,
               "added_types": list(args.add_types), "mask_repeat": args.mask_repeat, "models": rows,
               "wall_s": round(time.time() - t_start, 1), "load_average_end": list(os.getloadavg())}
    atomic_write_text(results_path, json.dumps(summary, indent=1))
    table = markdown(rows)
    atomic_write_text(out / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
