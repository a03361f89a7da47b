"""Open-set (1:N) search: thresholds that keep strangers unknown, and the 1:N report (FPIR, FNIR, DET).

A 1:N search answers "who is this?" with the best gallery entry that passes its threshold, or
"unknown". Two error rates measure it (the NIST FRVT 1:N terms):

- FPIR, false positive identification rate: share of searches by people *never enrolled* that
  name somebody;
- FNIR, false negative identification rate: share of searches by *enrolled* people whose answer
  is not them (unknown, or somebody else).

A 1:1 verification threshold is far too loose for 1:N: a stranger meets every gallery entry, so
his best score is the maximum of N impostor scores, and FPIR grows with the gallery's size N. The
search thresholds are therefore chosen for a gallery size, at a target FPIR, on identities never
trained on (``choose_search_thresholds``): every face, bare and masked, is compared with a bare face
of every *other* identity, by the pair rule (the impostor meetings a search makes); a stranger
searching N entries is named with probability FPIR(N) = 1 - (1 - FMR)^N, FMR being the share of
impostor meetings within the threshold (independent meetings: conservative where some probes
resemble everybody). E_F's meetings (an unmasked probe and an unmasked entry) and E_P's (either one
masked) live in two embedding spaces and get a threshold each: E_P's on the meetings of probes C
calls masked (all through E_P), E_F's so that the meetings of unmasked probes (through E_F, and
through E_P where an entry is masked) stay at the same FMR. The pair (E_F, E_P) is stored at a
grid of FMRs, so that ``FaceAnalysis.search_thresholds`` sets them for any gallery size and FPIR.
The searches themselves (half the identities enrolled, the others strangers, then swapped) give
the FPIR and FNIR reached (``rates``) and the DET curve.

The protocol reuses the product's own code: ``matching.Gallery`` scores every probe by the pair
rule, the embeddings are the ones ``FaceAnalysis`` produces (``BFMPackEmbedder``), masks are
drawn by ``insightface_bfm.masks``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BFMError, DatasetError
from ..imaging import ARCFACE_KPS, list_image_files, read_image

SEARCH_FPIR = 0.01
SEARCH_GALLERY_SIZE = 1000  # the gallery size of the pack's stored thresholds
# per-meeting false match rates at which a calibration records the threshold pair (the curve that
# FaceAnalysis.search_thresholds reads for other gallery sizes and FPIRs)
FMR_GRID = tuple(m * 10.0 ** e for e in range(-7, 0) for m in (1, 2, 5)) + (0.1, 0.2, 0.5)
MAX_PROBES = 10  # faces searched per identity: LFW's George W Bush (530 photos) must not weigh 53x
EXTRACTORS = ("full", "partial")
DRAWN_MASKS = ("surgical", "n95", "kn95", "cloth", "dark")  # our drawn masks: every family but photo


# -- the plan: who is enrolled, what is searched ----------------------------------------------------

@dataclass
class SearchPlan:
    """One gallery and its searches: ``gallery`` (identity, image key) and ``probes`` (identity,
    image key, mated: the identity is enrolled)."""

    gallery: list
    probes: list


def face_files(faces, people=None) -> dict[str, list[str]]:
    """``{identity: [image key, ...]}`` of a folder with one sub-folder per identity (keys are paths
    relative to it), restricted to ``people`` when given."""
    faces = Path(faces)
    if not faces.is_dir():
        raise DatasetError(f"{faces}: no such face folder (expected one sub-folder per identity)")
    names = sorted(e.name for e in os.scandir(faces) if e.is_dir() and not e.name.startswith("."))
    if people is not None:
        have = set(names)
        missing = [p for p in people if p not in have]
        if missing:
            raise DatasetError(f"{faces}: {len(missing)} listed people have no folder there, "
                               f"e.g. {missing[0]!r}")
        wanted = set(people)
        names = [n for n in names if n in wanted]
    files = {n: [f"{n}/{p.as_posix()}" for p in list_image_files(faces / n)] for n in names}
    return {n: f for n, f in files.items() if f}


def plan_searches(files: dict[str, list[str]], *, enrolled: int | None = None, strangers: int | None = None,
                  max_probes: int = MAX_PROBES, seed: int = 0) -> list[SearchPlan]:
    """The searches of an open-set run on ``files`` (``face_files``).

    Default (``enrolled`` None): two folds, the identities shuffled into two halves, each half
    enrolled in turn with the other as strangers (every identity serves both roles once).
    With ``enrolled``: one gallery of that many identities (those with 2+ faces first, so that
    they can be searched) and ``strangers`` never-enrolled ones (default: all the others).
    Each enrolled identity: its first face enrolled, up to ``max_probes`` others searched;
    each stranger: up to ``max_probes`` faces searched.
    """
    rng = np.random.default_rng(seed)
    names = sorted(files)
    multi = [n for n in names if len(files[n]) >= 2]
    if enrolled is None:
        order = rng.permutation(len(names))
        half = len(names) // 2
        groups = [names[i] for i in order[:half]], [names[i] for i in order[half:]]
        folds = [(groups[0], groups[1]), (groups[1], groups[0])]
    else:
        single = [n for n in names if len(files[n]) < 2]
        picked = [multi[i] for i in rng.permutation(len(multi))][:enrolled]
        picked += [single[i] for i in rng.permutation(len(single))][:enrolled - len(picked)]
        if len(picked) < enrolled:
            raise DatasetError(f"{enrolled} identities to enrol, only {len(names)} in the folder")
        chosen = set(picked)
        rest = [n for n in names if n not in chosen]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        if strangers is not None:
            if strangers > len(rest):
                raise DatasetError(f"{strangers} strangers wanted, only {len(rest)} identities left after "
                                   f"enrolling {enrolled}")
            rest = rest[:strangers]
        folds = [(sorted(picked), sorted(rest))]
    plans = []
    for gallery_names, stranger_names in folds:
        gallery = [(n, files[n][0]) for n in gallery_names]
        probes = [(n, key, True) for n in gallery_names for key in files[n][1:1 + max_probes]]
        probes += [(n, key, False) for n in stranger_names for key in files[n][:max_probes]]
        if not any(p[2] for p in probes) or not any(not p[2] for p in probes) or not gallery:
            raise DatasetError(f"{len(files)} identities ({len(multi)} with 2+ faces): too few for an "
                               "open-set run (it needs enrolled people with a second face and strangers)")
        plans.append(SearchPlan(gallery, probes))
    return plans


# -- embedding every face once (bare, and masked per probe type) ------------------------------------

def _masked_crop(crop, seed: int, index: int, kind: int, types):
    from ..masks import random_style, render_mask

    style = random_style(np.random.default_rng([seed, index, kind, 0]), types=types)
    masked, _ = render_mask(crop, ARCFACE_KPS, style=style, rng=np.random.default_rng([seed, index, kind, 1]))
    return masked


def embed_faces(embedder, faces, keys, probe_masks: dict, seed: int = 0, cache_dir=None,
                progress: bool = True) -> dict:
    """``{(key, probe type): {"full", "partial", "mask_score"}}`` for every key bare and under each
    mask kind of ``probe_masks`` (``{type name: mask types or None for all}``); masked faces are
    drawn per key and kind from ``seed`` (the same pixels on every run)."""
    from .run import EmbeddingCache, _embed_views

    faces = Path(faces)
    views = []
    for index, key in enumerate(sorted(set(keys))):
        path = faces / key
        try:
            st = path.stat()
        except OSError:
            raise DatasetError(f"{path}: face image not found") from None
        ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        views.append(((key, "bare"), ident, lambda p=path: read_image(p)))
        for kind, (name, types) in enumerate(probe_masks.items(), start=1):
            tag = f"#openset:{seed}:{index}:{kind}:{json.dumps(types)}"
            views.append(((key, name), ident + tag,
                          lambda p=path, i=index, k=kind, t=types:
                              _masked_crop(read_image(p), seed, i, k, t)))
    cache = None if cache_dir is None else EmbeddingCache(cache_dir, embedder.model_id)
    stacked = _embed_views(embedder, [(str(i), ident, load) for i, (_, ident, load) in enumerate(views)],
                           cache, batch=256, progress=progress)
    return {view[0]: {f: stacked[f][i] for f in stacked} for i, view in enumerate(views)}


# -- scores ---------------------------------------------------------------------------------------

@dataclass
class OpenSetScores:
    """Per search: probe type, mated, C's verdict on the probe, and per extractor (columns: full,
    partial) the best similarity to a mate and to a non-mate among the entries it meets through
    that extractor (-inf where it meets none)."""

    probe_type: np.ndarray
    mated: np.ndarray
    masked: np.ndarray
    best_mate: np.ndarray
    best_nonmate: np.ndarray
    info: dict = field(default_factory=dict)
    meetings: ImpostorMeetings | None = None  # for choosing thresholds (open_set_scores(meetings=True))

    def __len__(self):
        return int(self.mated.shape[0])

    def subset(self, keep) -> OpenSetScores:
        return OpenSetScores(self.probe_type[keep], self.mated[keep], self.masked[keep], self.best_mate[keep],
                             self.best_nonmate[keep], dict(self.info))

    @classmethod
    def concatenate(cls, parts) -> OpenSetScores:
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("probe_type", "mated", "masked", "best_mate", "best_nonmate")))


def search_scores(plan: SearchPlan, embeddings: dict, probe_types, mask_threshold: float) -> OpenSetScores:
    """Score every probe of ``plan`` (each of ``probe_types``) against its gallery, by the pair rule
    of ``matching.Gallery`` itself."""
    from ..matching import Gallery

    gallery = Gallery()
    for identity, key in plan.gallery:  # enrolment: one bare face per identity
        e = embeddings[(key, "bare")]
        gallery.enrol_embeddings(identity, e["full"], e["partial"], bool(e["mask_score"] >= mask_threshold))
    entry_masked = gallery.masked
    ids = np.array(gallery.identities)
    rows = []
    for ptype in probe_types:
        for identity, key, mated in plan.probes:
            e = embeddings[(key, ptype)]
            masked = bool(e["mask_score"] >= mask_threshold)
            sims = gallery.scores({"masked": masked, "embedding_full": e["full"],
                                   "embedding_partial": e["partial"]}).astype(np.float64)
            partial = entry_masked | masked  # the pair rule: either masked -> E_P
            mate = ids == identity
            best = np.full((2, 2), -np.inf)  # [mate, nonmate] x [full, partial]
            for col, met in enumerate((~partial, partial)):
                for row, who in enumerate((mate, ~mate)):
                    sel = sims[met & who]
                    if sel.size:
                        best[row, col] = sel.max()
            rows.append((ptype, mated, masked, best[0], best[1]))
    return OpenSetScores(np.array([r[0] for r in rows]), np.array([r[1] for r in rows], bool),
                         np.array([r[2] for r in rows], bool), np.array([r[3] for r in rows]),
                         np.array([r[4] for r in rows]))


def decide(scores: OpenSetScores, similarity_full: float, similarity_partial: float):
    """(known, correct) per search at these similarity thresholds: the answer is the best entry
    passing its extractor's threshold (``Gallery.identify``), else unknown."""
    top = np.maximum(scores.best_mate, scores.best_nonmate)
    limits = np.array([similarity_full, similarity_partial])
    cand = np.where(top >= limits, top, -np.inf)
    known = np.isfinite(cand).any(axis=1)
    use_partial = cand[:, 1] > cand[:, 0]
    mate_wins = scores.best_mate >= scores.best_nonmate
    correct = known & np.where(use_partial, mate_wins[:, 1], mate_wins[:, 0])
    return known, correct


def rates(scores: OpenSetScores, distance_full: float, distance_partial: float) -> dict:
    """FPIR and FNIR per probe type (and all together) at these squared L2 thresholds."""
    known, correct = decide(scores, 1.0 - distance_full / 2.0, 1.0 - distance_partial / 2.0)
    out = {}
    for ptype in list(dict.fromkeys(scores.probe_type.tolist())) + ["all"]:
        sel = np.ones(len(scores), bool) if ptype == "all" else scores.probe_type == ptype
        non, mat = sel & ~scores.mated, sel & scores.mated
        out[ptype] = {
            "fpir": float(known[non].mean()) if non.any() else None,
            "fnir": float((~correct[mat]).mean()) if mat.any() else None,
            "strangers_named": int(known[non].sum()), "stranger_searches": int(non.sum()),
            "enrolled_missed": int((~correct[mat]).sum()), "enrolled_searches": int(mat.sum()),
            "probes_called_masked": float(scores.masked[sel].mean()) if sel.any() else None,
        }
    return out


# -- choosing the thresholds ----------------------------------------------------------------------

def _threshold_allowing(values: np.ndarray, allowed: int) -> float:
    """The similarity above which at most ``allowed`` of ``values`` (strangers' best scores) lie:
    halfway between the last allowed one and the first refused one."""
    v = np.sort(values[np.isfinite(values)])[::-1]
    if not v.size:
        return 1.0
    if allowed >= len(v):
        return float(v[-1])
    # a margin (not the next float): the threshold travels as a distance, 2 - 2 * similarity
    if allowed <= 0:
        return float(v[0] + 1e-6)
    if v[allowed - 1] - v[allowed] > 2e-6:
        return float((v[allowed] + v[allowed - 1]) / 2.0)
    return float(v[allowed] + 1e-6)


@dataclass
class ImpostorMeetings:
    """Similarities of impostor meetings (a probe and a bare face of another identity), by the probe's
    C verdict and the route the pair rule takes: unmasked probes through E_F (``bare_full``) and
    through E_P (``bare_partial``, masked entries), masked probes (``masked_partial``)."""

    bare_full: np.ndarray
    bare_partial: np.ndarray
    masked_partial: np.ndarray

    @property
    def counts(self) -> dict:
        return {"unmasked_probes": int(self.bare_full.size + self.bare_partial.size),
                "masked_probes": int(self.masked_partial.size)}


def impostor_meetings(embeddings: dict, faces: list[tuple[str, str]], probe_types, mask_threshold: float,
                      block: int = 2048) -> ImpostorMeetings:
    """Every face (each of ``probe_types``) against the bare view of every face of another identity
    (``faces``: (identity, key)), routed by the pair rule as ``Gallery`` routes them."""
    from ..matching import l2_normalize

    ids = np.array([f[0] for f in faces])
    bare = [embeddings[(k, "bare")] for _, k in faces]
    entry_f = l2_normalize(np.stack([e["full"] for e in bare]))
    entry_p = l2_normalize(np.stack([e["partial"] for e in bare]))
    entry_masked = np.array([e["mask_score"] >= mask_threshold for e in bare])
    out = {"bare_full": [], "bare_partial": [], "masked_partial": []}
    for ptype in probe_types:
        views = [embeddings[(k, ptype)] for _, k in faces]
        pf = l2_normalize(np.stack([e["full"] for e in views]))
        pp = l2_normalize(np.stack([e["partial"] for e in views]))
        pm = np.array([e["mask_score"] >= mask_threshold for e in views])
        for s0 in range(0, len(faces), block):
            rows = slice(s0, s0 + block)
            other = ids[rows, None] != ids[None, :]
            sf, sp = pf[rows] @ entry_f.T, pp[rows] @ entry_p.T
            masked_rows = pm[rows][:, None] & other
            unmasked = ~pm[rows][:, None] & other
            out["masked_partial"].append(sp[masked_rows])
            out["bare_full"].append(sf[unmasked & ~entry_masked[None, :]])
            out["bare_partial"].append(sp[unmasked & entry_masked[None, :]])
    return ImpostorMeetings(*(np.concatenate(out[k]).astype(np.float64) if out[k] else np.zeros(0)
                              for k in ("bare_full", "bare_partial", "masked_partial")))


def _pair_at(meetings: ImpostorMeetings, fmr: float) -> tuple[float, float]:
    """(E_F, E_P) similarity thresholds letting ``fmr`` of the impostor meetings through: E_P's on the
    masked probes' meetings, then E_F's so that the unmasked probes' meetings (those E_P's threshold
    already lets through counted) stay at ``fmr`` too."""
    mp = meetings.masked_partial if meetings.masked_partial.size * fmr >= 1 else \
        np.concatenate([meetings.masked_partial, meetings.bare_partial])  # few masked probes: all E_P
    t_p = _threshold_allowing(mp, int(math.floor(fmr * mp.size + 1e-9)))
    n_bare = meetings.bare_full.size + meetings.bare_partial.size
    allowed = int(math.floor(fmr * n_bare + 1e-9)) - int((meetings.bare_partial >= t_p).sum())
    t_f = _threshold_allowing(meetings.bare_full, allowed)
    return t_f, t_p


def fmr_for(fpir: float, gallery_size: int) -> float:
    """The per-meeting false match rate at which a stranger searching ``gallery_size`` entries is
    named with probability ``fpir``: 1 - (1 - fpir) ** (1 / N)."""
    return 1.0 - (1.0 - fpir) ** (1.0 / max(1, int(gallery_size)))


def choose_search_thresholds(meetings: ImpostorMeetings, fpir: float = SEARCH_FPIR,
                             gallery_size: int = SEARCH_GALLERY_SIZE) -> dict:
    """Squared L2 thresholds, E_F's and E_P's, naming a stranger in a gallery of ``gallery_size``
    with probability ``fpir`` (module doc); with the curve of threshold pairs over ``FMR_GRID``.

    Raises ``BFMError`` when the meetings are too few to measure that rate (fewer than 1 / FMR)."""
    if not 0.0 < fpir < 1.0:
        raise BFMError(f"FPIR {fpir}: must be in (0, 1), e.g. 0.01")
    if gallery_size < 1:
        raise BFMError(f"gallery size {gallery_size}: must be >= 1")
    fmr = fmr_for(fpir, gallery_size)
    counts = meetings.counts
    least = min(v for v in counts.values() if v) if any(counts.values()) else 0
    if least * fmr < 1.0:
        raise BFMError(f"FPIR {fpir:g} in a gallery of {gallery_size}: needs a false match rate of {fmr:.1e} "
                       f"per meeting, and {least:,} impostor meetings measure rates down to "
                       f"{1 / max(least, 1):.1e}; "
                       "give more faces, a smaller gallery size or a higher FPIR")
    t_f, t_p = _pair_at(meetings, fmr)
    curve = []
    for f in sorted(set(FMR_GRID) | {fmr}):
        if least * f >= 1.0:
            cf, cp = _pair_at(meetings, f)
            curve.append([f, 2.0 - 2.0 * cf, 2.0 - 2.0 * cp])
    return {"fpir": float(fpir), "gallery_size": int(gallery_size), "fmr": fmr,
            "distance": 2.0 - 2.0 * t_f, "distance_partial": 2.0 - 2.0 * t_p,
            "impostor_meetings": counts, "curve": curve}


def distances_from_curve(curve, fpir: float, gallery_size: int) -> tuple[dict, bool]:
    """({"full": d, "partial": d}, clamped) at ``fpir`` for ``gallery_size`` from a stored curve
    (``[[fmr, d_full, d_partial], ...]``), interpolated in log FMR; ``clamped``: the rate needed lies
    beyond the measured ones, and the nearest measured pair is returned."""
    rows = sorted((float(r[0]), float(r[1]), float(r[2])) for r in curve)
    if not rows:
        raise BFMError("empty open-set calibration curve")
    f = fmr_for(fpir, gallery_size)
    if f <= rows[0][0] or f >= rows[-1][0]:
        r = rows[0] if f <= rows[0][0] else rows[-1]
        return {"full": r[1], "partial": r[2]}, f < rows[0][0]
    for a, b in zip(rows, rows[1:]):
        if a[0] <= f <= b[0]:
            w = (math.log(f) - math.log(a[0])) / (math.log(b[0]) - math.log(a[0]))
            return {"full": a[1] + w * (b[1] - a[1]), "partial": a[2] + w * (b[2] - a[2])}, False
    raise AssertionError("unreachable")


def det_curve(scores: OpenSetScores, points: int = 300) -> dict:
    """``{probe type: (fpir, fnir)}`` as one similarity threshold (both extractors) moves."""
    top = np.maximum(scores.best_mate, scores.best_nonmate)
    finite = top[np.isfinite(top)]
    grid = np.unique(np.quantile(finite, np.linspace(0, 1, points))) if finite.size else np.zeros(1)
    out = {}
    for ptype in dict.fromkeys(scores.probe_type.tolist()):
        part = scores.subset(scores.probe_type == ptype)
        fp, fn = [], []
        for t in grid:
            known, correct = decide(part, t, t)
            fp.append(known[~part.mated].mean() if (~part.mated).any() else np.nan)
            fn.append((~correct[part.mated]).mean() if part.mated.any() else np.nan)
        out[ptype] = (np.array(fp), np.array(fn))
    return out


# -- the DET plot (OpenCV, as the ROC plot of report.py) ---------------------------------------------

_W, _H, _L, _R, _T, _B = 900, 480, 70, 280, 40, 55  # the legend in the right margin
_LO = 1e-3


def _xy(fpir, fnir):
    span = -math.log10(_LO)
    x = _L + (np.log10(np.clip(fpir, _LO, 1.0)) + span) / span * (_W - _L - _R)
    y = _T + (1.0 - (np.log10(np.clip(fnir, _LO, 1.0)) + span) / span) * (_H - _T - _B)
    return np.stack([x, y], axis=-1)


def det_image(curves: dict, points: dict | None = None, title: str = "DET (1:N)") -> np.ndarray:
    """A BGR DET plot: FNIR against FPIR, both on log axes from 1e-3 to 1, one curve per probe
    type; ``points`` ``{label: {probe type: (fpir, fnir)}}`` marks operating points."""
    import cv2

    img = np.full((_H, _W, 3), 255, np.uint8)
    grey, black, font = (215, 215, 215), (0, 0, 0), cv2.FONT_HERSHEY_SIMPLEX
    for e in range(-3, 1):
        (x, y), = _xy(np.array([10.0 ** e]), np.array([10.0 ** e]))
        cv2.line(img, (int(x), _T), (int(x), _H - _B), grey, 1)
        cv2.line(img, (_L, int(y)), (_W - _R, int(y)), grey, 1)
        label = f"1e{e}" if e else "1"
        cv2.putText(img, label, (int(x) - 14, _H - _B + 18), font, 0.4, black, 1, cv2.LINE_AA)
        cv2.putText(img, label, (_L - 40, int(y) + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (_L, _T), (_W - _R, _H - _B), black, 1)
    cv2.putText(img, "FPIR (strangers named, log scale)", (_L + 170, _H - 12), font, 0.45, black, 1,
                cv2.LINE_AA)
    cv2.putText(img, "FNIR", (8, _T + (_H - _T - _B) // 2), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(img, title, (_L, _T - 14), font, 0.6, black, 1, cv2.LINE_AA)
    colours = [(200, 80, 0), (0, 0, 200), (0, 150, 0), (150, 0, 150), (0, 140, 220)]
    colour_of = {}
    for i, (ptype, (fp, fn)) in enumerate(curves.items()):
        colour = colour_of[ptype] = colours[i % len(colours)]
        ok = np.isfinite(fp) & np.isfinite(fn)
        pts = np.round(_xy(fp[ok], fn[ok])).astype(np.int32)
        if len(pts):
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
    markers = [cv2.MARKER_DIAMOND, cv2.MARKER_TILTED_CROSS, cv2.MARKER_SQUARE, cv2.MARKER_TRIANGLE_UP]
    for j, per_type in enumerate((points or {}).values()):
        for ptype, (fp, fn) in per_type.items():
            if ptype in colour_of and fp is not None and fn is not None:
                (x, y), = np.round(_xy(np.array([fp]), np.array([fn]))).astype(int)
                cv2.drawMarker(img, (int(x), int(y)), colour_of[ptype], markers[j % len(markers)], 14, 2)
    # the legend in the right margin
    x0 = _W - _R + 14
    for i, ptype in enumerate(curves):
        ly = _T + 12 + 18 * i
        cv2.line(img, (x0, ly - 4), (x0 + 25, ly - 4), colour_of[ptype], 2)
        cv2.putText(img, str(ptype)[:36], (x0 + 32, ly), font, 0.4, black, 1, cv2.LINE_AA)
    for j, label in enumerate(points or {}):
        ly = _T + 12 + 18 * (len(curves) + j)
        cv2.drawMarker(img, (x0 + 12, ly - 4), black, markers[j % len(markers)], 10, 2)
        cv2.putText(img, label[:36], (x0 + 32, ly), font, 0.4, black, 1, cv2.LINE_AA)
    return img


# -- the two library entry points ------------------------------------------------------------------

def open_set_scores(pack, faces, *, people=None, enrolled=None, strangers=None, probe_masks=None,
                    max_probes: int = MAX_PROBES, seed: int = 0, cache_dir=None, progress: bool = True,
                    root=None, min_meetings: int = 0, meetings: bool = False) -> OpenSetScores:
    """Every search of an open-set run of ``pack`` on the aligned crops of ``faces`` (one sub-folder
    per identity), probes bare and masked (``probe_masks``: ``{probe type: mask types or None}``,
    default ``{"masked": None}``: every mask type). ``meetings``: also every impostor meeting
    (``impostor_meetings``, for choosing thresholds); fewer than ``min_meetings`` of them per probe
    type is an error, raised before any network runs."""
    from .embedders import BFMPackEmbedder

    probe_masks = {"masked": None} if probe_masks is None else dict(probe_masks)
    if "bare" in probe_masks:
        raise BFMError("probe type 'bare' is the unmasked one; name the masked kinds otherwise")
    files = face_files(faces, people)
    plans = plan_searches(files, enrolled=enrolled, strangers=strangers, max_probes=max_probes, seed=seed)
    used = {}
    for p in plans:
        for identity, key, *_ in [*p.gallery, *p.probes]:
            used.setdefault(identity, set()).add(key)
    n_faces = sum(len(v) for v in used.values())
    n_meetings = sum(len(v) * (n_faces - len(v)) for v in used.values())
    if n_meetings < min_meetings:
        raise BFMError(f"{faces}: {n_faces} faces of {len(used)} identities make {n_meetings:,} impostor "
                       f"meetings per probe type, at least {min_meetings:,} are needed; give more faces, a "
                       "smaller gallery size or a higher FPIR")
    sample = read_image(Path(faces) / next(iter(files.values()))[0])
    if sample.shape[:2] != (112, 112):
        raise DatasetError(f"{faces}: holds {sample.shape[1]}x{sample.shape[0]} photos, not aligned 112x112 "
                           "crops; align them first with `bfm align SRC DST --detector DET.onnx`")
    embedder = BFMPackEmbedder(pack, root=root)
    keys = [k for p in plans for k in [g[1] for g in p.gallery] + [q[1] for q in p.probes]]
    t0 = time.time()
    embeddings = embed_faces(embedder, faces, keys, probe_masks, seed, cache_dir, progress)
    types = ["bare", *probe_masks]
    scores = OpenSetScores.concatenate([search_scores(p, embeddings, types, embedder.mask_threshold)
                                        for p in plans])
    if meetings:
        everyone = sorted({(q[0], q[1]) for p in plans for q in p.probes}
                          | {g for p in plans for g in p.gallery})
        scores.meetings = impostor_meetings(embeddings, everyone, types, embedder.mask_threshold)
    scores.info = {
        "faces": str(Path(faces).resolve()), "identities": len(files), "folds": len(plans),
        "enrolled": [len(p.gallery) for p in plans],
        "strangers": [len({q[0] for q in p.probes if not q[2]}) for p in plans],
        "probe_types": {"bare": None,
                        **{k: (None if v is None else list(v)) for k, v in probe_masks.items()}},
        "max_probes": max_probes, "seed": seed, "embedding_seconds": round(time.time() - t0, 1),
    }
    return scores


def calibrate_pack(pack, faces, *, people=None, fpir: float = SEARCH_FPIR,
                   gallery_size: int = SEARCH_GALLERY_SIZE, seed: int = 0, cache_dir=None,
                   progress: bool = True, root=None, write: bool = True, probe_masks=None) -> dict:
    """Choose ``pack``'s open-set thresholds for galleries of ``gallery_size`` at ``fpir`` on ``faces``
    (identities never trained on, bare and masked; see the module doc) and store them in its
    manifest (``bfm.thresholds.search_*``); returns what was stored. ``bfm models calibrate`` runs
    this. The FPIR and FNIR the searches reach (galleries of half the identities, thresholds set for
    that size) are stored with them."""
    from ..zoo.packs import load_pack, set_search_thresholds

    if not 0.0 < fpir < 1.0:
        raise BFMError(f"FPIR {fpir}: must be in (0, 1), e.g. 0.01")
    if gallery_size < 1:
        raise BFMError(f"gallery size {gallery_size}: must be >= 1")
    pack_dir = load_pack(pack, root).path
    scores = open_set_scores(pack_dir, faces, people=people, seed=seed, cache_dir=cache_dir,
                             progress=progress,
                             probe_masks=probe_masks, meetings=True,
                             min_meetings=math.ceil(1 / fmr_for(fpir, gallery_size)))
    chosen = choose_search_thresholds(scores.meetings, fpir, gallery_size)
    searched = int(round(np.mean(scores.info["enrolled"])))
    at_searched, _ = distances_from_curve(chosen["curve"], fpir, searched)
    achieved = rates(scores, at_searched["full"], at_searched["partial"])
    search = {
        "distance": chosen["distance"], "distance_partial": chosen["distance_partial"], "fpir": fpir,
        "gallery_size": gallery_size,
        "calibration": {**scores.info, "people": None if people is None else len(people),
                        "impostor_meetings": chosen["impostor_meetings"], "curve": chosen["curve"],
                        "rates_gallery_size": searched, "rates": achieved,
                        "made_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    if write:
        set_search_thresholds(pack_dir, search)
    return search


def evaluate_open_set(pack, faces, *, people=None, enrolled=None, strangers=None, probe_masks=None,
                      max_probes: int = MAX_PROBES, seed: int = 0, cache_dir=None, progress: bool = True,
                      root=None, thresholds: dict | None = None) -> tuple[dict, OpenSetScores]:
    """``bfm eval --open-set``: FPIR and FNIR per probe type at the pack's open-set thresholds and at
    its 1:1 verification thresholds (and at ``thresholds``, ``{label: (distance E_F, distance E_P)}``);
    returns (results dict, the scores, for ``det_curve``)."""
    from ..zoo.packs import load_pack

    loaded = load_pack(pack, root)
    scores = open_set_scores(loaded.path, faces, people=people, enrolled=enrolled, strangers=strangers,
                             probe_masks=probe_masks, max_probes=max_probes, seed=seed, cache_dir=cache_dir,
                             progress=progress)
    th = loaded.thresholds
    operating = dict(thresholds or {})
    if th.search_distance is not None:
        operating.setdefault(f"open-set, stored (FPIR {th.search_fpir:g}, N={th.search_gallery_size})",
                             (th.search_distance, th.search_distance_for("partial")))
    size = int(round(np.mean(scores.info["enrolled"])))
    if th.search_curve and size != th.search_gallery_size:
        d = th.search_distances_at(th.search_fpir, size)
        operating.setdefault(f"open-set for N={size} (FPIR {th.search_fpir:g})", (d["full"], d["partial"]))
    if th.verification_distance is not None:
        operating.setdefault("1:1 verification", (th.distance_for("full"), th.distance_for("partial")))
    results = {"pack": str(loaded.path), **scores.info,
               "searches": {"enrolled": int(scores.mated.sum()), "strangers": int((~scores.mated).sum())},
               "at": {label: {"distance": d[0], "distance_partial": d[1], "rates": rates(scores, *d)}
                      for label, d in operating.items()}}
    return results, scores


def format_search(search: dict) -> str:
    """Two lines: the thresholds and what they reach on the calibration's own searches."""
    cal = search["calibration"]
    cells = ", ".join(f"{p} FPIR {100 * r['fpir']:.2f}% FNIR {100 * r['fnir']:.2f}%"
                      for p, r in cal["rates"].items() if p != "all" and r["fpir"] is not None)
    meet = cal["impostor_meetings"]
    return (f"open-set thresholds for galleries of {search['gallery_size']} at FPIR {search['fpir']:g}: "
            f"squared L2 "
            f"{search['distance']:.3f} for E_F (cosine {1 - search['distance'] / 2:.3f}), "
            f"{search['distance_partial']:.3f} for E_P (cosine {1 - search['distance_partial'] / 2:.3f}); "
            f"{cal['identities']} identities, {meet['unmasked_probes']:,} + {meet['masked_probes']:,} "
            f"impostor meetings (unmasked, masked probes)\nsearches in galleries of "
            f"{cal['rates_gallery_size']} (thresholds "
            f"for that size): {cells}")


def markdown_report(results: dict) -> str:
    """FPIR / FNIR per operating point and probe type."""
    lines = ["| thresholds | E_F dist. | E_P dist. | probes | FPIR | FNIR | strangers named "
             "| enrolled missed |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for label, at in results["at"].items():
        for ptype, r in at["rates"].items():
            fpir = "n/a" if r["fpir"] is None else f"{100 * r['fpir']:.2f}%"
            fnir = "n/a" if r["fnir"] is None else f"{100 * r['fnir']:.2f}%"
            lines.append(f"| {label} | {at['distance']:.3f} | {at['distance_partial']:.3f} | {ptype} "
                         f"| {fpir} | "
                         f"{fnir} | {r['strangers_named']}/{r['stranger_searches']} | "
                         f"{r['enrolled_missed']}/{r['enrolled_searches']} |")
    return "\n".join(lines) + "\n"


def write_open_set_report(out_dir, results: dict, scores: OpenSetScores) -> dict:
    """``open_set.json``, ``open_set.md`` and ``det.png`` in ``out_dir``."""
    import cv2

    from ..atomic import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "open_set.json", "markdown": out / "open_set.md", "det": out / "det.png"}
    atomic_write_text(paths["json"], json.dumps(results, indent=1) + "\n")
    atomic_write_text(paths["markdown"], markdown_report(results))
    points = {label: {p: (r["fpir"], r["fnir"]) for p, r in at["rates"].items()}
              for label, at in results["at"].items()}
    ok, png = cv2.imencode(".png", det_image(det_curve(scores), points))
    if not ok:
        raise BFMError(f"{paths['det']}: could not encode the DET plot")
    atomic_write_bytes(paths["det"], png.tobytes())
    return paths
