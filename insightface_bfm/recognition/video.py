"""Faces in a video file or a camera: every K-th frame analysed, faces linked into tracks.

``analyze_video(app, source)`` is what ``bfm analyze VIDEO`` (or ``--camera N``) runs. Each
analysed frame gives one record, ``{"frame", "time", "faces": [...]}``, each face in the shape of
``bfm analyze --json`` (with ``--gallery``, of ``bfm gallery search --json``) plus its ``track``;
the run ends with one summary record, ``{"video", "frames", "analysed", "every", "fps", "tracks"}``,
a track being its frames, its mask state over time (``segments``, ``mask_changes``) and, with a
gallery, its identity by vote (``tracking``). ``json_path`` gets those records as JSON lines,
``draw_path`` the labelled video (every frame, boxed with the faces of the last analysed frame).
Both are written atomically, also when the run is stopped (Ctrl-C, SIGTERM): what was analysed
so far is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from ..atomic import atomic_write_text, current_umask
from ..errors import BFMError
from ..runlock import sigterm_as_interrupt
from .analyze import face_record
from .gallery import search_faces, searchable_gallery
from .tracking import Tracker

# file names `bfm analyze` treats as videos (anything OpenCV's FFmpeg back-end reads)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DRAW_FPS = 25.0  # frame rate of a drawn video when the source gives none (cameras often do not)


def is_video_file(path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_EXTENSIONS


def open_video(source):
    """``(capture, name, fps, frame_count)`` of a video file or a camera index; BFMError if unreadable."""
    if isinstance(source, int):
        cap, name = cv2.VideoCapture(source), f"camera {source}"
        if not cap.isOpened():
            raise BFMError(f"{name}: cannot be opened (no such camera, or it is in use)")
    else:
        name = str(source)
        if not Path(name).is_file():
            raise BFMError(f"{name}: no such video file")
        cap = cv2.VideoCapture(name)
        if not cap.isOpened():
            raise BFMError(f"{name}: OpenCV cannot read it as a video")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, name, fps, (count if count > 0 else None)


@dataclass
class VideoRun:
    """What a run over a video did: frames read and analysed, faces, tracks, records, speed."""

    video: str
    every: int
    fps: float
    frames: int = 0
    analysed: int = 0
    faces: int = 0
    masked: int = 0
    seconds: float = 0.0
    records: list = field(default_factory=list)
    tracks: list = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"video": self.video, "frames": self.frames, "analysed": self.analysed, "every": self.every,
                "fps": round(self.fps, 3), "tracks": [t.summary() for t in self.tracks]}

    def __str__(self):
        return (f"{self.video}: {self.frames} frames, {self.analysed} analysed ({self.frames_per_second:.1f} "
                f"frames/s), {self.faces} faces ({self.masked} masked), {len(self.tracks)} "
                f"track{'s' if len(self.tracks) != 1 else ''}")


class VideoOut:
    """A labelled video written to a temporary file beside ``path``, renamed into place on close."""

    def __init__(self, path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix,
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov")
                                          else "MJPG"))
        self.writer = cv2.VideoWriter(str(self.tmp), fourcc, fps, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise BFMError(f"{self.path}: OpenCV cannot write a video of this kind (try .mp4 or .avi)")

    def write(self, frame) -> None:
        self.writer.write(frame)

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        if keep:
            os.chmod(self.tmp, 0o666 & ~current_umask())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def check_video_request(source, every: int = 1, max_frames: int | None = None) -> None:
    """The checks ``analyze_video`` makes before any work, callable before a pack is loaded."""
    if every < 1:
        raise BFMError(f"--every {every}: expected 1 or more (analyse every K-th frame)")
    if max_frames is not None and max_frames < 1:
        raise BFMError(f"--max-frames {max_frames}: expected 1 or more")
    if not isinstance(source, int) and not Path(str(source)).is_file():
        raise BFMError(f"{source}: no such video file")


def analyze_video(app, source, *, every: int = 1, gallery_path=None, threshold: float | None = None,
                  json_path=None, draw_path=None, max_frames: int | None = None, embedding: bool = False,
                  progress: bool = True, tracker: Tracker | None = None, on_frame=None) -> VideoRun:
    """Analyse every ``every``-th frame of ``source`` (a video file path or a camera index); see the
    module doc. ``max_frames`` stops after that many frames read (a camera never ends by itself)."""
    from tqdm import tqdm

    check_video_request(source, every, max_frames)
    gallery = thresholds = None
    if gallery_path is not None:
        gallery = searchable_gallery(app, gallery_path, k=1)
        gallery.grouped_rows()
        thresholds = app.verification_thresholds(threshold)
    cap, name, fps, count = open_video(source)
    tracker = tracker or Tracker()
    run = VideoRun(video=name, every=every, fps=fps)
    total = count if max_frames is None else min(count or max_frames, max_frames)
    bar = tqdm(total=total, desc="video", unit="frame", disable=not progress)
    out = None
    finished = False
    started = time.perf_counter()
    drawn_faces, drawn_names = [], None
    try:
        with sigterm_as_interrupt():
            while max_frames is None or run.frames < max_frames:
                index = run.frames
                sampled = index % every == 0
                if sampled or draw_path is not None:
                    ok, frame = cap.read()
                else:
                    ok, frame = cap.grab(), None
                if not ok:
                    break
                run.frames += 1
                if sampled:
                    record, drawn_faces, drawn_names = _analyse_frame(
                        app, frame, index, fps, tracker, gallery, thresholds, embedding)
                    run.analysed += 1
                    run.faces += len(drawn_faces)
                    run.masked += sum(bool(f.masked) for f in drawn_faces)
                    run.records.append(record)
                    if on_frame is not None:
                        on_frame(record)
                if draw_path is not None:
                    if out is None:
                        size = (frame.shape[1], frame.shape[0])
                        out = VideoOut(draw_path, fps if fps > 0 else DRAW_FPS, size)
                    out.write(app.draw_on(frame, drawn_faces, drawn_names) if drawn_faces else frame)
                bar.update(1)
                if sampled:
                    bar.set_postfix(tracks=len(tracker.tracks()), refresh=False)
        finished = True
    finally:
        run.seconds = time.perf_counter() - started
        bar.close()
        cap.release()
        run.tracks = tracker.tracks()
        if out is not None:
            out.close(keep=run.frames > 0)
        if json_path is not None and (finished or run.records):
            lines = [json.dumps(r) for r in run.records] + [json.dumps({"summary": run.summary()})]
            atomic_write_text(json_path, "\n".join(lines) + "\n")
    if run.frames == 0:
        raise BFMError(f"{name}: no frame could be read")
    return run


def _analyse_frame(app, frame, index, fps, tracker, gallery, thresholds, embedding):
    faces = app.get(frame)
    identities = None
    if gallery is not None and faces:
        records, labels = search_faces(app, gallery, faces, k=1, thresholds=thresholds)
        identities = [r["identity"] for r in records]
    else:
        records = [face_record(f) for f in faces]
    tracks = tracker.update(index, faces, identities)
    for record, face, track in zip(records, faces, tracks):
        record["track"] = track.id
        if embedding:
            record["embedding"] = face_record(face, embedding=True)["embedding"]
    names = [f"#{t.id}" + (f" {i}" if i else "") for t, i in zip(tracks, identities or [None] * len(tracks))]
    time_s = round(index / fps, 3) if fps > 0 else None
    return {"frame": index, "time": time_s, "faces": records}, faces, names
