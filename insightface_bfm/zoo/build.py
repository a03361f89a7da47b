"""``bfm models build``: face photos + a pretrained recogniser -> an installed BFM pack.

    faces (one folder per identity) --align if raw--> 112x112 crops
        -> identities split: training | held out (2+ faces each, never trained on)
        -> bfm-train with recipes/build_pack.yaml: C and E_P trained, E_F = the base (frozen),
           ArcFace head started at the class centres (init.head: centres)
        -> export (three ONNX files) -> pack with the detector
        -> held-out verification, Cases 1/2/3 (our masks, bfm eval's protocol), for the base alone
           and for the pack; the pack's threshold = the best one on the pooled held-out pairs
           (one per extractor, E_F's and E_P's, with the recipe's eval.thresholds: per_extractor)
        -> open-set (1:N search) thresholds on the held-out identities at a target FPIR
           (evaluation/open_set.py: half enrolled, the rest searched as strangers, then swapped;
           probes bare and masked), stored as the manifest's thresholds.search_*
        -> the pack installed at ROOT/models/NAME, its manifest's ``bfm.build`` holding the table,
           the threshold, the base's sha256 and the recipe.

Every stage leaves its result in ``ROOT/models/.build/NAME/`` (alignment crop by crop, training
checkpoints, the split, the evaluation cache), so running the same command again after an
interruption continues where it stopped; other inputs there are refused (``fresh=True`` restarts).

``resolve_base`` is the one place a ``--base`` spec becomes an init spec for the trainer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..errors import PackError
from ..runlock import output_lock
from .download import sha256_file
from .packs import _MODEL_ID, find_detector, find_recognizer, resolve_root

BUILD_DIR = ".build"
CASES = ((1, None), (2, "one"), (3, "both"))
MASK_SEED = 0


def default_recipe() -> Path:
    """The shipped recipe (``recipes/build_pack.yaml`` in the repository links to it)."""
    return Path(str(resources.files("insightface_bfm.zoo").joinpath("build_pack.yaml")))


# -- inputs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseModel:
    """A pretrained recogniser as the trainer takes it: ``init`` spec, recipe overrides, sha256."""

    spec: str
    path: Path
    init: str
    overrides: tuple
    sha256: str


def resolve_base(spec: str, root=None) -> BaseModel:
    """``--base``: an ONNX file, an arcface_torch ``.pth``, a legacy MXNet checkpoint
    (``mxnet:PREFIX[,EPOCH]``, converted to ONNX first) or an installed insightface pack name (its
    recognition ONNX). The architecture (backbone, embedding size) is read from the weights so that
    the recipe's E_F and E_P fit them. New kinds of base are added here."""
    text = os.path.expanduser(str(spec))
    if text.startswith("mxnet:"):
        from ..export.from_mxnet import import_mxnet

        path = Path(import_mxnet(text)).resolve()  # cached by the checkpoint's sha256
        return BaseModel(str(spec), path, f"onnx:{path}", _onnx_architecture(path), sha256_file(path))
    if text.endswith((".pth", ".pt")):
        path = Path(text)
        if not path.is_file():
            raise PackError(f"--base {spec}: no such file")
        return BaseModel(str(spec), path.resolve(), str(path.resolve()), _pth_architecture(path),
                         sha256_file(path))
    if text.endswith(".onnx"):
        path = Path(text)
        if not path.is_file():
            raise PackError(f"--base {spec}: no such ONNX file")
    else:
        path = find_recognizer(spec, root)
    path = path.resolve()
    return BaseModel(str(spec), path, f"onnx:{path}", _onnx_architecture(path), sha256_file(path))


def _arch_overrides(arch: dict, embedding_size: int) -> tuple:
    name = arch.get("backbone")
    options = {k: v for k, v in arch.items() if k not in ("backbone", "embedding_size", "path")}
    out = [f"model.embedding_size={int(embedding_size)}"]
    if name != "onnx":  # a generic graph replaces the recipe's backbone as it is
        out += [f"model.backbone={name}", f"model.backbone_options={json.dumps(options)}"]
    return tuple(out)


def _onnx_architecture(path: Path) -> tuple:
    from ..export.from_onnx import import_onnx

    module = import_onnx(path)
    return _arch_overrides(module.bfm_architecture, module.embedding_size)


def _pth_architecture(path: Path) -> tuple:
    """The arcface_torch backbone whose parameter names and shapes the state dict matches."""
    import torch

    from ..nets import get_backbone
    from ..train.model import initial_weights
    from ..train.recipe import BACKBONES

    state = initial_weights(str(path), "full")
    fc = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if not fc:
        raise PackError(f"--base {path}: no linear embedding layer in the state dict")
    size = int(fc[-1].shape[0])
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in BACKBONES:
        with torch.device("meta"):  # shapes only: no memory, no initialisation (r100 is 65M weights)
            net = get_backbone(name, embedding_size=size)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
            return _arch_overrides({"backbone": name}, size)
    raise PackError(f"--base {path}: the state dict fits none of the backbones {', '.join(BACKBONES)}")


def read_people(path) -> list[str]:
    """Identity names of ``--people``: one per line, or LFW's people list (a count header, then
    ``name<TAB>images`` lines)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeError) as e:
        raise PackError(f"--people {path}: unreadable ({e})") from None
    lines = [ln for ln in lines if ln]
    if lines and lines[0].isdigit() and int(lines[0]) == len(lines) - 1:
        lines = lines[1:]  # LFW's header: the number of people that follow
    names = [ln.split("\t")[0].strip() for ln in lines]
    if not names:
        raise PackError(f"--people {path}: no identity names in it")
    return names


def _identities(faces: Path, people: list[str] | None) -> list[str]:
    from ..imaging import list_image_files

    if not faces.is_dir():
        raise PackError(f"--faces {faces}: no such folder (expected one sub-folder per identity)")
    found = sorted(e.name for e in os.scandir(faces) if e.is_dir() and not e.name.startswith("."))
    if people is not None:
        found_set, people_set = set(found), set(people)
        missing = [p for p in people if p not in found_set]
        if missing:
            raise PackError(f"--people: {len(missing)} listed identities have no folder in {faces}, "
                            f"e.g. {missing[0]!r}")
        found = [p for p in found if p in people_set]
    found = [p for p in found if list_image_files(faces / p)]
    if len(found) < 3:
        raise PackError(f"--faces {faces}: {len(found)} identity folders with images; need at least 3")
    return found


def _is_aligned(faces: Path, names: list[str]) -> bool:
    """Already 112x112 crops (used as they are) or raw photos (aligned first)? A sample decides."""
    from ..imaging import list_image_files, read_image

    sample = [faces / n / list_image_files(faces / n)[0] for n in names[:: max(1, len(names) // 8)][:8]]
    return all(read_image(p).shape[:2] == (112, 112) for p in sample)


def _link_folders(src: Path, names: list[str], dst: Path) -> Path:
    """``dst/<name>`` -> ``src/<name>`` for each name (symlinks: no copy of the faces)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in names:
        os.symlink(src.resolve() / name, dst / name, target_is_directory=True)
    return dst


# -- the build ------------------------------------------------------------------------------------

def build_pack_from_faces(
    name: str,
    faces,
    base,
    detector,
    *,
    people=None,
    recipe=None,
    root=None,
    overrides=(),
    holdout_share: float = 0.05,
    holdout_pairs: int = 1000,
    seed: int = 0,
    search_fpir: float = 0.01,
    low_memory: bool = False,
    fresh: bool = False,
    force: bool = False,
    progress: bool = True,
    echo=print,
) -> dict:
    """Train, evaluate and install the BFM pack ``ROOT/models/NAME`` (module docstring).

    ``detector``: an SCRFD ONNX file or an installed pack holding one. ``overrides``: recipe
    ``key=value`` strings (``--set``). ``search_fpir``: the target FPIR of the open-set thresholds.
    ``low_memory``: no in-memory copy of the decoded training faces (``data.cache=false``).
    Returns the build record stored in the manifest (with
    ``path``, the installed pack's folder).
    """
    from ..train.recipe import load_recipe

    t0 = time.time()
    if not isinstance(name, str) or not _MODEL_ID.fullmatch(name):
        raise PackError(f"pack name {name!r}: use letters, digits, '.', '_' or '-'")
    if not 0.0 < holdout_share < 1.0:
        raise PackError(f"--holdout {holdout_share}: the held-out share of identities must be in (0, 1)")
    if not 0.0 < search_fpir < 1.0:
        raise PackError(f"--fpir {search_fpir}: the target false-positive identification rate must be "
                        "in (0, 1)")
    if low_memory:
        overrides = (*overrides, "data.cache=false")
    root = resolve_root(root)
    target = root / "models" / name
    if target.exists() and not force:
        raise PackError(f"{target}: a pack named {name!r} is installed; --force replaces it")
    faces = Path(os.path.expanduser(str(faces))).resolve()
    det_path = find_detector(detector, root)
    names = _identities(faces, read_people(people) if people is not None else None)
    base_model = resolve_base(base, root)
    recipe_path = Path(recipe) if recipe is not None else default_recipe()
    work = root / "models" / BUILD_DIR / name
    run_dir = work / "run"

    def build_recipe(train_dir, check_paths=True):
        recipe_obj = load_recipe(recipe_path, [
            f"data.path={train_dir}",
            f"init.full={base_model.init}",
            f"init.partial={base_model.init}",
            f"train.output={run_dir}",
            f"train.progress={'true' if progress else 'false'}",
            *base_model.overrides,
            *overrides,
        ], check_paths=check_paths)
        if recipe_obj.mode != "bfm" or recipe_obj.compare:
            raise PackError(f"{recipe_path}: a pack needs mode: bfm (C, E_F and E_P), got {recipe_obj.mode}")
        return recipe_obj

    build_recipe(work / "data" / "train", check_paths=False)  # a bad recipe or --set fails before any work
    inputs = {
        "faces": str(faces),
        "identities_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "base_sha256": base_model.sha256,
        "detector_sha256": sha256_file(det_path),
        "recipe_sha256": sha256_file(recipe_path) if recipe_path.is_file() else None,
        "overrides": list(overrides),
        "holdout_share": holdout_share,
        "holdout_pairs": holdout_pairs,
        "seed": seed,
    }
    # one build of a name at a time: a second one would delete or relink the first one's folders
    with output_lock(work, "bfm models build", folder=False):
        if fresh and work.exists():
            shutil.rmtree(work)
        if (work / "inputs.json").is_file():
            if json.loads((work / "inputs.json").read_text()) != inputs:
                raise PackError(f"{work}: holds an unfinished build of {name!r} with other inputs; pass "
                                "--fresh to discard it, or rerun with the same inputs to continue it")
            echo(f"continuing the build in {work}")
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(work / "inputs.json", json.dumps(inputs, indent=2) + "\n")
        timings = {}

        # 1. faces: aligned crops as they are, raw photos through bfm align's code (resumable)
        t = time.time()
        images, names = prepare_faces(faces, names, det_path, work, progress, echo)
        timings["faces"] = round(time.time() - t, 1)

        # 2. identities: a share held out (2+ faces each) for the threshold and the held-out table
        train_names, held, pairs_csv = _split(images, names, work, holdout_share, holdout_pairs, seed)
        echo(f"identities: {len(train_names)} for training, {len(held)} held out "
             f"({holdout_pairs} held-out pairs)")
        echo(memory_note(images, train_names, cache=not low_memory and "data.cache=false" not in overrides))

        # 3. training (resumes from the run's last checkpoint)
        t = time.time()
        train_dir = _link_folders(images, train_names, work / "data" / "train")
        recipe_obj = build_recipe(train_dir)
        _train(recipe_obj, run_dir, echo)
        timings["training"] = round(time.time() - t, 1)

        # 4. export + pack (a staging pack, no threshold yet)
        t = time.time()
        from ..export import export_checkpoint

        export_checkpoint(run_dir, work / "export")
        staging = work / "pack"
        from .packs import build_pack

        build_pack(work / "export", staging, detector=det_path, name=name, overwrite=True)
        timings["export"] = round(time.time() - t, 1)

        # 5. held-out verification, Cases 1/2/3, base alone and the pack; the pack's threshold
        t = time.time()
        table, threshold = heldout_table(pairs_csv, images, staging, work / "cache", progress,
                                         thresholds=recipe_obj.eval.thresholds)
        timings["heldout"] = round(time.time() - t, 1)

        # 6. open-set thresholds on the held-out identities (a pack too small for them has none)
        t = time.time()
        from ..errors import BFMError
        from ..evaluation.open_set import calibrate_pack, format_search

        try:
            search = calibrate_pack(staging, images, people=held, fpir=search_fpir, seed=seed,
                                    cache_dir=work / "cache", progress=progress, write=False)
            echo(format_search(search))
        except BFMError as e:
            search = None
            echo(f"open-set thresholds not chosen ({e}); search will use the 1:1 threshold")
        timings["open_set"] = round(time.time() - t, 1)
        record = {
            "name": name,
            "base": {"spec": base_model.spec, "file": base_model.path.name, "sha256": base_model.sha256},
            "detector": {"file": det_path.name, "sha256": inputs["detector_sha256"]},
            "faces": {"folder": str(faces), "identities": len(names), "trained": len(train_names),
                      "held_out": len(held), "people_file": None if people is None else str(people)},
            "recipe": recipe_obj.to_dict(),
            "recipe_file": str(recipe_path),
            "heldout": table,
            "threshold": threshold,
            "timings_s": timings,
            "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        build_pack(work / "export", target, detector=det_path, name=name,
                   verification_distance=threshold["distance"],
                   verification_distance_partial=threshold["distance_partial"], build_info=record,
                   search=search, overwrite=True)
        timings["total"] = round(time.time() - t0, 1)
        atomic_write_text(work / "result.json", json.dumps({**record, "path": str(target)}, indent=2) + "\n")
        echo(format_table(record))
        echo(f"pack {name} installed at {target} in {timings['total'] / 60:.1f} min: "
             f"FaceAnalysis(name={name!r}, root={str(root)!r})")
        return {**record, "path": str(target)}


# peak resident memory of `bfm models build` on LFW DevTrain (4,038 identities, 9,525 aligned faces,
# MobileFaceNet base, 2-core CPU); docs/guides/open-set.md states it
MEASURED_PEAK_GB = 5.2
MEASURED_FACES = 9525


def memory_note(images: Path, train_names: list[str], cache: bool) -> str:
    """The line printed before training: the measured peak and what the image cache adds."""
    from ..imaging import list_image_files

    n = sum(len(list_image_files(images / name)) for name in train_names)
    cache_gb = n * 112 * 112 * 3 / 1e9
    state = (f"the decoded-face cache holds {cache_gb:.2f} GB of it (--low-memory: no cache, slower epochs)"
             if cache else "no decoded-face cache (--low-memory)")
    return (f"memory: peak about {MEASURED_PEAK_GB} GB measured on {MEASURED_FACES:,} faces; "
            f"this build trains on "
            f"{n:,} faces; {state}")


def prepare_faces(faces: Path, names: list[str], detector: Path, work: Path, progress: bool = True,
                  echo=print) -> tuple[Path, list[str]]:
    """(folder of 112x112 crops, identities with a face): ``faces`` itself when it holds aligned
    crops, else ``work/data/aligned`` made by ``bfm align``'s code (resumable, largest face)."""
    from ..data.align import align_folder, load_detector
    from ..imaging import list_image_files

    if _is_aligned(faces, names):
        echo(f"faces: {len(names)} identities of aligned 112x112 crops in {faces}")
        return faces, names
    echo(f"faces: {len(names)} identities of raw photos in {faces}; aligning them with {detector.name}")
    raw = _link_folders(faces, names, work / "data" / "raw")
    images = work / "data" / "aligned"
    summary = align_folder(raw, images, load_detector(detector), progress=progress)
    echo(f"aligned {summary.aligned} new faces ({summary.skipped} done before, "
         f"{len(summary.misses)} photos without a face)")
    return images, [n for n in names if (images / n).is_dir() and list_image_files(images / n)]


def _split(images: Path, names: list[str], work: Path, share: float, n_pairs: int, seed: int):
    """Held-out identities (2+ faces) and their pairs (CSV ``left,right,same``, paths under ``images``);
    fixed by ``seed`` and kept in ``work/split.json`` so that a resumed build uses the same split."""
    from ..imaging import list_image_files

    split_file, pairs_csv = work / "split.json", work / "heldout_pairs.csv"
    if split_file.is_file() and pairs_csv.is_file():
        split = json.loads(split_file.read_text())
        return split["train"], split["held_out"], pairs_csv
    files = {n: [f"{n}/{p.as_posix()}" for p in list_image_files(images / n)] for n in names}
    multi = [n for n in names if len(files[n]) >= 2]
    k = max(2, int(round(share * len(names))))
    if len(multi) < 2 or len(names) - k < 2:
        raise PackError(f"{images}: too few identities with 2+ faces to hold out ({len(multi)}); "
                        "add faces or lower --holdout")
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(multi, size=min(k, len(multi)), replace=False).tolist())
    held_set = set(held)
    train = [n for n in names if n not in held_set]
    # pairs: half same identity, half different, drawn from the held-out faces only
    keys = [f for n in held for f in files[n]]
    labels = np.array([i for i, n in enumerate(held) for _ in files[n]])
    from ..train.holdout import make_pairs

    a, b, same = make_pairs(labels, n_pairs, seed)
    lines = ["left,right,same"] + [f"{keys[i]},{keys[j]},{int(s)}" for i, j, s in zip(a, b, same)]
    atomic_write_text(pairs_csv, "\n".join(lines) + "\n")
    atomic_write_text(split_file, json.dumps({"train": train, "held_out": held}, indent=1) + "\n")
    return train, held, pairs_csv


def _train(recipe, run_dir: Path, echo) -> dict:
    """The trainer of ``bfm-train``; a finished run is kept, an interrupted one resumed."""
    from ..train.checkpoint import LAST
    from ..train.trainer import Trainer

    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and (run_dir / "recipe.yaml").is_file() and \
            (run_dir / "recipe.yaml").read_text() == recipe.to_yaml():
        echo(f"training: finished before in {run_dir}")
        return json.loads(summary_file.read_text())
    resume = (run_dir / LAST).is_file()
    return Trainer(recipe, resume=resume).fit()


def heldout_table(pairs_csv, images, pack, cache_dir, progress: bool = True, thresholds: str = "one"):
    """Accuracy per case (10 folds, ``bfm eval``'s protocol) on the held-out pairs of the pack and
    of its E_F alone (the "base" row: E_F is the base, frozen, with the shipped recipe): Case 1 as
    they are, Case 2 the second face masked, Case 3 both (our renderer, seed 0, the same masks for
    both rows). The pack's verification threshold = the best one on its pooled Case 1-3 pairs, with
    its accuracy per case. ``thresholds="per_extractor"`` (recipe key ``eval.thresholds``): the
    pack is measured, and its thresholds chosen, one per extractor (E_F's on the pooled pairs
    routed to E_F, E_P's on those routed to E_P).

    The pack runs first; its E_F row then reads the pack's embeddings from the cache
    (``PackFullExtractor``) instead of running E_F a second time."""
    from ..evaluation import evaluate
    from ..evaluation.embedders import BFMPackEmbedder, PackFullExtractor
    from ..evaluation.verification import RoutedDistances, best_threshold

    pack_embedder = BFMPackEmbedder(pack)
    table: dict = {"base": {}, "bfm": {}}
    pack_runs = []
    for model_name, embedder in (("bfm", pack_embedder), ("base", PackFullExtractor(pack_embedder))):
        for case, mask in CASES:
            res, ver, _ = evaluate(pairs_csv, pack, images=images, mask_pairs=mask, seed=MASK_SEED,
                                   cache_dir=cache_dir, progress=progress, embedder=embedder,
                                   thresholds=thresholds)
            table[model_name][f"case{case}"] = {"accuracy": res["accuracy"], "std": res["std"]}
            if model_name == "bfm":
                pack_runs.append(ver)
    same = np.concatenate([v.pairs[1] for v in pack_runs])
    if all(v.routes is not None for v in pack_runs):
        routes = RoutedDistances(*(np.concatenate([getattr(v.routes, k) for v in pack_runs])
                                   for k in ("full", "partial", "routed")))
        distance, distance_partial = routes.thresholds(same, lambda d, s: best_threshold(d, s)[0])
    else:
        distance_partial = None
        distance = best_threshold(np.concatenate([v.pairs[0] for v in pack_runs]), same)[0]
    # each pair judged once, by its extractor's threshold: per case, then pooled
    correct = [(v.pairs[0] < (distance if v.routes is None else v.routes.limits(distance, distance_partial)))
               == v.pairs[1] for v in pack_runs]
    per_case = {f"case{c}": float(np.mean(ok)) for (c, _), ok in zip(CASES, correct)}
    threshold = {"rule": thresholds, "distance": distance, "similarity": 1.0 - distance / 2.0,
                 "distance_partial": distance_partial,
                 "similarity_partial": None if distance_partial is None else 1.0 - distance_partial / 2.0,
                 "pooled_accuracy": float(np.mean(np.concatenate(correct))),
                 "accuracy_at_threshold": per_case, "pairs_per_case": int(len(pack_runs[0].pairs[0]))}
    return table, threshold


def format_table(record: dict) -> str:
    """The held-out table as printed by ``bfm models build``."""
    th = record["threshold"]
    rows = [
        f"Held-out verification ({record['faces']['held_out']} identities never trained on, "
        f"{th['pairs_per_case']} pairs per case, 10 folds; masks drawn by insightface_bfm.masks, "
        f"seed {MASK_SEED})",
        f"{'model':<34}{'Case 1':>15}{'Case 2':>15}{'Case 3':>15}",
        f"{'':<34}{'unmasked':>15}{'one mask':>15}{'both':>15}",
    ]
    labels = {"base": f"base alone ({record['base']['file']})", "bfm": "BFM pack (C + E_F + E_P)"}
    for key, label in labels.items():
        r = record["heldout"].get(key)
        if r:
            cells = "".join(f"{100 * r[f'case{c}']['accuracy']:>9.2f} ±{100 * r[f'case{c}']['std']:>4.1f}"
                            for c in (1, 2, 3))
            rows.append(f"{label:<34}{cells}")
    at = th["accuracy_at_threshold"]
    if th.get("distance_partial") is None:
        said = f"pack threshold: squared L2 distance {th['distance']:.2f} (cosine {th['similarity']:.3f})"
    else:
        said = (f"pack thresholds: squared L2 distance {th['distance']:.2f} for E_F (cosine "
                f"{th['similarity']:.3f}), {th['distance_partial']:.2f} for E_P (cosine "
                f"{th['similarity_partial']:.3f})")
    rows.append(f"{said}; accuracy there: case 1 {100 * at['case1']:.2f}%, case 2 {100 * at['case2']:.2f}%, "
                f"case 3 {100 * at['case3']:.2f}%")
    return "\n".join(rows)
