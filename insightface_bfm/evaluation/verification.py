"""The verification protocol: pair distances -> 10-fold accuracy, ROC, TAR@FAR, EER, per case.

The same protocol as insightface's arcface_torch evaluation (LFW, CFP, AgeDB ...):
L2-normalised embeddings, squared L2 distance between the two faces of a pair (0 .. 4),
the pairs split into 10 folds, for each fold the threshold with the best accuracy on the
other 9 folds (candidates 0, 0.01, ..., 3.99; a pair is "same" when its distance is
strictly below the threshold; ties go to the smallest threshold), and the accuracy of
that threshold on the held-out fold. The reported accuracy is the mean over folds, with
the (population) standard deviation.

Folds are LFW's own when the pairs file says so (the 10-fold header of pairs.txt), else
balanced folds (``balanced_folds``): the same-identity pairs, in order, cut into contiguous blocks
sized like scikit-learn's ``KFold`` without shuffling (the first ``n % k`` blocks hold one pair
more), the different-identity pairs likewise, and fold k joins the k-th block of each. Where the
plain contiguous blocks of the list already hold a k-th of each kind (the pair lists of
arcface_torch's .bin sets, LFW's pairs.txt), these are exactly those blocks. A list of all same
pairs and then all different ones (LFW's pairsDevTest.txt, 500 + 500) would otherwise give folds
of one kind each, every threshold chosen on one kind fewer than the fold it judges: a bias against
the held-out kind, the larger the flatter a model's accuracy is around its best threshold.

A routed model (C, E_F and E_P) can also be held to one threshold per extractor
(``thresholds="per_extractor"``, ``kfold_accuracy_per_extractor``): E_F's and E_P's distances
live in two different embedding spaces, so one threshold for both is a compromise between them.
Each extractor's threshold is then chosen, on the other folds, on the pairs the pair rule sent
to it, or on all of them under its distances when fewer than ``MIN_ROUTE_PAIRS`` went its way (a
handful of pairs cannot place a threshold: one pair is a whole percent of them). The paper
compares by one threshold: ``"one"`` is the default.

On top of that, from the whole set without folds: the ROC curve, its area, the equal
error rate, and TAR at FAR 1e-3 / 1e-4 (null, with the reason, where the set has too few
different-identity pairs to measure that FAR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import DatasetError

# 0, 0.01, ..., 3.99 as arcface_torch uses; squared distances of unit vectors lie in [0, 4].
THRESHOLDS = np.arange(0, 4, 0.01)
FAR_TARGETS = (1e-3, 1e-4)
CASE_NAMES = {1: "both unmasked", 2: "one masked", 3: "both masked"}
# "one" threshold for every pair (the paper, arcface_torch) or one per extractor (routed models)
THRESHOLD_RULES = ("one", "per_extractor")
MIN_ROUTE_PAIRS = 100


def l2_normalize(x) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def pair_distances(emb1, emb2) -> np.ndarray:
    """Squared L2 distance between the normalised rows of ``emb1`` and ``emb2``."""
    a, b = l2_normalize(emb1), l2_normalize(emb2)
    if a.shape != b.shape:
        raise DatasetError(f"embedding arrays differ in shape: {a.shape} vs {b.shape}")
    return np.sum((a - b) ** 2, axis=1)


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair: contiguous blocks in order, the first ``n % n_folds`` one larger."""
    _check_fold_count(n, n_folds)
    return _blocks(n, n_folds)


def _check_fold_count(n: int, n_folds: int) -> None:
    if n_folds < 2:
        raise DatasetError(f"need at least 2 folds, got {n_folds}")
    if n < n_folds:
        raise DatasetError(f"{n} pairs cannot be split into {n_folds} folds")


def _blocks(n: int, n_folds: int) -> np.ndarray:
    # n items in order -> n_folds contiguous blocks, sized like scikit-learn's KFold (some may be empty)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def balanced_folds(issame, n_folds: int = 10) -> np.ndarray:
    """Fold id per pair: fold k holds the k-th contiguous block (``contiguous_folds``) of the same
    pairs in order and the k-th of the different pairs; see the module's docstring."""
    issame = np.asarray(issame, dtype=bool)
    _check_fold_count(len(issame), n_folds)
    folds = np.empty(len(issame), dtype=np.int64)
    for kind in (True, False):
        where = np.flatnonzero(issame == kind)
        folds[where] = _blocks(len(where), n_folds)
    return folds


def _accuracy_per_threshold(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    # (T, N) boolean table; 400 x a few thousand pairs is small.
    predicted = dist[None, :] < thresholds[:, None]
    return (predicted == issame[None, :]).mean(axis=1)


@dataclass
class RoutedDistances:
    """A routed model's pairs: both extractors' distances for every pair, and the pair rule's
    choice (``routed``: True where either face was classified masked, so E_P compares them)."""

    full: np.ndarray
    partial: np.ndarray
    routed: np.ndarray

    def __post_init__(self):
        self.full = np.asarray(self.full, dtype=np.float64)
        self.partial = np.asarray(self.partial, dtype=np.float64)
        self.routed = np.asarray(self.routed, dtype=bool)
        if not (self.full.shape == self.partial.shape == self.routed.shape) or self.full.ndim != 1:
            raise DatasetError(f"routed distances: full {self.full.shape}, partial {self.partial.shape} "
                               f"and routed {self.routed.shape} must be equal-length vectors")

    @property
    def chosen(self) -> np.ndarray:
        """Each pair's distance under the extractor the pair rule picked."""
        return np.where(self.routed, self.partial, self.full)

    def limits(self, t_full, t_partial) -> np.ndarray:
        """Each pair's threshold: its extractor's (numbers, or arrays with one per pair)."""
        return np.where(self.routed, t_partial, t_full)

    def subset(self, select) -> RoutedDistances:
        return RoutedDistances(self.full[select], self.partial[select], self.routed[select])

    def thresholds(self, issame, pick, select=None) -> tuple[float, float]:
        """(E_F's, E_P's) threshold, each chosen by ``pick(dist, issame)`` on the pairs (of
        ``select``) routed to that extractor, or on all of them when fewer than
        ``MIN_ROUTE_PAIRS`` of those, or no same or no different pair, went its way."""
        issame = np.asarray(issame, dtype=bool)
        select = np.ones(len(issame), bool) if select is None else np.asarray(select, bool)
        out = []
        for dist, on_route in ((self.full, ~self.routed), (self.partial, self.routed)):
            use = select & on_route
            if use.sum() < MIN_ROUTE_PAIRS or issame[use].all() or not issame[use].any():
                use = select
            out.append(pick(dist[use], issame[use]))
        return out[0], out[1]


@dataclass
class FoldAccuracy:
    mean: float
    std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    n_pairs: int
    fold_source: str
    # per-extractor thresholds: fold_thresholds are E_F's, these E_P's
    fold_thresholds_partial: list[float] | None = None

    def to_dict(self) -> dict:
        out = {
            "accuracy": self.mean,
            "std": self.std,
            "fold_accuracies": self.fold_accuracies,
            # the candidates are 0.01 steps of np.arange: 1.6400000000000001 is written 1.64
            "fold_thresholds": [round(t, 6) for t in self.fold_thresholds],
            "n_pairs": self.n_pairs,
            "folds": self.fold_source,
        }
        if self.fold_thresholds_partial is not None:
            out["fold_thresholds_partial"] = [round(t, 6) for t in self.fold_thresholds_partial]
        return out


def _fold_ids(issame: np.ndarray, folds, n_folds: int) -> tuple[np.ndarray, str]:
    n = len(issame)
    if folds is None:
        return balanced_folds(issame, n_folds), f"{n_folds} balanced folds (a share of each kind of pair)"
    folds = np.asarray(folds)
    if folds.shape != (n,):
        raise DatasetError(f"fold ids {folds.shape} do not match the {n} pairs")
    if len(np.unique(folds)) < 2:
        raise DatasetError("cross-validation needs at least 2 folds")
    return folds, f"{len(np.unique(folds))} folds given by the pairs file"


def _protocol_pick(thresholds):
    """The protocol's choice on training folds: the best accuracy, ties to the smallest."""
    def pick(dist, issame):
        return float(thresholds[int(np.argmax(_accuracy_per_threshold(dist, issame, thresholds)))])
    return pick


def kfold_accuracy(
    dist, issame, folds=None, n_folds: int = 10, thresholds=THRESHOLDS
) -> FoldAccuracy:
    """Cross-validated verification accuracy (the arcface_torch / LFW protocol).

    ``folds``: fold id per pair (e.g. LFW's own), or None for balanced folds (``balanced_folds``).
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if dist.shape != issame.shape or dist.ndim != 1:
        raise DatasetError(f"distances {dist.shape} and labels {issame.shape} must be equal-length vectors")
    folds, source = _fold_ids(issame, folds, n_folds)
    pick = _protocol_pick(np.asarray(thresholds, dtype=np.float64))
    accs, chosen = [], []
    for f in np.unique(folds):
        test = folds == f
        best = pick(dist[~test], issame[~test])
        accs.append(float(np.mean((dist[test] < best) == issame[test])))
        chosen.append(best)
    return FoldAccuracy(float(np.mean(accs)), float(np.std(accs)), accs, chosen, len(dist), source)


def kfold_accuracy_per_extractor(
    routes: RoutedDistances, issame, folds=None, n_folds: int = 10, thresholds=THRESHOLDS
) -> FoldAccuracy:
    """``kfold_accuracy`` with one threshold per extractor (``RoutedDistances.thresholds``),
    both chosen on the other folds; a pair is judged by its own extractor's threshold."""
    issame = np.asarray(issame, dtype=bool)
    if routes.full.shape != issame.shape:
        raise DatasetError(f"distances {routes.full.shape} and labels {issame.shape} must be equal-length "
                           "vectors")
    folds, source = _fold_ids(issame, folds, n_folds)
    pick = _protocol_pick(np.asarray(thresholds, dtype=np.float64))
    dist = routes.chosen
    accs, t_full, t_partial = [], [], []
    for f in np.unique(folds):
        test = folds == f
        tf, tp = routes.thresholds(issame, pick, select=~test)
        limit = routes.limits(tf, tp)[test]
        accs.append(float(np.mean((dist[test] < limit) == issame[test])))
        t_full.append(tf)
        t_partial.append(tp)
    return FoldAccuracy(float(np.mean(accs)), float(np.std(accs)), accs, t_full, len(issame), source,
                        fold_thresholds_partial=t_partial)


def best_threshold(dist, issame, thresholds=THRESHOLDS) -> tuple[float, float]:
    """(threshold, accuracy): the candidate with the best accuracy on all these pairs, for a
    deployed system's one threshold (the protocol's rule: same if distance < threshold; ties go to
    the middle of the best run of candidates rather than its edge)."""
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if dist.size == 0 or issame.all() or not issame.any():
        raise DatasetError("choosing a threshold needs both same and different pairs")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    acc = _accuracy_per_threshold(dist, issame, thresholds)
    best = np.flatnonzero(acc == acc.max())
    run = best[: np.argmax(np.diff(np.append(best, best[-1] + 2)) > 1) + 1]  # first run of ties
    pick = int(run[len(run) // 2])
    return float(thresholds[pick]), float(acc[pick])


def roc_curve(dist, issame):
    """Exact ROC over all distance thresholds: (far, tar, threshold) arrays, far rising.

    A pair is accepted when its distance is <= threshold; the first point (0, 0) accepts none.
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    n_pos, n_neg = int(issame.sum()), int((~issame).sum())
    if n_pos == 0 or n_neg == 0:
        raise DatasetError(f"ROC needs both same and different pairs (got {n_pos} same, {n_neg} different)")
    order = np.argsort(dist, kind="stable")
    d, same = dist[order], issame[order]
    # one point per distinct distance: the last index of each run of equal distances
    last = np.r_[np.nonzero(np.diff(d))[0], len(d) - 1]
    tp = np.cumsum(same)[last]
    fp = np.cumsum(~same)[last]
    far = np.r_[0.0, fp / n_neg]
    tar = np.r_[0.0, tp / n_pos]
    thr = np.r_[-np.inf, d[last]]
    return far, tar, thr


def roc_auc(far, tar) -> float:
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def equal_error_rate(far, tar) -> float:
    """The rate where false accepts equal false rejects, interpolated on the ROC."""
    frr = 1.0 - np.asarray(tar)
    gap = np.asarray(far) - frr  # rises from -1 to +1 along the curve
    k = int(np.argmax(gap >= 0))
    if k == 0:
        return float(far[0])
    g0, g1 = gap[k - 1], gap[k]
    t = 0.0 if g1 == g0 else -g0 / (g1 - g0)
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def tar_at_far(dist, issame, far_target: float) -> tuple[float | None, float | None, str | None]:
    """(TAR, threshold, None) at the largest threshold with FAR <= ``far_target``, or
    (None, None, reason) when the set has fewer than 1/far different pairs: then FAR can
    only be 0 or >= 1/n_neg and the target is not measurable."""
    issame = np.asarray(issame, dtype=bool)
    n_neg = int((~issame).sum())
    need = math.ceil(1.0 / far_target - 1e-9)
    if n_neg < need:
        reason = f"needs >= {need} different-identity pairs to measure FAR {far_target:g}, has {n_neg}"
        return None, None, reason
    far, tar, thr = roc_curve(dist, issame)
    k = int(np.nonzero(far <= far_target + 1e-12)[0][-1])
    return float(tar[k]), float(thr[k]), None


@dataclass
class VerificationResult:
    """Everything ``evaluate_distances`` measures on one set of pairs (JSON via ``to_dict``)."""

    accuracy: FoldAccuracy
    auc: float
    eer: float
    tar_at_far: dict
    n_same: int
    n_different: int
    cases: dict = field(default_factory=dict)
    case_source: str | None = None
    roc: tuple | None = None  # (far, tar) for the plot; not in the JSON
    pairs: tuple | None = None  # (distances, issame) as measured; not in the JSON
    routes: RoutedDistances | None = None  # a routed model's distances under both extractors
    threshold_rule: str = "one"

    def to_dict(self) -> dict:
        out = self.accuracy.to_dict()
        out.update(
            n_same=self.n_same,
            n_different=self.n_different,
            auc=self.auc,
            eer=self.eer,
            tar_at_far=self.tar_at_far,
            cases=self.cases,
            case_source=self.case_source,
            threshold_rule=self.threshold_rule,
        )
        return out


def evaluate_distances(
    dist, issame, folds=None, cases=None, n_folds: int = 10, case_source: str | None = None,
    routes: RoutedDistances | None = None,
) -> VerificationResult:
    """Run the whole protocol on pair distances.

    ``routes`` (a routed model's distances under both extractors; ``dist`` must be their
    ``chosen``): the accuracies then use one threshold per extractor. The ROC, EER and TAR@FAR
    stay those of ``dist`` under one moving threshold.

    ``cases`` (1, 2, 3 per pair: both unmasked, one masked, both masked), when given, adds per case:
    ``accuracy``: the held-out accuracy of the pairs of that case under the thresholds chosen on
    the whole set (one threshold per fold for all cases, as a deployed system has), and
    ``accuracy_within_case``: the full protocol run on that case's pairs alone (own thresholds,
    balanced folds unless the file's folds all occur), where it has enough pairs.
    """
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if folds is not None:
        folds = np.asarray(folds)
    if routes is not None:
        if not np.array_equal(routes.chosen, dist):
            raise DatasetError("routed distances: dist must be the distances the pair rule chose")
        acc = kfold_accuracy_per_extractor(routes, issame, folds, n_folds)
    else:
        acc = kfold_accuracy(dist, issame, folds, n_folds)
    far, tar, _ = roc_curve(dist, issame)
    tars = {}
    for target in FAR_TARGETS:
        value, threshold, reason = tar_at_far(dist, issame, target)
        tars[f"{target:g}"] = {"tar": value, "threshold": threshold, "reason": reason}
    result = VerificationResult(
        accuracy=acc,
        auc=roc_auc(far, tar),
        eer=equal_error_rate(far, tar),
        tar_at_far=tars,
        n_same=int(issame.sum()),
        n_different=int((~issame).sum()),
        case_source=case_source if cases is not None else None,
        roc=(far, tar),
        pairs=(dist, issame),
        routes=routes,
        threshold_rule="one" if routes is None else "per_extractor",
    )
    if cases is not None:
        result.cases = _per_case(dist, issame, folds, np.asarray(cases), acc, n_folds, routes)
    return result


def _per_case(dist, issame, folds, cases, acc: FoldAccuracy, n_folds: int, routes=None) -> dict:
    if cases.shape != dist.shape:
        raise DatasetError(f"case labels {cases.shape} do not match the {len(dist)} pairs")
    fold_of = folds if folds is not None else balanced_folds(issame, n_folds)
    slot = np.searchsorted(np.unique(fold_of), fold_of)
    threshold_of_pair = np.asarray(acc.fold_thresholds)[slot]
    if routes is not None:
        threshold_of_pair = routes.limits(threshold_of_pair, np.asarray(acc.fold_thresholds_partial)[slot])
    correct = (dist < threshold_of_pair) == issame
    out = {}
    for case in sorted(int(c) for c in np.unique(cases)):
        sel = cases == case
        entry = {
            "name": CASE_NAMES.get(case, str(case)),
            "n_pairs": int(sel.sum()),
            "n_same": int(issame[sel].sum()),
            "accuracy": float(correct[sel].mean()),
            "accuracy_within_case": None,
            "std_within_case": None,
        }
        sub_same = issame[sel]
        if sel.sum() >= n_folds and sub_same.any() and (~sub_same).any():
            sub_folds = folds[sel] if folds is not None and len(np.unique(folds[sel])) >= 2 else None
            within = (kfold_accuracy(dist[sel], sub_same, sub_folds, n_folds) if routes is None else
                      kfold_accuracy_per_extractor(routes.subset(sel), sub_same, sub_folds, n_folds))
            entry["accuracy_within_case"] = within.mean
            entry["std_within_case"] = within.std
        out[str(case)] = entry
    return out
