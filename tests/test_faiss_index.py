"""The optional faiss back-end answers as the exact Gallery search (skipped without faiss)."""

import numpy as np
import pytest

from insightface_bfm.matching import Gallery

faiss = pytest.importorskip("faiss")
from insightface_bfm.faiss_index import FaissIndex  # noqa: E402


def _gallery(n, d=32, seed=0, masked_share=0.3, clusters=None):
    rng = np.random.default_rng(seed)
    if clusters:  # identities as tight clusters, the way real embeddings fall
        centres = rng.normal(size=(clusters, d))
        who = rng.integers(0, clusters, n)
        full = centres[who] + 0.3 * rng.normal(size=(n, d))
        partial = -centres[who] + 0.3 * rng.normal(size=(n, d))
    else:
        full, partial = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    g = Gallery()
    g.enrol_embeddings([f"id{i}" for i in range(n)], full, partial, rng.random(n) < masked_share)
    return g, rng


@pytest.mark.parametrize("probe_masked", [False, True])
def test_flat_index_equals_exact_search(probe_masked):
    g, rng = _gallery(3000)
    index = FaissIndex(g, "flat")
    for _ in range(15):
        probe = {"masked": probe_masked, "embedding_full": rng.normal(size=32),
                 "embedding_partial": rng.normal(size=32)}
        exact, fast = g.search(probe, k=5), index.search(probe, k=5)
        assert [h.index for h in fast] == [h.index for h in exact]
        for a, b in zip(fast, exact):
            assert (a.identity, a.case, a.extractor) == (b.identity, b.case, b.extractor)
            assert a.similarity == pytest.approx(b.similarity, abs=1e-5)


@pytest.mark.parametrize("masked_share", [0.0, 1.0, 0.5])
def test_every_row_is_indexed_once_and_edge_galleries_answer_exactly(masked_share):
    # E_P rows of masked entries live only in the all-E_P index (an unmasked probe reaches them
    # through a row-range selector), also when no entry or every entry is masked
    g, rng = _gallery(400, masked_share=masked_share, seed=2)
    index = FaissIndex(g, "flat")
    held = sum(i.ntotal for i in (index.partial_all, index.full_unmasked) if i is not None)
    assert held == len(g) + index.n_unmasked
    for probe_masked in (False, True):
        probe = {"masked": probe_masked, "embedding_full": rng.normal(size=32),
                 "embedding_partial": rng.normal(size=32)}
        assert [h.index for h in index.search(probe, k=7)] == [h.index for h in g.search(probe, k=7)]


def test_ivf_index_top1_on_clustered_gallery_and_errors():
    g, rng = _gallery(12000, clusters=300, seed=1)
    exact_index = FaissIndex(g, "ivf", nprobe=10_000)  # every cluster visited: exact
    ivf = FaissIndex(g, "ivf", nprobe=8)
    agree_exact = agree_ivf = 0
    for i in range(30):
        probe = {"masked": bool(i % 2), "embedding_full": rng.normal(size=32),
                 "embedding_partial": rng.normal(size=32)}
        top1 = g.search(probe, k=1)[0].index
        agree_exact += exact_index.search(probe, k=1)[0].index == top1
        agree_ivf += ivf.search(probe, k=1)[0].index == top1
    assert agree_exact == 30 and agree_ivf >= 20
    from insightface_bfm.errors import BFMError

    with pytest.raises(BFMError, match="kind"):
        FaissIndex(g, "hnsw")
