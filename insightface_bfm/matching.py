"""The pair rule of Balanced Feature Matching, comparison of two faces, and a 1:N gallery.

The pair rule (paper, Sec. III): when either face of a pair is masked, both are embedded by
the partial extractor E_P; when neither is, both by the full extractor E_F. Cases: 1 both
unmasked (E_F), 2 one masked (E_P), 3 both masked (E_P).

Scores: ``similarity`` is the cosine of the two embeddings; ``distance`` is the squared L2
distance between the L2-normalised embeddings (= 2 - 2 * similarity, range [0, 4]), the
measure insightface's verification protocol thresholds.

Faces are insightface ``Face`` dicts (or any mapping) carrying ``masked`` and the embeddings
``embedding_full`` / ``embedding_partial`` (or ``embedding`` with ``extractor`` naming which
one it is). A face embedded by one extractor only can still be compared when an
``embed_missing(face, extractor)`` callback is given (``insightface_bfm.FaceAnalysis`` passes
one that embeds the face's stored aligned crop).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .errors import BFMError, NotFoundError

CASE_BOTH_UNMASKED = 1
CASE_ONE_MASKED = 2
CASE_BOTH_MASKED = 3
EXTRACTORS = ("full", "partial")
GALLERY_FORMAT = 1

EmbedMissing = Callable[[Mapping, str], np.ndarray]


def _masked_flag(value, name: str) -> bool:
    """A face's masked flag: a bool (numpy's too), or a face (mapping) carrying ``masked``. Anything
    else is refused: a face object is truthy, and reading it as "masked" sent unmasked pairs to E_P."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, Mapping):
        return _masked(value, name)
    raise BFMError(f"{name}: expected a face (with a 'masked' flag) or a bool, got {type(value).__name__} "
                   f"{value!r:.40}")


def pair_extractor(masked_a, masked_b) -> str:
    """The extractor both faces of a pair are compared with: 'partial' if either is masked.
    Each argument: a bool (the face is masked) or an analysed face."""
    a, b = _masked_flag(masked_a, "pair_extractor: first"), _masked_flag(masked_b, "pair_extractor: second")
    return "partial" if (a or b) else "full"


def pair_case(masked_a, masked_b) -> int:
    """1 both unmasked, 2 one masked, 3 both masked. Each argument: a bool or an analysed face."""
    a, b = _masked_flag(masked_a, "pair_case: first"), _masked_flag(masked_b, "pair_case: second")
    return 1 + int(a) + int(b)


def l2_normalize(x) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float32); a zero row is an error, not a NaN."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:  # one probe: the fast path of every search
        norm = float(np.sqrt(arr @ arr))
        if not (norm > 0 and math.isfinite(norm)):
            raise BFMError("embedding with zero or non-finite norm cannot be compared")
        return arr / np.float32(norm)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise BFMError("embedding with zero or non-finite norm cannot be compared")
    return arr / norms


@dataclass(frozen=True)
class Comparison:
    """The result of comparing two faces (or embeddings).

    ``distance`` is squared L2 of normalised embeddings; ``threshold`` and ``same`` are set
    by verification (``same`` = distance <= threshold).
    """

    similarity: float
    distance: float
    case: int | None = None
    extractor: str | None = None
    threshold: float | None = None
    same: bool | None = None


def compare_embeddings(a, b) -> Comparison:
    """Cosine similarity and squared L2 distance of two raw embeddings from the same extractor."""
    va, vb = l2_normalize(np.ravel(a)), l2_normalize(np.ravel(b))
    if va.shape != vb.shape:
        raise BFMError(f"embeddings of different sizes cannot be compared: {va.shape[0]} vs {vb.shape[0]}")
    sim = float(np.clip(np.dot(va, vb), -1.0, 1.0))
    return Comparison(similarity=sim, distance=2.0 - 2.0 * sim)


def _masked(face: Mapping, name: str) -> bool:
    value = face.get("masked")
    if value is None:
        raise BFMError(f"{name}: the face has no 'masked' flag; analyse it with insightface_bfm.FaceAnalysis")
    return bool(value)


def face_embedding(face: Mapping, extractor: str, embed_missing: EmbedMissing | None = None, name="face"):
    """The face's embedding from ``extractor`` ('full' or 'partial'), computing it if needed."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
    value = face.get(f"embedding_{extractor}")
    if value is None and face.get("extractor") == extractor:
        value = face.get("embedding")
    if value is None and embed_missing is not None:
        value = embed_missing(face, extractor)
    if value is None:
        raise BFMError(
            f"{name}: no {extractor} embedding; analyse it with embed='both', or compare through "
            "FaceAnalysis.compare, which embeds the stored aligned crop"
        )
    return np.asarray(value, dtype=np.float32).ravel()


def compare(a, b, *, embed_missing: EmbedMissing | None = None,
            threshold: float | Mapping[str, float] | None = None) -> Comparison:
    """Compare two faces by the pair rule, or two raw embeddings (arrays) directly.

    ``threshold`` (squared L2; or one per extractor, ``{"full": .., "partial": ..}``, for the
    extractor the pair rule picks) also fills ``same``.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            raise BFMError("compare: give two faces or two embedding arrays, not one of each")
        result = compare_embeddings(a, b)
        case = extractor = None
    else:
        ma, mb = _masked(a, "face_a"), _masked(b, "face_b")
        extractor = pair_extractor(ma, mb)
        case = pair_case(ma, mb)
        result = compare_embeddings(
            face_embedding(a, extractor, embed_missing, "face_a"),
            face_embedding(b, extractor, embed_missing, "face_b"),
        )
    if isinstance(threshold, Mapping):
        if extractor is None:
            raise BFMError("compare: two embedding arrays take one threshold, not one per extractor")
        threshold = float(threshold[extractor])
    same = None if threshold is None else bool(result.distance <= threshold)
    return Comparison(result.similarity, result.distance, case, extractor, threshold, same)


@dataclass(frozen=True)
class Match:
    """One gallery hit."""

    identity: str
    index: int
    similarity: float
    distance: float
    case: int
    extractor: str


@dataclass(frozen=True)
class Identification:
    """The answer of an open-set search: ``identity`` (None: unknown), its ``match``, and the
    ``candidates`` (the k best entries, whatever their score)."""

    identity: str | None
    match: Match | None
    candidates: list


class Gallery:
    """A 1:N gallery keeping, per entry, both embeddings (normalised) and the masked flag.

    ``search`` scores every entry by the pair rule: a masked probe meets every entry through
    E_P; an unmasked probe meets unmasked entries through E_F and masked entries through E_P.
    The rows are stored grouped by the masked flag (unmasked entries first), so either probe
    costs exactly N row products on contiguous memory and no copy: as cheap as one brute-force
    matrix-vector product over the gallery (``benchmarks/gallery_search.py`` measures it).
    Indices (``Match.index``, ``scores``) are in enrolment order.

    ``sources`` keeps an optional key per entry (e.g. the sha256 of the enrolled image), so a
    folder enrolment can skip what is already in; ``info`` is a free JSON dict saved with the
    gallery (the enrolling pack's identity).
    """

    def __init__(self, embedding_size: int | None = None):
        self.embedding_size = embedding_size
        self.identities: list[str] = []
        self.sources: list[str | None] = []
        self.info: dict = {}
        self._source_set: set[str] = set()
        self._pending: list[list] = []  # [full, partial, masked] batches not yet arranged
        self._store = None  # (full_sorted, partial_sorted, masked (enrolment order), order, n_unmasked)

    def __len__(self) -> int:
        return len(self.identities)

    def __repr__(self) -> str:
        return (
            f"Gallery({len(self)} entries, {len(set(self.identities))} identities, dim={self.embedding_size})"
        )

    @property
    def masked(self) -> np.ndarray:
        """The masked flag of every entry, in enrolment order."""
        return self._matrices()[2].copy()

    def has_source(self, source: str) -> bool:
        return source in self._source_set

    def enrol(self, face: Mapping, identity: str, *, embed_missing: EmbedMissing | None = None,
              source: str | None = None) -> int:
        """Add one analysed face (needs both embeddings: ``embed='both'`` or ``embed_missing``)."""
        full = face_embedding(face, "full", embed_missing, f"enrol {identity!r}")
        partial = face_embedding(face, "partial", embed_missing, f"enrol {identity!r}")
        masked = _masked(face, f"enrol {identity!r}")
        return int(self.enrol_embeddings(identity, full, partial, masked, sources=[source])[0])

    def enrol_embeddings(self, identity, full, partial, masked, *, sources=None) -> list[int]:
        """Add one entry (vectors) or many (identity list, (N,D) arrays, N flags); returns indices."""
        full = np.atleast_2d(np.asarray(full, dtype=np.float32))
        partial = np.atleast_2d(np.asarray(partial, dtype=np.float32))
        identities = [identity] if isinstance(identity, str) else list(identity)
        flags = np.atleast_1d(np.asarray(masked, dtype=bool))
        n = len(identities)
        sources = [None] * n if sources is None else list(sources)
        if full.shape != partial.shape or full.shape[0] != n or flags.shape != (n,) or len(sources) != n:
            raise BFMError(
                f"enrol: {n} identities need {n} full and {n} partial embeddings of one size and {n} "
                f"masked flags, got {full.shape}, {partial.shape}, {flags.shape}"
            )
        if self.embedding_size is None:
            self.embedding_size = int(full.shape[1])
        if full.shape[1] != self.embedding_size:
            raise BFMError(
                f"enrol: embeddings of size {full.shape[1]}, the gallery holds {self.embedding_size}"
            )
        for name in identities:
            if not isinstance(name, str) or not name:
                raise BFMError(f"enrol: identity must be a non-empty string, got {name!r}")
        full, partial = l2_normalize(full), l2_normalize(partial)
        start = len(self)
        self.identities.extend(identities)
        self.sources.extend(sources)
        self._source_set.update(s for s in sources if s is not None)
        self._pending.append([full, partial, flags.copy()])
        return list(range(start, start + n))

    def remove(self, identity: str) -> int:
        """Remove every entry of ``identity``; returns how many were removed."""
        full, partial, masked, order, _ = self._matrices()
        keep = np.array([name != identity for name in self.identities], dtype=bool)
        removed = int((~keep).sum())
        if not removed:
            return 0
        keep_sorted = keep[order]
        new_index = np.cumsum(keep) - 1  # enrolment index -> index after removal
        self.identities = [n for n, k in zip(self.identities, keep) if k]
        self.sources = [s for s, k in zip(self.sources, keep) if k]
        self._source_set = {s for s in self.sources if s is not None}
        masked = masked[keep]
        self._store = (full[keep_sorted], partial[keep_sorted], masked, new_index[order[keep_sorted]],
                       int((~masked).sum()))
        return removed

    def _matrices(self):
        """(full, partial) rows sorted unmasked-first, masked flags, sorted row -> index, n unmasked."""
        if self._pending or self._store is None:
            self._store = self._arrange()
        return self._store

    def _arrange(self):
        """Merge the pending batches into the grouped layout, one matrix at a time, releasing each
        batch's rows as they are copied (a 1M x 512 gallery must not hold several copies at once)."""
        d = self.embedding_size or 0
        empty = np.zeros((0, d), np.float32)
        f_old, p_old, m_old, order_old, nu_old = self._store or (empty, empty, np.zeros(0, bool),
                                                                  np.zeros(0, np.int64), 0)
        pending, self._pending = self._pending, []
        m_new = np.concatenate([m_old] + [c[2] for c in pending])
        n_old, n = m_old.shape[0], m_new.shape[0]
        nu = nu_old + int((~m_new[n_old:]).sum())
        # layout: old unmasked | new unmasked | old masked | new masked
        old_masked = slice(nu, nu + n_old - nu_old)
        order = np.empty(n, np.int64)
        order[:nu_old], order[old_masked] = order_old[:nu_old], order_old[nu_old:]
        # where each pending row goes: new unmasked rows after the old unmasked block, new masked at the end
        slots, next_u, next_m, first = [], nu_old, old_masked.stop, n_old
        for chunk in pending:
            m = chunk[2]
            dest = np.empty(m.shape[0], np.int64)
            dest[~m] = next_u + np.arange(int((~m).sum()))
            dest[m] = next_m + np.arange(int(m.sum()))
            next_u, next_m = next_u + int((~m).sum()), next_m + int(m.sum())
            order[dest] = first + np.arange(m.shape[0])
            first += m.shape[0]
            slots.append(dest)
        out = []
        for which, old in ((0, f_old), (1, p_old)):
            arr = np.empty((n, d), np.float32)
            arr[:nu_old], arr[old_masked] = old[:nu_old], old[nu_old:]
            for chunk, dest in zip(pending, slots):
                arr[dest] = chunk[which]
                chunk[which] = None
            out.append(arr)
        return out[0], out[1], m_new, order, nu

    def grouped_rows(self):
        """The stored layout, for other search back-ends (``faiss_index``): ``(full, partial, order,
        n_unmasked)``, rows grouped unmasked-first; row ``j`` is entry ``order[j]``. Read-only views."""
        full, partial, _, order, n_unmasked = self._matrices()
        return full, partial, order, n_unmasked

    def probe_vectors(self, probe: Mapping, embed_missing: EmbedMissing | None = None):
        """``(masked, q_full, q_partial)`` of a probe, normalised; a vector the pair rule does not
        need against this gallery is None."""
        _, _, _, _, n_unmasked = self._matrices()
        masked = _masked(probe, "probe")
        qp = qf = None
        if masked or n_unmasked < len(self):
            qp = l2_normalize(face_embedding(probe, "partial", embed_missing, "probe"))
            self._check_dim(qp)
        if not masked:
            qf = l2_normalize(face_embedding(probe, "full", embed_missing, "probe"))
            self._check_dim(qf)
        return masked, qf, qp

    def match(self, index: int, similarity: float, probe_masked: bool) -> Match:
        """The ``Match`` of entry ``index`` at ``similarity`` for a probe masked or not."""
        sim = float(similarity) if math.isinf(similarity) else min(1.0, max(-1.0, float(similarity)))
        m = bool(self._matrices()[2][index])
        return Match(self.identities[index], int(index), sim, 2.0 - 2.0 * sim, pair_case(probe_masked, m),
                     pair_extractor(probe_masked, m))

    def _sorted_scores(self, probe: Mapping, embed_missing):
        """(similarities in stored row order, probe masked)."""
        full, partial, _, _, n_unmasked = self._matrices()
        masked, qf, qp = self.probe_vectors(probe, embed_missing)
        if masked:
            return partial @ qp, masked
        if n_unmasked == len(self):
            return full @ qf, masked
        return np.concatenate([full[:n_unmasked] @ qf, partial[n_unmasked:] @ qp]), masked

    def scores(self, probe: Mapping, *, embed_missing: EmbedMissing | None = None) -> np.ndarray:
        """Cosine similarity of ``probe`` to every entry by the pair rule, float32 (N,), enrolment order."""
        sims, _ = self._sorted_scores(probe, embed_missing)
        out = np.empty_like(sims)
        out[self._matrices()[3]] = sims
        return out

    def _check_dim(self, q):
        if q is not None and self.embedding_size is not None and q.shape[0] != self.embedding_size:
            raise BFMError(f"probe embedding of size {q.shape[0]}, the gallery holds {self.embedding_size}")

    def search(self, probe: Mapping, k: int = 5, *, embed_missing: EmbedMissing | None = None,
               threshold: float | Mapping[str, float] | None = None) -> list[Match]:
        """The ``k`` best entries for ``probe``, best first (ties: lower index first).

        ``threshold`` (squared L2; or one per extractor, ``{"full": .., "partial": ..}``, for the
        extractor each entry is met through): only entries within it are returned, so a stranger
        gets ``[]``. For 1:N use the pack's open-set thresholds
        (``FaceAnalysis.search_thresholds()``), not its 1:1 verification threshold.
        """
        if k < 1:
            raise BFMError(f"search: k must be >= 1, got {k}")
        if not len(self):
            return []
        sims, probe_masked = self._sorted_scores(probe, embed_missing)
        if threshold is not None:
            sims = np.where(self._within(sims, probe_masked, threshold), sims, -np.inf)
        hits = self._top(sims, probe_masked, k)
        return [h for h in hits if math.isfinite(h.similarity)] if threshold is not None else hits

    def identify(self, probe: Mapping, threshold: float | Mapping[str, float], k: int = 5, *,
                 embed_missing: EmbedMissing | None = None) -> Identification:
        """Who is ``probe``? The best entry within its extractor's ``threshold`` (squared L2, or one
        per extractor), or nobody; with the ``k`` best entries regardless of the threshold, from one
        scoring of the gallery."""
        if k < 1:
            raise BFMError(f"identify: k must be >= 1, got {k}")
        if not len(self):
            return Identification(None, None, [])
        sims, probe_masked = self._sorted_scores(probe, embed_missing)
        candidates = self._top(sims, probe_masked, k)
        within = self._within(sims, probe_masked, threshold)
        best = self._top(np.where(within, sims, -np.inf), probe_masked, 1)[0] if within.any() else None
        return Identification(None if best is None else best.identity, best, candidates)

    def _within(self, sims, probe_masked: bool, threshold) -> np.ndarray:
        """Per stored row: is its score within the threshold of the extractor it is met through?"""
        n_unmasked = self._matrices()[4]
        if isinstance(threshold, Mapping):
            limits = {e: float(threshold[e]) for e in EXTRACTORS}
        else:
            limits = {e: float(threshold) for e in EXTRACTORS}
        for e, d in limits.items():
            if not 0.0 <= d <= 4.0:
                raise BFMError(f"search: threshold {d} for {e} must be a squared L2 distance in [0, 4]")
        distance = 2.0 - 2.0 * sims.astype(np.float64)
        if probe_masked:
            return distance <= limits["partial"]
        row_limit = np.full(sims.shape[0], limits["partial"])
        row_limit[:n_unmasked] = limits["full"]
        return distance <= row_limit

    def _top(self, sims, probe_masked: bool, k: int) -> list[Match]:
        order = self._matrices()[3]
        k = min(k, sims.shape[0])
        top = np.argpartition(-sims, k - 1)[:k] if k < sims.shape[0] else np.arange(sims.shape[0])
        top = top[np.lexsort((order[top], -sims[top]))]
        return [self.match(int(order[j]), sims[j], probe_masked) for j in top]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(full, partial, masked) in enrolment order (copies)."""
        full_s, partial_s, masked, order, _ = self._matrices()
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.shape[0])
        return full_s[inverse], partial_s[inverse], masked.copy()

    def save(self, path) -> Path:
        """Write the gallery to one ``.npz`` (arrays + a JSON header), atomically; no pickle."""
        path = Path(path)
        full, partial, masked = self.arrays()
        header = {
            "format": GALLERY_FORMAT,
            "embedding_size": self.embedding_size,
            "identities": self.identities,
        }
        if any(s is not None for s in self.sources):
            header["sources"] = self.sources
        if self.info:
            header["info"] = self.info
        meta = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=meta, full=full, partial=partial, masked=masked)
        return path

    @classmethod
    def load(cls, path) -> Gallery:
        """Read a gallery written by ``save``; a malformed file raises ``BFMError`` naming it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(data["meta"].tobytes().decode("utf-8"))
                full, partial, masked = data["full"], data["partial"], data["masked"]
        except FileNotFoundError:
            raise NotFoundError(f"{path}: gallery file not found") from None
        except (OSError, KeyError, ValueError, UnicodeError, EOFError, TypeError, AttributeError):
            # not numpy's own words: for a pickle they say "load it unsafely using allow_pickle"
            raise BFMError(f"{path}: not a gallery file (expected an .npz written by "
                           "`bfm gallery enrol` or Gallery.save)") from None
        version = header.get("format") if isinstance(header, dict) else None
        if version != GALLERY_FORMAT:
            raise BFMError(f"{path}: unsupported gallery format {version!r}")
        identities = header.get("identities")
        n = len(identities) if isinstance(identities, list) else -1
        if full.shape != partial.shape or full.ndim != 2 or full.shape[0] != n or masked.shape != (n,):
            raise BFMError(f"{path}: inconsistent gallery arrays")
        sources = header.get("sources")
        if sources is not None and (not isinstance(sources, list) or len(sources) != n):
            raise BFMError(f"{path}: inconsistent gallery sources")
        gallery = cls(header.get("embedding_size"))
        gallery.info = dict(header.get("info") or {})
        if n:
            gallery.enrol_embeddings(identities, full, partial, masked, sources=sources)
        return gallery
