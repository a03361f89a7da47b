"""The verification protocol against a separate, deliberately plain reference implementation.

The reference below shares no code with insightface_bfm.evaluation: pure-Python loops and
bisect over sorted lists, written from the protocol's description (arcface_torch / LFW).
"""

import bisect
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from insightface_bfm.errors import DatasetError
from insightface_bfm.evaluation.verification import (
    balanced_folds,
    contiguous_folds,
    equal_error_rate,
    evaluate_distances,
    kfold_accuracy,
    pair_distances,
    roc_auc,
    roc_curve,
    tar_at_far,
)

# ---------------------------------------------------------------- reference implementation


def ref_thresholds():
    return [k * 0.01 for k in range(400)]  # 0.00 .. 3.99


def ref_fold_accuracy_loops(dist, same, fold_of):
    """The protocol with nothing but loops (slow: small inputs only)."""
    folds = sorted(set(fold_of))
    accs = []
    for f in folds:
        best_t, best_correct = None, -1
        for t in ref_thresholds():
            correct = 0
            for d, s, g in zip(dist, same, fold_of):
                if g != f and (d < t) == s:
                    correct += 1
            if correct > best_correct:  # strictly better: ties keep the smaller threshold
                best_t, best_correct = t, correct
        test = [(d, s) for d, s, g in zip(dist, same, fold_of) if g == f]
        accs.append(sum((d < best_t) == s for d, s in test) / len(test))
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
    return mean, std, accs


def ref_fold_accuracy_bisect(dist, same, fold_of):
    """The same protocol, counting with bisect over sorted lists (fast enough for LFW)."""
    accs = []
    for f in sorted(set(fold_of)):
        pos = sorted(d for d, s, g in zip(dist, same, fold_of) if g != f and s)
        neg = sorted(d for d, s, g in zip(dist, same, fold_of) if g != f and not s)
        best_t, best_correct = None, -1
        for t in ref_thresholds():
            # same pairs below t are right; different pairs at or above t are right
            correct = bisect.bisect_left(pos, t) + (len(neg) - bisect.bisect_left(neg, t))
            if correct > best_correct:
                best_t, best_correct = t, correct
        test = [(d, s) for d, s, g in zip(dist, same, fold_of) if g == f]
        accs.append(sum((d < best_t) == s for d, s in test) / len(test))
    mean = sum(accs) / len(accs)
    return mean, (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5, accs


def ref_contiguous_folds(n, k):
    # scikit-learn KFold(shuffle=False) sizes: the first n % k folds get one extra
    out, start = [], 0
    for f in range(k):
        size = n // k + (1 if f < n % k else 0)
        out += [f] * size
        start += size
    return out


def ref_balanced_folds(same, k):
    # the default folds: the same pairs in order cut as ref_contiguous_folds, the different ones
    # likewise; fold f = the f-th block of each
    out = [None] * len(same)
    for kind in (True, False):
        where = [i for i, s in enumerate(same) if bool(s) == kind]
        for i, f in zip(where, ref_contiguous_folds(len(where), k)):
            out[i] = f
    return out


def ref_auc(dist, same):
    """Mann-Whitney: P(a same pair is closer than a different one), ties count half."""
    pos = [d for d, s in zip(dist, same) if s]
    neg = [d for d, s in zip(dist, same) if not s]
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p < q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


def ref_tar_at_far(dist, same, far):
    pos = sorted(d for d, s in zip(dist, same) if s)
    neg = sorted(d for d, s in zip(dist, same) if not s)
    best = 0.0
    for t in sorted(set(dist)):  # accept d <= t
        fa = bisect.bisect_right(neg, t) / len(neg)
        if fa <= far:
            best = max(best, bisect.bisect_right(pos, t) / len(pos))
    return best


def synthetic(n=600, seed=0, quantise=True):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.6, 0.3, n)).clip(0, 4)
    if quantise:  # many distances exactly on candidate thresholds and many ties
        dist[: n // 3] = np.round(dist[: n // 3], 2)
    return dist, same


# ---------------------------------------------------------------- tests on synthetic distances


def test_kfold_matches_loop_reference_on_synthetic_distances():
    dist, same = synthetic(240, seed=1)
    folds = ref_balanced_folds(same, 10)
    mean, std, accs = ref_fold_accuracy_loops(dist.tolist(), same.tolist(), folds)
    ours = kfold_accuracy(dist, same)
    assert ours.fold_accuracies == pytest.approx(accs, abs=0)
    assert ours.mean == pytest.approx(mean, abs=1e-12)
    assert ours.std == pytest.approx(std, abs=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_kfold_matches_bisect_reference_with_given_folds(seed):
    dist, same = synthetic(1000, seed=seed)
    folds = np.random.default_rng(seed).integers(0, 10, len(dist))
    mean, std, accs = ref_fold_accuracy_bisect(dist.tolist(), same.tolist(), folds.tolist())
    ours = kfold_accuracy(dist, same, folds=folds)
    assert ours.fold_accuracies == accs
    assert ours.mean == pytest.approx(mean, abs=1e-12) and ours.std == pytest.approx(std, abs=1e-12)


def test_bisect_reference_agrees_with_loop_reference():
    dist, same = synthetic(150, seed=9)
    folds = ref_contiguous_folds(150, 10)
    b_mean, b_std, b_accs = ref_fold_accuracy_bisect(dist.tolist(), same.tolist(), folds)
    l_mean, l_std, l_accs = ref_fold_accuracy_loops(dist.tolist(), same.tolist(), folds)
    assert (b_mean, b_std) == pytest.approx((l_mean, l_std))
    assert b_accs == pytest.approx(l_accs)


def test_threshold_is_strict_and_ties_take_the_smallest():
    # Train folds: a same pair at exactly 1.00 and a different one at 1.50. Candidates 1.01..1.50
    # all classify the train folds perfectly; the first (1.01) must win. A test same pair at 1.005
    # is then right, and a test different pair at exactly 1.01 is right (not < 1.01).
    dist = np.array([1.00, 1.50, 1.005, 1.01])
    same = np.array([True, False, True, False])
    folds = np.array([0, 0, 1, 1])
    res = kfold_accuracy(dist, same, folds=folds)
    assert res.fold_thresholds[1] == pytest.approx(1.01)
    assert res.fold_accuracies[1] == 1.0


def test_contiguous_folds_sizes_like_kfold():
    assert contiguous_folds(605, 10).tolist() == ref_contiguous_folds(605, 10)
    with pytest.raises(DatasetError):
        contiguous_folds(5, 10)


def test_default_folds_hold_both_kinds_of_pair():
    # LFW's pairsDevTest.txt layout: 500 same pairs, then 500 different ones. Contiguous folds
    # would hold one kind each; the default folds hold 50 of each, in file order.
    same = np.repeat([True, False], 500)
    folds = balanced_folds(same, 10)
    assert folds.tolist() == ref_balanced_folds(same.tolist(), 10)
    for f in range(10):
        assert same[folds == f].sum() == 50 and (~same[folds == f]).sum() == 50
    assert kfold_accuracy(np.zeros(1000), same).fold_source.startswith("10 balanced folds")
    # where contiguous folds already hold a tenth of each kind (pairs.txt / arcface_torch .bin
    # layout: 300 same then 300 different per fold), they are the very same folds
    view2 = np.tile(np.repeat([True, False], 300), 10)
    assert balanced_folds(view2, 10).tolist() == contiguous_folds(6000, 10).tolist()
    with pytest.raises(DatasetError):
        balanced_folds(same[:5], 10)


def test_one_kind_per_fold_biases_the_accuracy_and_balanced_folds_do_not():
    # Same pairs at 0.2 and 0.6 (half each), different ones at 0.4 and 0.8: on the whole set the
    # best thresholds are 0.21 and 0.61 (75% either way). In a 500 + 500 list, a fold of same pairs
    # only is judged by a threshold chosen on 400 same and 500 different pairs: 0.21 wins there and
    # rejects half of the fold's same pairs; a fold of different pairs only gets 0.61, which accepts
    # half of them. Balanced folds (450 + 450 to choose on: a tie, so 0.21) give every fold 75%.
    same = np.repeat([True, False], 500)
    dist = np.where(same, np.tile([0.2, 0.6], 500), np.tile([0.4, 0.8], 500))
    pure = kfold_accuracy(dist, same, folds=np.asarray(ref_contiguous_folds(1000, 10)))
    balanced = kfold_accuracy(dist, same)
    assert balanced.mean == pytest.approx(0.75)
    assert pure.mean == pytest.approx(0.5)


def test_roc_auc_eer_tar_against_reference():
    dist, same = synthetic(400, seed=5)
    far, tar, thr = roc_curve(dist, same)
    assert far[0] == 0 and tar[0] == 0 and far[-1] == 1 and tar[-1] == 1
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert roc_auc(far, tar) == pytest.approx(ref_auc(dist.tolist(), same.tolist()), abs=1e-12)
    # EER: at the crossing FAR and FRR agree to within one step of the curve
    eer = equal_error_rate(far, tar)
    frr = 1 - tar
    k = int(np.argmin(np.abs(far - frr)))
    assert abs(eer - (far[k] + frr[k]) / 2) <= 1.0 / min(same.sum(), (~same).sum()) + 1e-9
    # 200 different pairs: FAR 1e-2 measurable, 1e-3 not
    n_neg = int((~same).sum())
    value, _, reason = tar_at_far(dist, same, 1e-2)
    assert reason is None and value == pytest.approx(ref_tar_at_far(dist.tolist(), same.tolist(), 1e-2))
    value, threshold, reason = tar_at_far(dist, same, 1e-3)
    assert value is None and threshold is None and str(n_neg) in reason


def test_tar_at_far_on_a_large_set():
    dist, same = synthetic(24000, seed=6, quantise=False)
    assert (~same).sum() >= 10000
    value, _, reason = tar_at_far(dist, same, 1e-4)
    assert reason is None
    assert value == pytest.approx(ref_tar_at_far(dist.tolist(), same.tolist(), 1e-4))


def test_perfect_separation_and_pair_distances():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 8))
    b = a.copy()
    b[10:] = -a[10:]  # opposite directions: squared distance 4
    d = pair_distances(a * 3.0, b)  # scale must not matter
    assert np.allclose(d[:10], 0) and np.allclose(d[10:], 4)
    res = evaluate_distances(d, np.arange(20) < 10, n_folds=5)
    assert res.accuracy.mean == 1.0 and res.auc == 1.0 and res.eer == 0.0


def test_per_case_accuracy():
    dist, same = synthetic(600, seed=7)
    cases = np.random.default_rng(7).integers(1, 4, 600)
    res = evaluate_distances(dist, same, cases=cases, case_source="labels")
    # per case, with the whole set's fold thresholds: recount by hand
    folds = ref_balanced_folds(same, 10)
    thr = res.accuracy.fold_thresholds
    for c in (1, 2, 3):
        idx = [i for i in range(600) if cases[i] == c]
        right = sum((dist[i] < thr[folds[i]]) == same[i] for i in idx)
        entry = res.cases[str(c)]
        assert entry["n_pairs"] == len(idx)
        assert entry["accuracy"] == pytest.approx(right / len(idx))
        sub = kfold_accuracy(dist[cases == c], same[cases == c])
        assert entry["accuracy_within_case"] == pytest.approx(sub.mean)
    # the pair-weighted mean of case accuracies is the overall held-out accuracy (each fold's
    # accuracy weighted by its size: balanced folds of a random list differ by a pair or two)
    total = sum(res.cases[str(c)]["accuracy"] * res.cases[str(c)]["n_pairs"] for c in (1, 2, 3)) / 600
    sizes = np.bincount(folds, minlength=10)
    assert total == pytest.approx(np.dot(res.accuracy.fold_accuracies, sizes) / 600, abs=1e-12)


# ---------------------------------------------------------------- real LFW with the shared model


def _cache_dir() -> Path:
    # outside the repo: embeddings of the 7,701 pairs.txt faces are kept between test runs
    base = os.environ.get("XDG_CACHE_HOME") or tempfile.gettempdir()
    return Path(base) / "insightface-bfm-test-embeddings"


def _ref_parse_pairs(path):
    """Plain reading of LFW pairs.txt: (left, right, same, fold)."""
    lines = Path(path).read_text().splitlines()
    n_folds, per = (int(x) for x in lines[0].split())
    rows = []
    for i, line in enumerate(lines[1:]):
        f = line.split("\t")
        fold = i // (2 * per)
        if len(f) == 3:
            a, b, same = (f[0], f[1]), (f[0], f[2]), True
        else:
            a, b, same = (f[0], f[1]), (f[2], f[3]), False
        rows.append((f"{a[0]}/{a[0]}_{int(a[1]):04d}.jpg", f"{b[0]}/{b[0]}_{int(b[1]):04d}.jpg", same, fold))
    assert len(rows) == 2 * n_folds * per
    return rows


def _ref_embed(session, path):
    import cv2

    img = cv2.imread(str(path))
    x = np.zeros((1, 3, 112, 112), np.float32)
    for c in range(3):  # BGR -> RGB, (x - 127.5) / 127.5
        x[0, c] = (img[:, :, 2 - c].astype(np.float32) - 127.5) / 127.5
    return session.run(None, {session.get_inputs()[0].name: x})[0][0]


def _evaluate_against_reference(lfw, model, pairs_file, n_folds_expected):
    """Run bfm's evaluation on ``pairs_file`` and the plain reference on the same embeddings."""
    import onnxruntime

    from insightface_bfm.evaluation.embedders import OnnxRecognizer
    from insightface_bfm.evaluation.run import EmbeddingCache, evaluate

    t0 = time.time()
    results, _, _ = evaluate(pairs_file, model, images=lfw, cache_dir=_cache_dir(), progress=False)
    print(f"{pairs_file.name}: {time.time() - t0:.1f} s ({results['embedding_seconds']} s embedding)")

    # The reference reads the embeddings the run used, after checking a random sample of them
    # against its own preprocessing and onnxruntime session.
    cache = EmbeddingCache(_cache_dir(), OnnxRecognizer(model).model_id)

    def cached(rel):
        st = (lfw / rel).stat()
        return cache.get(f"{os.path.abspath(lfw / rel)}|{st.st_size}|{st.st_mtime_ns}")["full"]

    rows = _ref_parse_pairs(pairs_file)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for rel in random.Random(0).sample(sorted({r[1] for r in rows}), 10):
        assert np.allclose(cached(rel), _ref_embed(session, lfw / rel), atol=1e-4)
    dist, same, folds = [], [], []
    for a, b, s, f in rows:
        ea, eb = cached(a).astype(np.float64), cached(b).astype(np.float64)
        ea, eb = ea / np.sqrt((ea**2).sum()), eb / np.sqrt((eb**2).sum())
        dist.append(float(((ea - eb) ** 2).sum()))
        same.append(s)
        folds.append(f)
    mean, std, _ = ref_fold_accuracy_bisect(dist, same, folds)
    assert results["n_pairs"] == len(rows)
    assert results["folds"] == f"{n_folds_expected} folds given by the pairs file"
    assert results["accuracy"] == pytest.approx(mean, abs=1e-12)
    assert results["std"] == pytest.approx(std, abs=1e-12)
    return results


def _pairs_subset(lfw, tmp_path, n_folds: int, per: int) -> Path:
    """The first ``per`` same and ``per`` different pairs of each of LFW pairs.txt's first
    ``n_folds`` folds, as a pairs file with its own ``n_folds per`` header."""
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]  # 10 folds of 300 same + 300 different
    keep = [line for f in range(n_folds) for half in range(2) for line in lines[600 * f + 300 * half:][:per]]
    subset = tmp_path / f"pairs_{n_folds}x{per}.txt"
    subset.write_text(f"{n_folds}\t{per}\n" + "\n".join(keep) + "\n")
    return subset


@pytest.mark.shared
def test_lfw_first_folds_accuracy_equals_reference(shared, tmp_path):
    """LFW's first 2 folds, 30 same + 30 different pairs of each, written as a pairs file with a
    2-fold header: bfm == reference (~220 faces, all among the next test's, which then reads them
    from the embedding cache)."""
    lfw = shared("data", "lfw112")
    model = shared("models", "mobilefacenet_128.onnx")
    results = _evaluate_against_reference(lfw, model, _pairs_subset(lfw, tmp_path, 2, 30), 2)
    # 60 pairs per fold set each threshold coarsely (95.8% here); the next test holds LFW's bar
    assert results["accuracy"] >= 0.95


@pytest.mark.shared
def test_lfw_ten_folds_accuracy_equals_reference(shared, tmp_path):
    """LFW's ten official folds, 30 same + 30 different pairs of each (600 pairs, ~1,100 faces to
    embed; folds 1-2 are the test above's, embedded once): bfm == reference, and
    the shared MobileFaceNet's accuracy. The whole pairs.txt (7,701 faces, 99.30%) is a slow block
    of docs/guides/evaluation.md, run by benchmarks/doc_commands.py."""
    lfw = shared("data", "lfw112")
    model = shared("models", "mobilefacenet_128.onnx")
    results = _evaluate_against_reference(lfw, model, _pairs_subset(lfw, tmp_path, 10, 30), 10)
    assert 0.985 <= results["accuracy"] <= 1.0


# ---------------------------------------------------------------- one threshold per extractor


def ref_per_extractor(full, partial, routed, same, fold_of, min_route=100):
    """Per fold: E_F's threshold on the training pairs routed to E_F, E_P's on those routed to
    E_P, each on every training pair (with its distances) when fewer than ``min_route`` (or one
    side only) went its way; each held-out pair judged by its own extractor's threshold."""
    def best(dist, labels):
        best_t, best_correct = None, -1
        for t in ref_thresholds():
            correct = sum((d < t) == s for d, s in zip(dist, labels))
            if correct > best_correct:
                best_t, best_correct = t, correct
        return best_t

    accs, chosen = [], []
    for f in sorted(set(fold_of)):
        train = [i for i in range(len(same)) if fold_of[i] != f]
        picks = []
        for dist, want in ((full, False), (partial, True)):
            use = [i for i in train if routed[i] == want]
            if len(use) < min_route or len({bool(same[i]) for i in use}) < 2:
                use = train
            picks.append(best([dist[i] for i in use], [same[i] for i in use]))
        test = [i for i in range(len(same)) if fold_of[i] == f]
        right = sum(((partial[i] if routed[i] else full[i]) < picks[int(routed[i])]) == same[i] for i in test)
        accs.append(right / len(test))
        chosen.append(picks)
    return sum(accs) / len(accs), chosen


def two_spaces(n=400, n_routed=200, seed=3):
    """E_F's distances around 0.4 (same) / 1.2 (different), E_P's around 1.4 / 2.4: no one
    threshold separates both, one per extractor does."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    routed = np.zeros(n, bool)
    routed[rng.choice(n, n_routed, replace=False)] = True
    full = np.round(np.where(same, rng.normal(0.4, 0.12, n), rng.normal(1.2, 0.12, n)), 2)
    partial = np.round(np.where(same, rng.normal(1.4, 0.12, n), rng.normal(2.4, 0.12, n)), 2)
    return full, partial, routed, same


def test_per_extractor_thresholds_match_the_reference():
    from insightface_bfm.evaluation.verification import RoutedDistances, kfold_accuracy_per_extractor

    for n_routed in (200, 30):  # enough pairs on E_P's route, and too few (its threshold from all)
        full, partial, routed, same = two_spaces(n_routed=n_routed)
        res = kfold_accuracy_per_extractor(RoutedDistances(full, partial, routed), same)
        want, chosen = ref_per_extractor(full, partial, routed, same, ref_balanced_folds(same, 10))
        assert res.mean == pytest.approx(want, abs=1e-12)
        assert np.allclose(res.fold_thresholds, [c[0] for c in chosen])
        assert np.allclose(res.fold_thresholds_partial, [c[1] for c in chosen])
    # E_F's 0.4 / 1.2 and E_P's 1.4 / 2.4, each separated by its own threshold; one threshold
    # for the mixture cannot separate both
    full, partial, routed, same = two_spaces()
    routes = RoutedDistances(full, partial, routed)
    per = kfold_accuracy_per_extractor(routes, same)
    one = kfold_accuracy(routes.chosen, same)
    assert per.mean > 0.99 and one.mean < 0.9
    assert all(0.6 < t < 1.0 for t in per.fold_thresholds)
    assert all(1.6 < t < 2.2 for t in per.fold_thresholds_partial)


def test_per_extractor_reduces_to_one_extractor():
    from insightface_bfm.evaluation.verification import RoutedDistances, kfold_accuracy_per_extractor

    full, partial, _, same = two_spaces()
    nobody = kfold_accuracy_per_extractor(RoutedDistances(full, partial, np.zeros(400, bool)), same)
    everybody = kfold_accuracy_per_extractor(RoutedDistances(full, partial, np.ones(400, bool)), same)
    assert nobody.mean == kfold_accuracy(full, same).mean
    assert nobody.fold_thresholds == kfold_accuracy(full, same).fold_thresholds
    assert everybody.mean == kfold_accuracy(partial, same).mean


def test_evaluate_distances_per_extractor_per_case():
    from insightface_bfm.evaluation.verification import RoutedDistances

    full, partial, routed, same = two_spaces()
    routes = RoutedDistances(full, partial, routed)
    cases = np.where(routed, 2, 1)
    res = evaluate_distances(routes.chosen, same, cases=cases, routes=routes)
    assert res.threshold_rule == "per_extractor" and res.to_dict()["fold_thresholds_partial"]
    folds = ref_balanced_folds(same, 10)
    for c in (1, 2):
        idx = [i for i in range(400) if cases[i] == c]
        thr = res.accuracy.fold_thresholds_partial if c == 2 else res.accuracy.fold_thresholds
        right = sum((routes.chosen[i] < thr[folds[i]]) == same[i] for i in idx)
        assert res.cases[str(c)]["accuracy"] == pytest.approx(right / len(idx))
    with pytest.raises(DatasetError, match="distances the pair rule chose"):
        evaluate_distances(full, same, routes=routes)
    with pytest.raises(DatasetError, match="equal-length"):
        RoutedDistances(full, partial[:10], routed)
