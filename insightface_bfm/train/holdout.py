"""Verification on held-out identities, per matching case (the paper's Table II).

From a labelled set of identities never seen in training, one list of pairs (half same
identity, half different) is scored three times:

    Case 1  both faces unmasked
    Case 2  the second face masked
    Case 3  both faces masked

Masks are drawn once per image with a fixed generator, so every model of a comparison sees
the very same masked faces. A BFM model routes each pair as the paper does: if C says either
face is masked, both are embedded with E_P, else both with E_F; the baselines use their one
model. Accuracy is the 10-fold protocol of ``insightface_bfm.evaluation.verification``
(threshold chosen on nine folds, measured on the tenth), run on each case's pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BFMError
from ..evaluation.verification import (
    THRESHOLD_RULES,
    RoutedDistances,
    contiguous_folds,
    kfold_accuracy,
    kfold_accuracy_per_extractor,
    pair_distances,
)
from .model import BFMModel

CASES = {1: "both unmasked", 2: "one masked", 3: "both masked"}


def make_pairs(labels: np.ndarray, n_pairs: int, seed: int):
    """(first index, second index, same identity) for ``n_pairs`` pairs, half genuine, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    by_id = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    multi = [c for c, idx in by_id.items() if len(idx) >= 2]
    ids = list(by_id)
    if not multi or len(ids) < 2:
        raise BFMError("the held-out set needs at least 2 identities, one with 2+ images")
    pairs = []
    for k in range(n_pairs):
        if k % 2 == 0:
            a, b = rng.choice(by_id[multi[rng.integers(len(multi))]], size=2, replace=False)
            pairs.append((a, b, True))
        else:
            ca, cb = rng.choice(len(ids), size=2, replace=False)
            pairs.append((rng.choice(by_id[ids[ca]]), rng.choice(by_id[ids[cb]]), False))
    order = rng.permutation(len(pairs))
    a, b, same = (np.array(col) for col in zip(*[pairs[i] for i in order]))
    return a.astype(np.int64), b.astype(np.int64), same.astype(bool)


class _Embeddings:
    """One image set under each of a model's networks ("full", "partial", "p_masked"), each
    computed on first use: a case that never reads an extractor does not pay for running it
    (a route that sends every masked pair to E_P never runs E_F on the masked faces)."""

    def __init__(self, model: BFMModel, images: torch.Tensor, batch_size: int, device):
        self.model, self.images, self.batch_size, self.device = model, images, batch_size, device
        self._done = {}

    @torch.no_grad()
    def __getitem__(self, key: str):
        if key not in self._done:
            m = self.model
            run = {"full": lambda x: m.embed(x, "full"),
                   "partial": None if m.partial is None else lambda x: m.embed(x, "partial"),
                   "p_masked": None if m.classifier is None else m.mask_probability}[key]
            self._done[key] = None if run is None else torch.cat([
                run(self.images[i:i + self.batch_size].to(self.device)).cpu()
                for i in range(0, len(self.images), self.batch_size)]).numpy()
        return self._done[key]


def evaluate_holdout(model: BFMModel, dataset, pairs: int = 600, folds: int = 10, batch_size: int = 128,
                     seed: int = 1234, device="cpu", mask_types=None, route: str = "classifier",
                     thresholds: str = "one") -> dict:
    """Accuracy per case on held-out identities (``dataset``: a FaceDataset or an open_dataset path).

    Returns ``{"case1": {"accuracy", "std", "routed_partial"}, ..., "classifier_accuracy",
    "classifier_recall", "classifier_specificity", "pairs"}``; ``routed_partial`` is the share of
    pairs a BFM model sent to E_P. ``route``: "classifier" (the paper's rule, C decides), "truth"
    (the true mask state decides: what a perfect C would do) or "partial" (E_P for every pair).
    ``thresholds``: "one" for every pair, or "per_extractor" (recipe key ``eval.thresholds``).
    """
    return evaluate_holdout_per_mask_set(model, dataset, {"masks": mask_types}, pairs=pairs, folds=folds,
                                         batch_size=batch_size, seed=seed, device=device, route=route,
                                         thresholds=thresholds)["masks"]


def evaluate_holdout_per_mask_set(model: BFMModel, dataset, mask_sets: dict, pairs: int = 600,
                                  folds: int = 10, batch_size: int = 128, seed: int = 1234, device="cpu",
                                  route: str = "classifier", thresholds: str = "one") -> dict:
    """``evaluate_holdout`` once per set of mask types (``mask_sets``: name -> types, None for all)
    on the same pairs: ``{name: result}``, each result what ``evaluate_holdout`` gives for those
    types. The bare faces are embedded once for all sets (benchmarks/mask_families.py measures
    every mask family on one model)."""
    if route not in ("classifier", "truth", "partial"):
        raise ValueError(f"route must be classifier, truth or partial, got {route!r}")
    if thresholds not in THRESHOLD_RULES:
        raise ValueError(f"thresholds must be one of {THRESHOLD_RULES}, got {thresholds!r}")
    from ..data import open_dataset
    from ..masks.batched import MaskAugment
    from .trainer import to_network_tensor

    if isinstance(dataset, str):
        dataset = open_dataset(dataset)
    first, second, same = make_pairs(dataset.labels, pairs, seed)
    used = np.unique(np.concatenate([first, second]))
    samples = {int(i): dataset[int(i)] for i in used}
    bad = [i for i, s in samples.items() if s is None]
    if bad:
        keep = ~(np.isin(first, bad) | np.isin(second, bad))
        first, second, same = first[keep], second[keep], same[keep]
        used = np.setdiff1d(used, bad)
    row = {int(i): r for r, i in enumerate(used)}
    images = to_network_tensor(torch.from_numpy(np.stack([samples[int(i)][0] for i in used])))
    a = np.array([row[int(i)] for i in first])
    b = np.array([row[int(i)] for i in second])
    # make_pairs shuffles, so contiguous folds already mix same and different pairs; they are kept
    # (rather than the balanced folds of a pair file) so every held-out number stays comparable
    fold_ids = contiguous_folds(len(same), folds)

    was_training = model.training
    model.eval()
    try:
        plain = _Embeddings(model, images, batch_size, device)
        results = {}
        for name, mask_types in mask_sets.items():
            # one fixed mask per image, identical for every model evaluated with the same seed;
            # placed at the default jitter whatever the training recipe used, so runs with
            # different placements are measured on the same masks
            masker = MaskAugment(types=mask_types, p=1.0)
            generator = torch.Generator().manual_seed(seed)
            masked = torch.cat([masker(images[i:i + batch_size], generator=generator)[0]
                                for i in range(0, len(images), batch_size)])
            cover = _Embeddings(model, masked, batch_size, device)
            results[name] = _score(model, plain, cover, a, b, same, fold_ids, route, thresholds)
    finally:
        model.train(was_training)
    return results


def _score(model, plain, cover, a, b, same, fold_ids, route, thresholds) -> dict:
    """The three cases' accuracies and C's scores from the bare and masked faces' embeddings."""
    result = {"pairs": int(len(same))}
    if plain["p_masked"] is not None:
        said = np.concatenate([plain["p_masked"] < 0.5, cover["p_masked"] >= 0.5])
        result["classifier_accuracy"] = float(said.mean())
        result["classifier_recall"] = float(np.mean(cover["p_masked"] >= 0.5))
        result["classifier_specificity"] = float(np.mean(plain["p_masked"] < 0.5))
    else:
        result["classifier_accuracy"] = result["classifier_recall"] = result["classifier_specificity"] = None
    for case, (emb_a, emb_b, truth_a, truth_b) in {
        1: (plain, plain, False, False),
        2: (plain, cover, False, True),
        3: (cover, cover, True, True),
    }.items():
        def distances(key, emb_a=emb_a, emb_b=emb_b):
            return pair_distances(emb_a[key][a], emb_b[key][b])

        if model.partial is None:
            partial = np.zeros(len(a), dtype=bool)
            acc = kfold_accuracy(distances("full"), same, fold_ids)
        else:
            if route == "partial":
                partial = np.ones(len(a), dtype=bool)
            elif model.classifier is not None and route == "classifier":
                # the paper's rule: either face classified masked -> both through E_P
                partial = (emb_a["p_masked"][a] >= 0.5) | (emb_b["p_masked"][b] >= 0.5)
            else:  # asked for, or no classifier in this model: the true mask state routes
                partial = np.full(len(a), truth_a or truth_b)
            if thresholds == "per_extractor":  # each extractor's threshold may use all pairs
                routes = RoutedDistances(distances("full"), distances("partial"), partial)
                acc = kfold_accuracy_per_extractor(routes, same, fold_ids)
            else:  # one threshold on the chosen distances: an extractor no pair took is not run
                chosen = np.zeros(len(a))
                for key, where in (("full", ~partial), ("partial", partial)):
                    if where.any():
                        chosen = np.where(where, distances(key), chosen)
                acc = kfold_accuracy(chosen, same, fold_ids)
        result[f"case{case}"] = {"accuracy": acc.mean, "std": acc.std,
                                 "routed_partial": float(partial.mean())}
    return result
