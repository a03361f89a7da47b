"""Gallery search through faiss (the optional ``[faiss]`` extra: ``pip install insightface-bfm[faiss]``).

``FaissIndex(gallery).search(probe, k)`` answers as ``Gallery.search`` does (the pair rule per
entry, ``Match`` objects, best first) from faiss indexes over the gallery's rows:

- a masked probe meets every entry through E_P: one index over all E_P rows;
- an unmasked probe meets unmasked entries through E_F and masked ones through E_P: one index
  over the E_F rows of unmasked entries and one over the E_P rows of masked entries, searched
  with the probe's two embeddings and merged.

``kind="flat"`` is exact (inner product on normalised rows = cosine, the same scores as
``Gallery.search``); ``kind="ivf"`` is faiss's inverted-file index (``nlist`` clusters, trained on
the rows, ``nprobe`` of them visited per query): approximate, much faster on millions of
entries (``nlist`` defaults to sqrt(rows), trained on 40 rows per cluster). Indexes under
``MIN_IVF_ROWS`` rows stay flat (too few rows to train clusters on).
The gallery's exact ``search`` stays the default everywhere; this is for galleries where a
brute-force pass per probe is too slow (``benchmarks/gallery_search.py --faiss``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import BFMError
from .matching import Gallery

KINDS = ("flat", "ivf")
MIN_IVF_ROWS = 10_000


def _faiss():
    try:
        import faiss
    except ImportError:
        raise BFMError("faiss is not installed: pip install 'insightface-bfm[faiss]' (faiss-cpu)") from None
    return faiss


class FaissIndex:
    """faiss indexes over a ``Gallery`` (built once; rebuild after enrolling or removing)."""

    def __init__(self, gallery: Gallery, kind: str = "flat", *, nlist: int | None = None, nprobe: int = 16):
        if kind not in KINDS:
            raise BFMError(f"faiss index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.faiss = _faiss()
        self.gallery = gallery
        self.kind = kind
        self.nlist = nlist
        self.nprobe = int(nprobe)
        full, partial, order, n_unmasked = gallery.grouped_rows()
        self.order = order
        self.n_unmasked = n_unmasked
        self._quantizers = []
        self.partial_all = self._build(partial)
        self.full_unmasked = self._build(full[:n_unmasked])
        # E_P rows of the masked entries are partial_all's last rows: an unmasked probe searches
        # only those (a range selector), so no second index holds them again
        self.n_masked = len(partial) - n_unmasked

    def _build(self, rows: np.ndarray):
        faiss = self.faiss
        n, d = rows.shape
        if n == 0:
            return None
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.kind == "flat" or n < MIN_IVF_ROWS:
            index = faiss.IndexFlatIP(d)
        else:
            nlist = self.nlist or int(min(math.sqrt(n), n // 39))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            # k-means on a sample: 40 rows per cluster is plenty, and keeps a 1M build in seconds
            sample = np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)
            index.train(rows[np.sort(sample)])
            index.nprobe = min(self.nprobe, nlist)
            self._quantizers.append(quantizer)  # the index does not own it: keep it alive
        index.add(rows)
        return index

    def _query(self, index, q, k, first_row: int = 0):
        """Best ``k`` rows of ``index`` for ``q``, among rows ``first_row`` and after."""
        if index is None or first_row >= index.ntotal:
            return []
        params = None
        if first_row:
            faiss = self.faiss
            rows_after = faiss.IDSelectorRange(first_row, index.ntotal)
            params = (faiss.SearchParametersIVF(sel=rows_after, nprobe=index.nprobe)
                      if isinstance(index, faiss.IndexIVF) else faiss.SearchParameters(sel=rows_after))
        k = min(k, index.ntotal - first_row)
        sims, rows = index.search(q[None].astype(np.float32, copy=False), k, params=params)
        return [(float(s), int(r)) for s, r in zip(sims[0], rows[0]) if r >= 0]

    def search(self, probe, k: int = 5, *, embed_missing=None):
        """The ``k`` best entries for ``probe`` (``Match`` list, best first), as ``Gallery.search``."""
        if k < 1:
            raise BFMError(f"search: k must be >= 1, got {k}")
        if not len(self.gallery):
            return []
        masked, qf, qp = self.gallery.probe_vectors(probe, embed_missing)
        if masked:
            hits = self._query(self.partial_all, qp, k)
        else:
            hits = self._query(self.full_unmasked, qf, k)
            if self.n_masked:
                hits += self._query(self.partial_all, qp, k, first_row=self.n_unmasked)
        hits.sort(key=lambda h: (-h[0], int(self.order[h[1]])))
        return [self.gallery.match(int(self.order[row]), sim, masked) for sim, row in hits[:k]]
