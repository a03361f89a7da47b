"""BFM on real faces: LFW's development split, from a pretrained MobileFaceNet, on a CPU.

    python benchmarks/real_faces/run.py --out DIR

Trains on the people of LFW's ``peopleDevTrain.txt`` only and tests on ``pairsDevTest.txt``
(disjoint people): Case 1 as is, Case 2 with the second face masked, Case 3 with both masked
(``bfm eval --mask-pairs one|both``, one fixed seed and manifest for every model). Compared:

    Baseline 1  the pretrained ``mobilefacenet_128.onnx`` as it is
    Baseline 2  that model fine-tuned with ArcFace on the faces and their masked copies
    BFM         classifier C trained here, E_F = the pretrained model (frozen), E_P fine-tuned from it
                with ArcFace on x and masked x + the guided loss

Everything goes through the product: the recipes ``recipes/real_faces_*.yaml`` run in the
trainer of ``bfm-train`` (``insightface_bfm.train.Trainer``, ``init: {full: "onnx:PATH"}``),
``export_checkpoint`` writes the ONNX files, ``build_pack`` the pack (with the shared SCRFD as its
detector), ``insightface_bfm.evaluation.evaluate`` (``bfm eval``) measures, ``data.align``
(``bfm align``) detects and aligns the real masked photos of RMFD for the classifier's recall.

What the benchmark adds to a plain ``bfm-train`` of those recipes: only the training folder
(symlinks to the DevTrain people's folders of lfw112, an image folder). The recipes themselves
start the ArcFace heads at the pretrained model's class centres (``init.head: centres``, the
trainer's ``train/head_init.py``) and use channels-last tensors on the CPU
(``train.channels_last_cpu``), exactly as ``bfm models build`` (recipes/build_pack.yaml) does.

Outputs in DIR: ``pack/`` (the BFM pack: ``FaceAnalysis(name="DIR/pack")``), ``baseline1.onnx``,
``baseline2.onnx``, ``results.json``, ``results.md``, the mask manifests, the training runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
LFW = SHARED / "data" / "lfw112"
RMFD = SHARED / "data" / "rmfd_dev"
PRETRAINED = SHARED / "models" / "mobilefacenet_128.onnx"
DETECTOR = SHARED / "models" / "scrfd_2.5g_bnkps.onnx"
RECIPES = {
    "baseline2": REPO / "recipes" / "real_faces_baseline2.yaml",
    "bfm": REPO / "recipes" / "real_faces_bfm.yaml",
}
MASK_SEED = 0


def people(split_file: Path) -> list[str]:
    """Names of an LFW people list (first line: the count)."""
    lines = [ln.split("\t") for ln in split_file.read_text().splitlines()[1:] if ln.strip()]
    return [parts[0] for parts in lines]


def pair_people(pairs_file: Path) -> set[str]:
    names = set()
    for line in pairs_file.read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 3:
            names.add(parts[0])
        elif len(parts) == 4:
            names.update((parts[0], parts[2]))
    return names


def training_folder(
    out: Path, max_ids: int | None, val_ids: int, seed: int
) -> tuple[Path, Path | None, dict]:
    """``out/data/train/<person>`` -> lfw112's folders of the DevTrain people (symlinks), and with
    ``val_ids`` a disjoint ``out/data/val`` of DevTrain people (2+ faces) held out for choices."""
    train = people(LFW / "peopleDevTrain.txt")
    test_people = pair_people(LFW / "pairsDevTest.txt")
    overlap = test_people & set(train)
    if overlap:
        raise SystemExit(f"DevTrain and DevTest share people: {sorted(overlap)[:3]}")
    rng = np.random.default_rng(seed)
    val: list[str] = []
    if val_ids:
        multi = [p for p in train if len(list((LFW / p).glob("*.jpg"))) >= 2]
        val = sorted(rng.choice(multi, size=min(val_ids, len(multi)), replace=False).tolist())
        train = [p for p in train if p not in set(val)]
    if max_ids:
        train = train[:max_ids]
    folders = {}
    for split, names in (("train", train), ("val", val)):
        root = out / "data" / split
        if root.exists():
            shutil.rmtree(root)
        if not names:
            continue
        root.mkdir(parents=True)
        for name in names:
            os.symlink(LFW / name, root / name, target_is_directory=True)
        folders[split] = root
    info = {
        "train_people": len(train),
        "val_people": len(val),
        "devtest_people": len(test_people),
        "people_overlap_with_devtest": 0,
    }
    return folders["train"], folders.get("val"), info


def load_recipe(mode: str, args, train_dir: Path, val_dir: Path | None, run_dir: Path):
    from insightface_bfm.train.recipe import load_recipe as load

    overrides = [
        f"data.path={train_dir}",
        f"init.full=onnx:{PRETRAINED}",
        f"train.output={run_dir}",
        f"train.seed={args.seed}",
    ]
    if mode == "bfm":
        overrides.append(f"init.partial=onnx:{PRETRAINED}")
    if val_dir is not None:
        overrides += [f"eval.holdout={val_dir}"]
    for key in ("epochs", "lr", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            # positional notation: YAML 1.1 reads "1e-09" as a string
            overrides.append(f"optim.{key}={np.format_float_positional(value, trim='-')}")
    if args.epochs is not None:  # the lr drop stays on the last epoch
        overrides.append(f"optim.milestones=[{max(args.epochs - 1, 1)}]")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    overrides += args.set
    return load(RECIPES[mode], overrides)


def train(mode: str, recipe, log) -> dict:
    """One recipe through the product's trainer (``bfm-train``'s ``Trainer``), as it is."""
    from insightface_bfm.train.trainer import Trainer

    trainer = Trainer(recipe)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log(
        f"{mode}: {trainer.total_steps} steps of {trainer.global_batch} pairs, {trainable:,} trainable "
        f"parameters (heads included)"
    )
    summary = trainer.fit()
    summary["trainable_parameters"] = trainable
    return summary


def test_pairs(out: Path, max_pairs: int | None) -> Path:
    """pairsDevTest.txt, or (smoke runs) its first ``max_pairs`` matched and mismatched pairs."""
    full = LFW / "pairsDevTest.txt"
    if not max_pairs:
        return full
    lines = full.read_text().splitlines()
    n = int(lines[0])
    k = min(max_pairs, n)
    subset = out / "pairsDevTest_subset.txt"
    subset.write_text("\n".join([str(k), *lines[1 : 1 + k], *lines[1 + n : 1 + n + k]]) + "\n")
    return subset


def evaluate_all(models: dict, pairs: Path, out: Path, log) -> dict:
    """Case 1/2/3 on the test pairs for every model, one mask manifest per masked set.

    ``models``: name -> (model path, threshold rule: "one" or "per_extractor")."""
    from insightface_bfm.evaluation import evaluate
    from insightface_bfm.evaluation.masked_pairs import save_manifest

    results: dict = {}
    for case, mask in ((1, None), (2, "one"), (3, "both")):
        manifest_path = out / "manifests" / f"pairsDevTest_{mask}.json"
        for name, (model, rule) in models.items():
            kw = {"thresholds": rule}
            if mask is not None and manifest_path.exists():
                kw["mask_manifest"] = manifest_path
            elif mask is not None:
                kw.update(mask_pairs=mask, seed=MASK_SEED)
            res, _, manifest = evaluate(
                pairs, model, images=LFW, cache_dir=out / "cache", progress=False, **kw
            )
            if manifest is not None and not manifest_path.exists():
                manifest_path.parent.mkdir(parents=True, exist_ok=True)
                save_manifest(manifest_path, manifest)
            keep = {
                k: res[k]
                for k in (
                    "accuracy",
                    "std",
                    "auc",
                    "eer",
                    "tar_at_far",
                    "cases", "case_source",
                    "threshold_rule",
                    "masked_fraction",
                    "n_faces_embedded",
                    "embedding_seconds",
                )
                if k in res
            }
            results.setdefault(name, {})[f"case{case}"] = keep
            log(f"case {case} {name}: {100 * res['accuracy']:.2f}%")
    return results


def rmfd_photos(out: Path, limit: int | None) -> Path:
    """The RMFD photo folder, or (smoke runs) a folder of symlinks to its first ``limit`` photos."""
    from insightface_bfm.imaging import list_image_files

    if not limit:
        return RMFD
    subset = out / "data" / f"rmfd_subset_{limit}"
    shutil.rmtree(subset, ignore_errors=True)
    for rel in list_image_files(RMFD)[:limit]:
        (subset / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(RMFD / rel, subset / rel)
    return subset


def align_rmfd(out: Path, aligned: Path, limit: int | None):
    """The RMFD photos (the first ``limit`` of them) detected and aligned into ``aligned`` with
    ``bfm align``'s code: SCRFD at 320, threshold 0.3, the largest face. Returns (photo folder,
    align_folder's summary)."""
    from insightface_bfm.data.align import align_folder, load_detector

    photos = rmfd_photos(out, limit)
    detector = load_detector(DETECTOR, det_size=320, threshold=0.3)
    return photos, align_folder(photos, aligned, detector, policy="largest", progress=False)


def classifier_scores(pack_dir: Path, out: Path, max_rmfd: int | None, log) -> dict:
    """C on synthetic masked DevTest faces (bare vs masked, the Case 3 manifest's faces) and on the
    real masked RMFD photos after detection + alignment (``bfm align``)."""
    from insightface_bfm.evaluation.masked_pairs import load_manifest, render
    from insightface_bfm.imaging import list_image_files, read_image
    from insightface_bfm.runtime import MaskClassifierONNX
    from insightface_bfm.zoo.packs import load_pack

    pack = load_pack(pack_dir)
    classifier = MaskClassifierONNX(str(pack.classifier), threshold=pack.thresholds.mask_score)
    manifest = load_manifest(out / "manifests" / "pairsDevTest_both.json")
    bare_keys = sorted({e["image"] for e in manifest["entries"]})
    bare = np.stack([read_image(LFW / k) for k in bare_keys])
    masked = np.stack(
        [render(read_image(LFW / e["image"]), e, manifest["seed"]) for e in manifest["entries"]]
    )
    t = classifier.threshold
    s_bare, s_masked = classifier.scores(bare), classifier.scores(masked)
    synthetic = {
        "bare_faces": len(bare),
        "masked_faces": len(masked),
        "unmasked_specificity": float(np.mean(s_bare < t)),
        "masked_recall": float(np.mean(s_masked >= t)),
        "accuracy": float((np.sum(s_bare < t) + np.sum(s_masked >= t)) / (len(bare) + len(masked))),
    }
    log(
        f"classifier, synthetic DevTest masks: accuracy {100 * synthetic['accuracy']:.2f}% "
        f"(recall {100 * synthetic['masked_recall']:.2f}%, "
        f"specificity {100 * synthetic['unmasked_specificity']:.2f}%)"
    )
    aligned = out / "rmfd_aligned"
    shutil.rmtree(aligned, ignore_errors=True)
    rmfd, summary = align_rmfd(out, aligned, max_rmfd)
    crops_paths = list_image_files(aligned)
    crops = np.stack([read_image(aligned / p) for p in crops_paths])
    scores = classifier.scores(crops)
    real = {
        "photos": len(list_image_files(rmfd)),
        "faces_aligned": len(crops),
        "no_face": len(summary.misses),
        "masked_recall": float(np.mean(scores >= t)),
        "detector": "SCRFD-2.5G, 320, threshold 0.3, largest face",
    }
    log(
        f"classifier, real RMFD masks: recall {100 * real['masked_recall']:.2f}% on {len(crops)} faces "
        f"({real['no_face']} photos without a face)"
    )
    return {"threshold": t, "synthetic_devtest": synthetic, "rmfd_real": real}


def pack_smoke(pack_dir: Path) -> dict:
    """The pack loads in ``insightface_bfm.FaceAnalysis`` and finds + routes a face in a raw photo."""
    import cv2

    from insightface_bfm import FaceAnalysis

    app = FaceAnalysis(name=str(pack_dir), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(320, 320))
    photo = sorted((SHARED / "data" / "lfw_raw").rglob("*.jpg"))[0]
    faces = app.get(cv2.imread(str(photo)))
    return {
        "photo": photo.name,
        "faces": len(faces),
        "fields": sorted(k for k in faces[0].keys()) if faces else [],
    }


def previous_timings(log_path: Path) -> dict[str, float]:
    """Stage times of earlier invocations in DIR/run.log (for stages that ``--reuse`` skips)."""
    found = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            parts = line.split("]", 1)[-1].strip().split(":")
            if len(parts) == 2 and parts[1].strip().split(" ")[1:2] == ["s"]:
                found[parts[0].strip()] = float(parts[1].strip().split(" ")[0])
    return found


def git_state() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.rstrip()

    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty_files": [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()],
    }


def markdown(results: dict) -> str:
    rows = [
        "| model | Case 1 (both unmasked) | Case 2 (one masked) | Case 3 (both masked) |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "baseline1": "Baseline 1 (pretrained MobileFaceNet)",
        "baseline2": "Baseline 2 (fine-tuned on faces + masked faces)",
        "bfm": "BFM (C + E_F frozen + E_P fine-tuned, guided loss)",
        "bfm_one_threshold": "BFM, one threshold for E_F and E_P (the paper's comparison)",
    }
    for key, label in names.items():
        r = results["verification"].get(key)
        if r:
            if key == "bfm" and r["case1"].get("threshold_rule") == "per_extractor":
                label = label[:-1] + "; a threshold per extractor)"
            rows.append(
                f"| {label} | "
                + " | ".join(
                    f"{100 * r[f'case{c}']['accuracy']:.2f} ± {100 * r[f'case{c}']['std']:.2f}"
                    for c in (1, 2, 3)
                )
                + " |"
            )
    c = results.get("classifier")
    if c:
        rows.append("")
        rows.append(
            f"Classifier C: {100 * c['synthetic_devtest']['accuracy']:.2f}% on synthetic masked DevTest "
            f"faces; {100 * c['rmfd_real']['masked_recall']:.2f}% recall on real RMFD masks "
            f"({c['rmfd_real']['faces_aligned']} aligned faces)."
        )
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, help="override optim.epochs of both recipes")
    ap.add_argument("--lr", type=float, help="override optim.lr")
    ap.add_argument("--batch-size", type=int, help="override optim.batch_size")
    ap.add_argument("--max-steps", type=int, help="stop each training after this many steps (smoke runs)")
    ap.add_argument("--max-ids", type=int, help="train on the first N DevTrain people only (smoke runs)")
    ap.add_argument(
        "--val-ids",
        type=int,
        default=0,
        help="hold out N DevTrain people (2+ faces) and report each trained model on them "
        "(the trainer's held-out evaluation): for choosing settings without DevTest",
    )
    ap.add_argument("--max-pairs", type=int, help="test on the first N matched + N mismatched pairs (smoke)")
    ap.add_argument("--max-rmfd", type=int, help="classifier recall on the first N RMFD photos only (smoke)")
    ap.add_argument(
        "--no-test", action="store_true", help="skip everything on DevTest and RMFD (tuning runs)"
    )
    ap.add_argument("--no-head-init", action="store_true",
                    help="random ArcFace heads (--set init.head=random)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep trainings that an earlier invocation finished in DIR (then export and test)")
    ap.add_argument("--modes", default="baseline2,bfm", help="trainings to run (tuning runs: one of them)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for both trainings (repeatable)",
    )
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for path in (LFW, RMFD, PRETRAINED, DETECTOR):
        if not path.exists():
            raise SystemExit(f"{path} is absent: this benchmark needs ../shared beside the repository")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    timings: dict[str, float] = {}
    load: dict[str, list[float]] = {"start": list(os.getloadavg())}
    log_file = open(out / "run.log", "a")  # noqa: SIM115 - appended for the whole run

    def log(text):
        line = f"[{time.time() - t_start:7.1f} s] {text}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    def stage(name):
        class _Timer:
            def __enter__(self):
                self.t = time.time()
                log(f"-- {name}")

            def __exit__(self, *exc):
                timings[name] = round(time.time() - self.t, 1)
                load[name] = list(os.getloadavg())
                log(f"   {name}: {timings[name]:.1f} s (load average {load[name][0]:.2f})")

        return _Timer()

    results: dict = {
        "benchmark": "benchmarks/real_faces/run.py",
        "started_utc": started,
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "git": git_state(),
        "seed": args.seed,
        "mask_seed": MASK_SEED,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "data": {
            "lfw": str(LFW),
            "train_list": "peopleDevTrain.txt",
            "test_pairs": "pairsDevTest.txt",
            "pretrained": str(PRETRAINED),
        },
    }

    with stage("data"):
        train_dir, val_dir, info = training_folder(out, args.max_ids, args.val_ids, args.seed)
        from insightface_bfm.data import open_dataset

        dataset = open_dataset(str(train_dir))
        info.update(train_images=len(dataset), train_classes=dataset.num_classes)
        results["data"].update(info)
        log(f"training set: {dataset.describe()}")
    earlier = previous_timings(out / "run.log") if args.reuse else {}
    reuse = {m for m in args.modes.split(",") if args.reuse and (out / "runs" / m / "summary.json").is_file()}
    if args.no_head_init:
        args.set.append("init.head=random")

    results["training"] = {}
    threshold_rules = {}
    for mode in args.modes.split(","):
        recipe = load_recipe(mode, args, train_dir, val_dir, out / "runs" / mode)
        threshold_rules[mode] = recipe.eval.thresholds
        if mode in reuse:  # --reuse: a finished training of an earlier invocation (same recipe)
            run_dir = out / "runs" / mode
            summary = json.loads((run_dir / "summary.json").read_text())
            results["training"][mode] = {"recipe": yaml.safe_load((run_dir / "recipe.yaml").read_text()),
                                         "summary": summary, "reused_from_earlier_invocation": True}
            for name in (f"train_{mode}",):
                if name in earlier:
                    timings[name] = earlier[name]
            log(f"{mode}: reusing the finished training in {run_dir} ({timings.get(f'train_{mode}')} s then)")
            continue
        with stage(f"train_{mode}"):  # class centres (init.head) included
            summary = train(mode, recipe, log)
        results["training"][mode] = {"recipe": recipe.to_dict(), "summary": summary}
        results["head_init"] = recipe.init.head
        if "eval" in summary:
            log(
                f"{mode} on held-out DevTrain people: "
                + ", ".join(
                    f"case {c} {100 * summary['eval'][f'case{c}']['accuracy']:.2f}%" for c in (1, 2, 3)
                )
            )

    if args.no_test:
        results["timings_s"] = timings
        results["wall_s"] = round(time.time() - t_start, 1)
        from insightface_bfm.atomic import atomic_write_text

        atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
        log(f"tuning run done in {results['wall_s'] / 60:.1f} min -> {out}")
        return 0
    with stage("export"):
        from insightface_bfm.export import export_checkpoint
        from insightface_bfm.zoo.packs import build_pack

        shutil.copyfile(PRETRAINED, out / "baseline1.onnx")
        exported = export_checkpoint(out / "runs" / "baseline2", out / "export" / "baseline2")
        shutil.copyfile(exported["full"], out / "baseline2.onnx")
        export_checkpoint(out / "runs" / "bfm", out / "export" / "bfm")
        build_pack(out / "export" / "bfm", out / "pack", detector=DETECTOR, name="pack", overwrite=True)
        results["pack"] = {"path": str(out / "pack"), "detector": str(DETECTOR)}
        results["pack"]["face_analysis_check"] = pack_smoke(out / "pack")

    with stage("verification"):
        # BFM under its recipe's eval.thresholds (as `bfm models build` calibrates a pack), and
        # under one threshold as well when that is per extractor (the same embeddings, cached)
        rule = threshold_rules.get("bfm", "one")
        models = {
            "baseline1": (out / "baseline1.onnx", "one"),
            "baseline2": (out / "baseline2.onnx", "one"),
            "bfm": (out / "pack", rule),
            **({"bfm_one_threshold": (out / "pack", "one")} if rule != "one" else {}),
        }
        pairs = test_pairs(out, args.max_pairs)
        results["data"]["test_pairs_file"] = str(pairs)
        results["verification"] = evaluate_all(models, pairs, out, log)
    with stage("classifier"):
        results["classifier"] = classifier_scores(out / "pack", out, args.max_rmfd, log)

    results["timings_s"] = timings
    results["wall_s"] = round(time.time() - t_start, 1)
    # with --reuse, wall_s is this invocation only; the sum of the stages is the whole experiment
    results["stages_total_s"] = round(sum(timings.values()), 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    results["load_average"] = load
    results["load_average"]["end"] = list(os.getloadavg())
    from insightface_bfm.atomic import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    if "verification" in results:
        atomic_write_text(out / "results.md", markdown(results))
        print(markdown(results))
    log(f"done in {results['wall_s'] / 60:.1f} min (CPU time {results['cpu_s'] / 60:.1f} min) -> {out}")
    log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
