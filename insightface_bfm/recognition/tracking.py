"""Faces of successive video frames linked into tracks: box overlap plus embedding similarity.

Each analysed frame's faces are matched to the open tracks greedily, best pair first. A pair is a
candidate when the boxes overlap (IoU >= ``iou_min``) and the embeddings do not disagree
(cosine >= ``similarity_floor``), or when the embeddings agree on their own (cosine >=
``similarity_min``: the same face after a jump, a skipped frame or a short loss). Embeddings are
compared within one extractor only: a face turning masked changes route (E_F -> E_P), and E_F and
E_P vectors are not comparable, so the track keeps its last vector of each extractor and a face
whose extractor the track has not seen yet is matched on overlap alone. A track not matched for
``max_missed`` analysed frames is closed.

Per track: its mask state over time (segments of frames with one state, and the frames where it
changed) and, with a gallery, the identity by vote (one vote per analysed frame: the frame's
answer, or ``unknown``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..matching import l2_normalize


def box_iou(a, b) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a[:4])
    bx1, by1, bx2, by2 = (float(v) for v in b[:4])
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: np.ndarray
    first_frame: int
    last_frame: int
    vectors: dict = field(default_factory=dict)  # extractor -> last normalised embedding
    states: list = field(default_factory=list)  # (frame, masked, mask_score)
    votes: Counter = field(default_factory=Counter)
    missed: int = 0

    def observe(self, frame: int, face, identity: str | None = None) -> None:
        self.box = np.asarray(face["bbox"], dtype=np.float32)[:4]
        self.last_frame = frame
        self.missed = 0
        self.vectors[face["extractor"]] = l2_normalize(face["embedding"])
        self.states.append((frame, bool(face["masked"]), float(face["mask_score"])))
        if identity is not None:
            self.votes[identity] += 1

    def similarity(self, face) -> float | None:
        mine = self.vectors.get(face["extractor"])
        if mine is None:
            return None
        return float(mine @ l2_normalize(face["embedding"]))

    def segments(self) -> list[dict]:
        """Runs of analysed frames with one mask state: ``{"first", "last", "masked"}``."""
        runs: list[dict] = []
        for frame, masked, _ in self.states:
            if runs and runs[-1]["masked"] == masked:
                runs[-1]["last"] = frame
            else:
                runs.append({"first": frame, "last": frame, "masked": masked})
        return runs

    @property
    def identity(self) -> str | None:
        """The most voted answer (``unknown`` counts as one); None without a gallery."""
        if not self.votes:
            return None
        return sorted(self.votes.items(), key=lambda kv: (-kv[1], kv[0] == "unknown", kv[0]))[0][0]

    def summary(self) -> dict:
        masked = sum(m for _, m, _ in self.states)
        record = {
            "track": self.id,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "analysed_frames": len(self.states),
            "masked_frames": masked,
            "mask_changes": [{"frame": s["first"], "masked": s["masked"]} for s in self.segments()[1:]],
            "segments": self.segments(),
        }
        if self.votes:
            record["identity"] = self.identity
            record["votes"] = dict(self.votes.most_common())
        return record


class Tracker:
    def __init__(self, *, iou_min: float = 0.3, similarity_min: float = 0.5, similarity_floor: float = 0.2,
                 max_missed: int = 10):
        self.iou_min = iou_min
        self.similarity_min = similarity_min
        self.similarity_floor = similarity_floor
        self.max_missed = max_missed
        self.open: list[Track] = []
        self.closed: list[Track] = []
        self._next_id = 1

    def update(self, frame: int, faces, identities=None) -> list[Track]:
        """Link ``faces`` (analysed, with ``bbox``, ``embedding``, ``extractor``, ``masked``) of
        ``frame`` to tracks; returns the track of each face, in order."""
        identities = identities or [None] * len(faces)
        pairs = []
        for ti, track in enumerate(self.open):
            for fi, face in enumerate(faces):
                iou = box_iou(track.box, face["bbox"])
                sim = track.similarity(face)
                overlap = iou >= self.iou_min and (sim is None or sim >= self.similarity_floor)
                alike = sim is not None and sim >= self.similarity_min
                if overlap or alike:
                    pairs.append((iou + (sim or 0.0), ti, fi))
        assigned: dict[int, Track] = {}
        used = set()
        for _, ti, fi in sorted(pairs, reverse=True):
            if ti in used or fi in assigned:
                continue
            used.add(ti)
            assigned[fi] = self.open[ti]
        for fi, face in enumerate(faces):
            track = assigned.get(fi)
            if track is None:
                track = Track(self._next_id, np.asarray(face["bbox"], np.float32)[:4], frame, frame)
                self._next_id += 1
                self.open.append(track)
                used.add(len(self.open) - 1)
            track.observe(frame, face, identities[fi])
            assigned[fi] = track
        for ti, track in enumerate(self.open):
            if ti not in used:
                track.missed += 1
        still = []
        for track in self.open:
            (still if track.missed <= self.max_missed else self.closed).append(track)
        self.open = still
        return [assigned[fi] for fi in range(len(faces))]

    def tracks(self) -> list[Track]:
        """Every track so far, by id."""
        return sorted(self.closed + self.open, key=lambda t: t.id)
