"""Pair rule, comparison and Gallery (pure numpy; no models needed)."""

import numpy as np
import pytest

from insightface_bfm.errors import BFMError
from insightface_bfm.matching import (
    Gallery,
    compare,
    compare_embeddings,
    pair_case,
    pair_extractor,
)


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _face(masked, full=None, partial=None, routed_only=False):
    face = {"masked": masked}
    if routed_only:
        face["extractor"] = "partial" if masked else "full"
        face["embedding"] = partial if masked else full
    else:
        face["embedding_full"], face["embedding_partial"] = full, partial
    return face


def test_pair_rule_cases():
    assert (pair_case(False, False), pair_extractor(False, False)) == (1, "full")
    assert (pair_case(True, False), pair_extractor(True, False)) == (2, "partial")
    assert (pair_case(False, True), pair_extractor(False, True)) == (2, "partial")
    assert (pair_case(True, True), pair_extractor(True, True)) == (3, "partial")


def test_compare_picks_extractor_by_pair_rule():
    rng = np.random.default_rng(0)
    f1, f2, p1, p2 = (rng.normal(size=16).astype(np.float32) for _ in range(4))
    a, b = _face(False, f1, p1), _face(False, f2, p2)
    r = compare(a, b)
    assert r.case == 1 and r.extractor == "full"
    assert r.similarity == pytest.approx(float(_unit(f1) @ _unit(f2)), abs=1e-6)
    # squared L2 of normalised features = 2 - 2 cos
    assert r.distance == pytest.approx(float(np.sum((_unit(f1) - _unit(f2)) ** 2)), abs=1e-5)
    b["masked"] = True
    r = compare(a, b, threshold=4.0)
    assert r.case == 2 and r.extractor == "partial" and r.same is True
    assert r.similarity == pytest.approx(float(_unit(p1) @ _unit(p2)), abs=1e-6)


def test_compare_missing_embedding_uses_callback_or_explains():
    rng = np.random.default_rng(1)
    f1, p1, p2 = (rng.normal(size=8).astype(np.float32) for _ in range(3))
    unmasked = _face(False, f1, p1, routed_only=True)  # only E_F
    masked = _face(True, None, p2, routed_only=True)
    with pytest.raises(BFMError, match="partial embedding"):
        compare(unmasked, masked)
    calls = []

    def embed_missing(face, extractor):
        calls.append(extractor)
        return p1

    r = compare(unmasked, masked, embed_missing=embed_missing)
    assert calls == ["partial"] and r.case == 2
    assert r.similarity == pytest.approx(float(_unit(p1) @ _unit(p2)), abs=1e-6)


def test_compare_raw_embeddings_and_errors():
    r = compare(np.array([1.0, 0.0]), np.array([0.0, 2.0]))
    assert r.similarity == pytest.approx(0.0) and r.distance == pytest.approx(2.0) and r.case is None
    with pytest.raises(BFMError):
        compare_embeddings(np.zeros(3), np.ones(3))
    with pytest.raises(BFMError, match="masked"):
        compare({"embedding_full": np.ones(3)}, {"masked": False, "embedding_full": np.ones(3)})


def test_compare_threshold_per_extractor():
    # {"full": .., "partial": ..}: the pair rule's extractor picks its own threshold
    rng = np.random.default_rng(4)
    f1, f2, p1, p2 = (rng.normal(size=16).astype(np.float32) for _ in range(4))
    limits = {"full": 0.0001, "partial": 3.9999}
    r = compare(_face(False, f1, p1), _face(False, f2, p2), threshold=limits)
    assert (r.extractor, r.threshold, r.same) == ("full", 0.0001, False)
    r = compare(_face(False, f1, p1), _face(True, f2, p2), threshold=limits)
    assert (r.extractor, r.threshold, r.same) == ("partial", 3.9999, True)
    with pytest.raises(BFMError, match="one threshold"):
        compare(f1, f2, threshold=limits)


def _random_gallery(n=200, d=32, seed=0):
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(n, d)).astype(np.float32)
    partial = rng.normal(size=(n, d)).astype(np.float32)
    masked = rng.random(n) < 0.4
    ids = [f"id{i % 50}" for i in range(n)]
    g = Gallery()
    g.enrol_embeddings(ids, full, partial, masked)
    return g, ids, full, partial, masked, rng


@pytest.mark.parametrize("probe_masked", [False, True])
def test_gallery_search_matches_brute_force(probe_masked):
    g, ids, full, partial, masked, rng = _random_gallery()
    qf, qp = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    probe = _face(probe_masked, qf, qp)
    brute = []
    for i in range(len(ids)):
        entry = _face(bool(masked[i]), full[i], partial[i])
        brute.append(compare(probe, entry).similarity)
    brute = np.array(brute)
    np.testing.assert_allclose(g.scores(probe), brute, atol=1e-5)
    hits = g.search(probe, k=7)
    order = np.argsort(-brute, kind="stable")[:7]
    assert [h.index for h in hits] == order.tolist()
    for h in hits:
        assert h.identity == ids[h.index]
        assert h.case == 1 + int(probe_masked) + int(masked[h.index])
        assert h.extractor == ("partial" if probe_masked or masked[h.index] else "full")
        assert h.distance == pytest.approx(2 - 2 * h.similarity, abs=1e-6)


def test_gallery_unmasked_probe_without_partial_on_unmasked_gallery():
    g = Gallery()
    g.enrol_embeddings(["a", "b"], np.eye(2, 4), np.eye(2, 4)[::-1], [False, False])
    hits = g.search({"masked": False, "extractor": "full", "embedding": np.array([1, 0, 0, 0.0])}, k=1)
    assert hits[0].identity == "a" and hits[0].similarity == pytest.approx(1.0)


def test_gallery_enrol_face_needs_both_embeddings():
    g = Gallery()
    with pytest.raises(BFMError, match="embed='both'"):
        g.enrol({"masked": False, "extractor": "full", "embedding": np.ones(4)}, "x")
    g.enrol({"masked": True, "embedding_full": np.ones(4), "embedding_partial": -np.ones(4)}, "x")
    assert len(g) == 1
    with pytest.raises(BFMError, match="size"):
        g.enrol_embeddings("y", np.ones(5), np.ones(5), False)


def test_gallery_save_load_roundtrip_no_pickle(tmp_path):
    g, ids, *_, rng = _random_gallery(n=30)
    path = g.save(tmp_path / "g.npz")
    h = Gallery.load(path)
    assert h.identities == ids and len(h) == 30
    probe = _face(False, rng.normal(size=32), rng.normal(size=32))
    np.testing.assert_allclose(g.scores(probe), h.scores(probe), atol=1e-6)
    # no pickle anywhere: every array loads with allow_pickle=False
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]  # no temporary left behind
    assert h.remove("id0") == 1 and "id0" not in h.identities
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BFMError, match="bad.npz"):
        Gallery.load(tmp_path / "bad.npz")
    empty = Gallery.load(Gallery(8).save(tmp_path / "empty.npz"))
    assert len(empty) == 0 and empty.search({"masked": False, "embedding_full": np.ones(8)}) == []


def test_gallery_incremental_enrol_and_remove_keep_enrolment_order(tmp_path):
    # rows are stored grouped by the masked flag; indices, scores and saved arrays stay in enrolment order
    rng = np.random.default_rng(3)
    n, d = 40, 16
    full, partial = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    masked = rng.random(n) < 0.4
    ids = [f"p{i % 7}" for i in range(n)]
    sources = [f"s{i}" for i in range(n)]
    g = Gallery()
    for start in range(0, n, 9):  # enrol in uneven batches, searching in between
        sl = slice(start, start + 9)
        g.enrol_embeddings(ids[sl], full[sl], partial[sl], masked[sl], sources=sources[sl])
        g.search({"masked": False, "embedding_full": full[0], "embedding_partial": partial[0]}, k=2)
    one_shot = Gallery()
    one_shot.enrol_embeddings(ids, full, partial, masked)
    for probe_masked in (False, True):
        probe = _face(probe_masked, rng.normal(size=d), rng.normal(size=d))
        np.testing.assert_allclose(g.scores(probe), one_shot.scores(probe), atol=1e-6)
        assert [h.index for h in g.search(probe, k=5)] == [h.index for h in one_shot.search(probe, k=5)]
    f, p, m = g.arrays()
    np.testing.assert_allclose(f, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)
    assert (m == masked).all() and (g.masked == masked).all()
    assert g.has_source("s5") and not g.has_source("s99")
    # remove: the survivors keep their relative order; scores match a gallery built without them
    assert g.remove("p3") == sum(i == "p3" for i in ids)
    keep = [i for i, name in enumerate(ids) if name != "p3"]
    rebuilt = Gallery()
    rebuilt.enrol_embeddings([ids[i] for i in keep], full[keep], partial[keep], masked[keep])
    probe = _face(False, rng.normal(size=d), rng.normal(size=d))
    np.testing.assert_allclose(g.scores(probe), rebuilt.scores(probe), atol=1e-6)
    assert not g.has_source("s3") and g.has_source("s4")
    # sources and info survive save/load
    g.info["pack"] = {"name": "x"}
    h = Gallery.load(g.save(tmp_path / "g.npz"))
    assert h.sources == g.sources and h.info == {"pack": {"name": "x"}} and h.identities == g.identities
    np.testing.assert_allclose(h.scores(probe), g.scores(probe), atol=1e-6)
