"""One evaluation run: a pair set + a model -> embeddings -> the protocol -> a results dict.

The pair set is a pairs file with an image folder (LFW ``pairs.txt``, MFR2, CSV) or an
insightface ``.bin``. Optionally one or both faces of every pair are masked first (see
``masked_pairs``). Each distinct face is embedded once; with ``cache_dir`` the embeddings are
kept on disk per model, so a second run (or a test) does not recompute them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_open
from ..data.pairs import PairList, guess_extension, read_pairs
from ..errors import DatasetError
from ..imaging import check_image, read_image
from . import masked_pairs
from .embedders import open_embedder, pair_embeddings
from .verification import (
    THRESHOLD_RULES,
    RoutedDistances,
    VerificationResult,
    evaluate_distances,
    pair_distances,
)

CASE_MODES = ("auto", "classifier", "labels", "none")


@dataclass
class PairSet:
    """Pairs whose image keys ``load`` turns into aligned crops; ``ident`` names a key's content."""

    pairs: PairList
    load: Callable[[str], np.ndarray]
    ident: Callable[[str], str]
    name: str
    fmt: str


def open_pair_set(path, images=None, fmt: str = "auto") -> PairSet:
    """A ``.bin`` set, or a pairs file (lfw | mfr2 | csv) with its image folder (default: beside it)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such pairs file or .bin set")
    if fmt == "bin" or (fmt == "auto" and path.suffix.lower() == ".bin"):
        from ..data.binsets import load_bin

        bins = load_bin(path)
        n = len(bins)
        pairs = PairList([str(2 * k) for k in range(n)], [str(2 * k + 1) for k in range(n)], bins.issame,
                         source=str(path))
        stamp = f"{os.path.abspath(path)}|{path.stat().st_size}|{path.stat().st_mtime_ns}"
        return PairSet(pairs, lambda key: bins.decode(int(key)), lambda key: f"{stamp}#{key}",
                       path.stem, "bin")
    pairs = read_pairs(path, fmt)
    root = Path(images) if images is not None else path.parent
    if not root.is_dir():
        raise DatasetError(f"{root}: image folder not found")
    pairs = guess_extension(pairs, root)

    def ident(key):
        p = root / key
        try:
            st = p.stat()
        except OSError:
            raise DatasetError(f"{p}: image of pairs file {path} not found") from None
        return f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}"

    def load(key):
        return read_image(root / key)

    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() == ".csv" else "lfw"
    return PairSet(pairs, load, ident, path.stem, fmt)


class EmbeddingCache:
    """Embeddings on disk, one ``.npz`` per model id; keys name the face's file and any mask."""

    def __init__(self, directory, model_id: str):
        self.path = Path(directory) / f"{model_id}.npz"
        self.store: dict[str, dict] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    keys = [str(k) for k in z["keys"]]
                    fields = [f for f in z.files if f != "keys"]
                    arrays = {f: z[f] for f in fields}
            except (OSError, ValueError, KeyError):
                return  # unreadable cache: recompute
            for i, key in enumerate(keys):
                self.store[key] = {f: arrays[f][i] for f in fields}

    def get(self, key: str):
        return self.store.get(key)

    def put(self, key: str, value: dict):
        self.store[key] = value
        self.dirty = True

    def save(self):
        if not self.dirty or not self.store:
            return
        keys = list(self.store)
        fields = list(self.store[keys[0]])
        arrays = {f: np.stack([self.store[k][f] for k in keys]) for f in fields}
        with atomic_open(self.path, "wb") as f:
            np.savez(f, keys=np.array(keys), **arrays)
        self.dirty = False


def _embed_views(embedder, views: list[tuple[str, str, Callable]], cache, batch: int, progress: bool):
    """Embed every view (key, ident, loader) once; returns a dict of stacked arrays."""
    from tqdm import tqdm

    results: dict[str, dict] = {}
    todo = []
    for key, ident, loader in views:
        hit = cache.get(ident) if cache is not None else None
        if hit is not None:
            results[key] = hit
        else:
            todo.append((key, ident, loader))
    bar = tqdm(total=len(todo), desc="embedding", unit="face", disable=not progress or not todo)
    for s in range(0, len(todo), batch):
        chunk = todo[s : s + batch]
        crops = np.stack([check_image(loader(), key, size=112) for key, _, loader in chunk])
        out = embedder.embed(crops)
        for i, (key, ident, _) in enumerate(chunk):
            value = {f: np.asarray(v[i]) for f, v in out.items()}
            results[key] = value
            if cache is not None:
                cache.put(ident, value)
        bar.update(len(chunk))
    bar.close()
    if cache is not None:
        cache.save()
    keys = [v[0] for v in views]
    fields = getattr(embedder, "fields", None) or list(results[keys[0]])  # a view of fewer outputs
    return {f: np.stack([results[k][f] for k in keys]) for f in fields}


def evaluate(
    pairs_path,
    model,
    images=None,
    fmt: str = "auto",
    flip: bool = False,
    mask_pairs: str | None = None,
    seed: int = 0,
    mask_manifest=None,
    mask_types=None,
    cases: str = "auto",
    n_folds: int = 10,
    batch_size: int = 64,
    cache_dir=None,
    mask_threshold: float | None = None,
    progress: bool = True,
    embedder=None,
    root=None,
    thresholds: str = "one",
) -> tuple[dict, VerificationResult, dict | None]:
    """Evaluate ``model`` on a pair set. Returns (results dict for JSON, VerificationResult, mask
    manifest or None).

    ``mask_pairs``: None, "one" or "both" (synthetic masks, fixed ``seed``), or ``mask_manifest``
    (a manifest saved by an earlier run) to rebuild exactly that masked set.
    ``cases``: "classifier" (a routed model's mask classifier decides each face), "labels" (the
    file's case column, or the case the masking built), "none", or "auto" (classifier when the
    model has one, else labels when known).
    ``thresholds``: "one" threshold for every pair (the paper), or "per_extractor" (a routed
    model: E_F's pairs and E_P's pairs each get their own, see ``verification``; a model with
    one extractor has one either way).
    """
    if cases not in CASE_MODES:
        raise DatasetError(f"cases {cases!r}: expected one of {', '.join(CASE_MODES)}")
    if thresholds not in THRESHOLD_RULES:
        raise DatasetError(f"thresholds {thresholds!r}: expected one of {', '.join(THRESHOLD_RULES)}")
    t0 = time.time()
    pair_set = open_pair_set(pairs_path, images, fmt)
    pairs = pair_set.pairs
    manifest = None
    if mask_manifest is not None:
        manifest = masked_pairs.load_manifest(mask_manifest)
        seed = int(manifest["seed"])
        mask_pairs = manifest["mode"]
        for e in manifest["entries"]:
            if e["pair"] >= len(pairs) or e["image"] != (pairs.left, pairs.right)[e["side"]][e["pair"]]:
                raise DatasetError(f"{mask_manifest}: entry for pair {e['pair']} does not match {pairs_path}")
    elif mask_pairs is not None:
        manifest = masked_pairs.plan_masks(pairs.left, pairs.right, mask_pairs, seed, types=mask_types)
    if embedder is None:
        embedder = open_embedder(model, flip=flip, batch_size=batch_size, mask_threshold=mask_threshold,
                                 root=root)

    # views: one per distinct unmasked image, one per masked face of a pair
    masked_at = {(e["pair"], e["side"]): e for e in (manifest["entries"] if manifest else [])}
    view_index: dict[str, int] = {}
    views = []

    def view(k: int, side: int) -> int:
        image = (pairs.left, pairs.right)[side][k]
        entry = masked_at.get((k, side))
        if entry is None:
            key, ident = image, pair_set.ident(image)
            loader = lambda image=image: pair_set.load(image)  # noqa: E731
        else:
            key = f"{image}#mask:{k}:{side}"
            style = json.dumps(entry["style"], sort_keys=True)
            ident = f"{pair_set.ident(image)}#mask:{manifest['seed']}:{k}:{side}:{style}"

            def loader(image=image, entry=entry):
                return masked_pairs.render(pair_set.load(image), entry, manifest["seed"])

        if key not in view_index:
            view_index[key] = len(views)
            views.append((key, ident, loader))
        return view_index[key]

    left = np.array([view(k, 0) for k in range(len(pairs))])
    right = np.array([view(k, 1) for k in range(len(pairs))])
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, embedder.model_id)
    t_embed = time.time()
    emb = _embed_views(embedder, views, cache, batch=256, progress=progress)
    t_embed = time.time() - t_embed
    threshold = getattr(embedder, "mask_threshold", None)
    e1, e2, classifier_cases = pair_embeddings(emb, left, right, threshold)
    routes = None
    if thresholds == "per_extractor" and classifier_cases is not None:
        routes = RoutedDistances(pair_distances(emb["full"][left], emb["full"][right]),
                                 pair_distances(emb["partial"][left], emb["partial"][right]),
                                 classifier_cases > 1)
        dist = routes.chosen  # pair_distances(e1, e2), bit for bit: the same rows, normalised alike
    else:
        dist = pair_distances(e1, e2)

    label_cases = pairs.cases
    if label_cases is None and manifest is not None:
        label_cases = np.full(len(pairs), masked_pairs.expected_case(mask_pairs))
    if cases == "auto":
        if classifier_cases is not None:
            cases = "classifier"
        else:
            cases = "labels" if label_cases is not None else "none"
    if cases == "classifier" and classifier_cases is None:
        raise DatasetError(f"{model}: has no mask classifier; use --cases labels or none")
    if cases == "labels" and label_cases is None:
        raise DatasetError(f"{pairs_path}: has no case labels (a CSV 'case' column or --mask-pairs "
                           "gives them)")
    case_array = {"classifier": classifier_cases, "labels": label_cases, "none": None}[cases]
    result = evaluate_distances(dist, pairs.issame, pairs.folds, case_array, n_folds,
                                case_source=cases if case_array is not None else None, routes=routes)
    out = {
        "set": pair_set.name,
        "pairs_file": str(pairs_path),
        "format": pair_set.fmt,
        "images": None if images is None else str(images),
        "model": str(model),
        "model_description": embedder.description,
        "routed": bool(embedder.routed),
        "flip": bool(flip),
        "mask_pairs": None if manifest is None else {"mode": mask_pairs, "seed": int(seed),
                                                      "n_masked_faces": len(manifest["entries"]),
                                                      "types": manifest.get("types")},
        "protocol": {
            "distance": "squared L2 of L2-normalised embeddings",
            "thresholds": "0 to 3.99 step 0.01, chosen on the other folds; same if distance < threshold",
            "threshold_rule": result.threshold_rule,
            "n_folds": n_folds if pairs.folds is None else int(len(np.unique(pairs.folds))),
        },
        "n_faces_embedded": len(views),
        "embedding_seconds": round(t_embed, 2),
        "total_seconds": round(time.time() - t0, 2),
        **result.to_dict(),
    }
    if classifier_cases is not None:
        out["masked_fraction"] = float(np.mean(emb["mask_score"] >= (threshold or 0.5)))
    return out, result, manifest
