"""Open-set (1:N) search: thresholds that keep strangers unknown, and the 1:N report (FPIR, FNIR, DET).

A 1:N search answers "who is this?" with the best gallery entry that passes its threshold, or
"unknown". Two error rates measure it (the NIST FRVT 1:N terms):

- FPIR, false positive identification rate: share of searches by people *never enrolled* that
  name somebody;
- FNIR, false negative identification rate: share of searches by *enrolled* people whose answer
  is not them (unknown, or somebody else).

A 1:1 verification threshold is far too loose for 1:N: a stranger meets every gallery entry, so
his best score is the maximum of N impostor scores. The search threshold is therefore chosen on
its own, at a target FPIR, on identities never trained on (``choose_search_thresholds``): part of
them enrolled (one bare face each), the rest of their faces and every face of the others searched
bare and masked. E_F's meetings (an unmasked probe and an unmasked entry) and E_P's (either one
masked) live in two embedding spaces and get a threshold each: E_P's at the target FPIR on the
masked strangers' searches (all through E_P), E_F's so that the bare strangers' searches (through
E_F, and through E_P where an entry is masked) stay at the target FPIR too.

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

import cv2
import numpy as np

from ..errors import BFMError, DatasetError
from ..imaging import ARCFACE_KPS, list_image_files, read_image

SEARCH_FPIR = 0.01
# FPIRs at which a calibration also records the thresholds (``--fpir`` picks among them)
FPIR_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
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


def _pair_at(top: np.ndarray, masked: np.ndarray, fpir: float) -> tuple[float, float]:
    """(E_F, E_P) similarity thresholds at ``fpir`` from the strangers' best scores ``top`` (n, 2).
    A probe C calls masked meets every entry through E_P, so E_P's threshold is chosen on those
    searches alone; an unmasked probe meets unmasked entries through E_F and masked ones through E_P,
    so E_F's threshold is then chosen on the unmasked searches so that, together with the false
    alarms E_P's threshold already lets through there, they stay within ``fpir`` too."""
    p_vals = top[masked, 1]
    if np.isfinite(p_vals).sum() * fpir < 1.0:  # few masked probes: every E_P meeting
        p_vals = top[:, 1]
    t_p = _threshold_allowing(p_vals, int(math.floor(fpir * np.isfinite(p_vals).sum() + 1e-9)))
    bare = top[~masked]
    through_p = bare[:, 1] >= t_p
    allowed = int(math.floor(fpir * len(bare) + 1e-9)) - int(through_p.sum())
    t_f = _threshold_allowing(bare[~through_p, 0], allowed)
    return t_f, t_p


def choose_search_thresholds(scores: OpenSetScores, fpir: float = SEARCH_FPIR) -> dict:
    """Squared L2 thresholds, E_F's and E_P's, that keep the share of strangers named at ``fpir``
    for bare and for masked probes (``_pair_at``); also at every FPIR of ``FPIR_GRID`` the data can
    measure (the calibration curve).

    Raises ``BFMError`` when fewer than ``1 / fpir`` stranger searches meet the gallery through an
    extractor (an FPIR that cannot be measured)."""
    if not 0.0 < fpir < 1.0:
        raise BFMError(f"FPIR {fpir}: must be in (0, 1), e.g. 0.01")
    strangers = scores.subset(~scores.mated)
    top = np.maximum(strangers.best_mate, strangers.best_nonmate)
    counts = {"full": int(np.isfinite(top[~strangers.masked, 0]).sum()),
              "partial": int(np.isfinite(top[:, 1]).sum())}
    least = min(counts.values())
    if least * fpir < 1.0:
        which = "E_F" if counts["full"] <= counts["partial"] else "E_P"
        raise BFMError(f"FPIR {fpir}: {least} stranger searches meet the gallery through {which}, at least "
                       f"{math.ceil(1 / fpir)} are needed to measure it; give more faces or a higher FPIR")
    t_f, t_p = _pair_at(top, strangers.masked, fpir)
    curve = {"full": [], "partial": []}
    for f in FPIR_GRID:
        if least * f >= 1.0:
            cf, cp = _pair_at(top, strangers.masked, f)
            curve["full"].append([f, 2.0 - 2.0 * cf])
            curve["partial"].append([f, 2.0 - 2.0 * cp])
    return {"fpir": float(fpir), "distance": 2.0 - 2.0 * t_f, "distance_partial": 2.0 - 2.0 * t_p,
            "stranger_searches": counts, "curve": curve}


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

_W, _H, _L, _R, _T, _B = 640, 480, 70, 20, 40, 55
_LO = 1e-3


def _xy(fpir, fnir):
    span = -math.log10(_LO)
    x = _L + (np.log10(np.clip(fpir, _LO, 1.0)) + span) / span * (_W - _L - _R)
    y = _T + (1.0 - (np.log10(np.clip(fnir, _LO, 1.0)) + span) / span) * (_H - _T - _B)
    return np.stack([x, y], axis=-1)


def det_image(curves: dict, points: dict | None = None, title: str = "DET (1:N)") -> np.ndarray:
    """A BGR DET plot: FNIR against FPIR, both on log axes from 1e-3 to 1, one curve per probe
    type; ``points`` ``{label: {probe type: (fpir, fnir)}}`` marks operating points."""
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
    cv2.putText(img, "FPIR (strangers named, log scale)", (_L + 130, _H - 12), font, 0.45, black, 1,
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
        ly = _T + 18 + 18 * i
        cv2.line(img, (_W - _R - 200, ly - 4), (_W - _R - 175, ly - 4), colour, 2)
        cv2.putText(img, str(ptype)[:24], (_W - _R - 170, ly), font, 0.4, black, 1, cv2.LINE_AA)
    markers = [cv2.MARKER_CIRCLE if hasattr(cv2, "MARKER_CIRCLE") else cv2.MARKER_DIAMOND,
               cv2.MARKER_TILTED_CROSS, cv2.MARKER_SQUARE]
    for j, (label, per_type) in enumerate((points or {}).items()):
        marker = markers[j % len(markers)]
        for ptype, (fp, fn) in per_type.items():
            if ptype in colour_of and fp is not None and fn is not None:
                (x, y), = np.round(_xy(np.array([fp]), np.array([fn]))).astype(int)
                cv2.drawMarker(img, (int(x), int(y)), colour_of[ptype], marker, 14, 2)
        ly = _T + 18 + 18 * (len(curves) + j)
        cv2.drawMarker(img, (_W - _R - 188, ly - 4), black, marker, 10, 2)
        cv2.putText(img, label[:28], (_W - _R - 170, ly), font, 0.4, black, 1, cv2.LINE_AA)
    return img


# -- the two library entry points ------------------------------------------------------------------

def open_set_scores(pack, faces, *, people=None, enrolled=None, strangers=None, probe_masks=None,
                    max_probes: int = MAX_PROBES, seed: int = 0, cache_dir=None, progress: bool = True,
                    root=None, min_strangers: int = 0) -> OpenSetScores:
    """Every search of an open-set run of ``pack`` on the aligned crops of ``faces`` (one sub-folder
    per identity), probes bare and masked (``probe_masks``: ``{probe type: mask types or None}``,
    default ``{"masked": None}``: every mask type). Fewer than ``min_strangers`` stranger searches per
    probe type is an error, raised before any network runs."""
    from .embedders import BFMPackEmbedder

    probe_masks = {"masked": None} if probe_masks is None else dict(probe_masks)
    if "bare" in probe_masks:
        raise BFMError("probe type 'bare' is the unmasked one; name the masked kinds otherwise")
    files = face_files(faces, people)
    plans = plan_searches(files, enrolled=enrolled, strangers=strangers, max_probes=max_probes, seed=seed)
    n_strangers = sum(not q[2] for p in plans for q in p.probes)
    if n_strangers < min_strangers:
        raise BFMError(f"{faces}: {n_strangers} stranger searches per probe type from {len(files)} "
                       f"identities, at least {min_strangers} are needed; give more faces or a higher FPIR")
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
    scores.info = {
        "faces": str(faces), "identities": len(files), "folds": len(plans),
        "enrolled": [len(p.gallery) for p in plans],
        "strangers": [len({q[0] for q in p.probes if not q[2]}) for p in plans],
        "probe_types": {"bare": None,
                        **{k: (None if v is None else list(v)) for k, v in probe_masks.items()}},
        "max_probes": max_probes, "seed": seed, "embedding_seconds": round(time.time() - t0, 1),
    }
    return scores


def calibrate_pack(pack, faces, *, people=None, fpir: float = SEARCH_FPIR, seed: int = 0, cache_dir=None,
                   progress: bool = True, root=None, write: bool = True, probe_masks=None) -> dict:
    """Choose ``pack``'s open-set thresholds on ``faces`` (identities never trained on; two folds,
    bare and masked probes, see the module doc) and store them in its manifest
    (``bfm.thresholds.search_*``); returns what was stored. ``bfm models calibrate`` runs this."""
    from ..zoo.packs import load_pack, set_search_thresholds

    if not 0.0 < fpir < 1.0:
        raise BFMError(f"FPIR {fpir}: must be in (0, 1), e.g. 0.01")
    pack_dir = load_pack(pack, root).path
    scores = open_set_scores(pack_dir, faces, people=people, seed=seed, cache_dir=cache_dir,
                             progress=progress, probe_masks=probe_masks, min_strangers=math.ceil(1 / fpir))
    chosen = choose_search_thresholds(scores, fpir)
    achieved = rates(scores, chosen["distance"], chosen["distance_partial"])
    search = {
        "distance": chosen["distance"], "distance_partial": chosen["distance_partial"], "fpir": fpir,
        "calibration": {**scores.info, "people": None if people is None else len(people),
                        "stranger_searches": chosen["stranger_searches"], "curve": chosen["curve"],
                        "rates": achieved, "made_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
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
        operating.setdefault(f"search (FPIR {th.search_fpir:g})",
                             (th.search_distance, th.search_distance_for("partial")))
    if th.verification_distance is not None:
        operating.setdefault("1:1 verification", (th.distance_for("full"), th.distance_for("partial")))
    results = {"pack": str(loaded.path), **scores.info,
               "searches": {"enrolled": int(scores.mated.sum()), "strangers": int((~scores.mated).sum())},
               "at": {label: {"distance": d[0], "distance_partial": d[1], "rates": rates(scores, *d)}
                      for label, d in operating.items()}}
    return results, scores


def format_search(search: dict) -> str:
    """Two lines: the thresholds and what they achieve on the calibration searches."""
    cal = search["calibration"]
    cells = ", ".join(f"{p} FPIR {100 * r['fpir']:.2f}% FNIR {100 * r['fnir']:.2f}%"
                      for p, r in cal["rates"].items() if p != "all" and r["fpir"] is not None)
    return (f"open-set thresholds at FPIR {search['fpir']:g}: squared L2 {search['distance']:.3f} "
            f"for E_F (cosine "
            f"{1 - search['distance'] / 2:.3f}), {search['distance_partial']:.3f} for E_P (cosine "
            f"{1 - search['distance_partial'] / 2:.3f}); {cal['identities']} identities, "
            f"{cal['stranger_searches']['full']} + {cal['stranger_searches']['partial']} stranger searches "
            f"(E_F, E_P)\non these searches: {cells}")


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
