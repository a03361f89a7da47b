"""Analyse photos: every face, its box, detection score, masked state, C's score and route.

``analyze_images(app, inputs)`` is what ``bfm analyze`` runs: one record per image,
``{"image": PATH, "faces": [{"bbox", "det_score", "masked", "mask_score", "extractor"}]}``,
optionally written as JSON lines, and with ``draw_dir`` a labelled picture per image
(``FaceAnalysis.draw_on``).

Inputs are files, folders and ``-`` (``imaging.collect_images``). An image named directly
that cannot be read or shows no face is an error (the caller asked about that image); inside a
folder, unreadable images are counted as misses and faceless ones recorded with no faces.
``aligned=True`` takes 112x112 aligned crops as they are (no detection: a detector rarely finds
a face filling the whole picture), as ``FaceAnalysis.get_aligned`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import BFMError, ImageError, NoFaceError
from ..imaging import collect_images, encode_image, read_image
from ..matching import l2_normalize
from ..runtime import ALIGNED_SIZE


def open_app(pack="bfm", root=None, det_size: int = 640, providers=None):
    """A prepared ``FaceAnalysis`` on a pack name (under ROOT/models) or a pack folder."""
    from ..app import FaceAnalysis

    if det_size < 32 or det_size % 32:
        raise BFMError(f"det_size {det_size}: expected a multiple of 32 (e.g. 640)")
    app = FaceAnalysis(name=pack, root=root, providers=providers)
    app.prepare(ctx_id=0, det_size=(det_size, det_size))
    return app


def check_aligned(img, source):
    if img.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
        raise ImageError(
            f"{source}: --aligned expects a {ALIGNED_SIZE}x{ALIGNED_SIZE} aligned crop, "
            f"got {img.shape[1]}x{img.shape[0]}"
        )
    return img


def image_faces(app, img, source, *, aligned: bool = False, embed: str = "routed", main_only: bool = False):
    """The analysed faces of one image: detected (all, or the main one), or the aligned crop itself."""
    if aligned:
        return app.get_aligned(check_aligned(img, source), embed=embed)
    return app.get(img, max_num=1 if main_only else 0, embed=embed)


def face_record(face, *, embedding: bool = False, kps: bool = False) -> dict:
    """The JSON form of one analysed face (box and detection score are null for an aligned crop);
    ``kps`` adds the 5 keypoints (null for an aligned crop), ``embedding`` the normalised embedding."""
    bbox = face.get("bbox")
    det = face.get("det_score")
    record = {
        "bbox": None if bbox is None else [round(float(v), 1) for v in np.asarray(bbox)[:4]],
        "det_score": None if det is None else round(float(det), 4),
        "masked": bool(face["masked"]),
        "mask_score": round(float(face["mask_score"]), 4),
        "extractor": face["extractor"],
    }
    if kps:
        points = face.get("kps")
        record["kps"] = None if points is None else [[round(float(x), 1), round(float(y), 1)]
                                                     for x, y in np.asarray(points)[:5, :2]]
    if embedding:
        record["embedding"] = [round(float(v), 6) for v in l2_normalize(face["embedding"])]
    return record


@dataclass
class PhotoRun:
    """What a run over photos did: images answered, faces, misses (unreadable images in folders)."""

    images: int = 0
    faces: int = 0
    masked: int = 0
    faceless: list = field(default_factory=list)
    misses: list = field(default_factory=list)  # (path, reason)
    records: list = field(default_factory=list)

    def __str__(self):
        text = f"{self.images} images, {self.faces} faces ({self.masked} masked)"
        if self.faceless:
            text += f", {len(self.faceless)} without a face"
        if self.misses:
            text += f", {len(self.misses)} unreadable"
        return text


def run_photos(app, inputs, answer: Callable, *, aligned=False, json_path=None, draw_dir=None,
               progress=True, on_image=None) -> PhotoRun:
    """Shared loop of analyse and search: read each image, find its faces, ``answer(faces) ->
    records`` (one dict per face, plus a label per face for pictures), write JSON and pictures."""
    from tqdm import tqdm

    items = collect_images(inputs)
    run = PhotoRun()
    bar = tqdm(items, desc="analysing", unit="img", disable=not progress or len(items) < 2)
    try:
        for path, name, named in bar:
            try:
                img = read_image(path)
            except ImageError:
                if named:
                    raise
                run.misses.append((str(path), "unreadable"))
                continue
            faces = image_faces(app, img, path, aligned=aligned)
            if not faces:
                if named:
                    raise NoFaceError(f"{path}: no face found")
                run.faceless.append(str(path))
            records, labels = answer(faces)
            record = {"image": str(path), "faces": records}
            run.images += 1
            run.faces += len(faces)
            run.masked += sum(bool(f.masked) for f in faces)
            run.records.append(record)
            if draw_dir is not None:
                picture = app.draw_on(img, faces, labels)
                out = Path(draw_dir) / name
                atomic_write_bytes(out, encode_image(picture, out.suffix))
            if on_image is not None:
                with bar.external_write_mode():  # a table line, then the bar again below it
                    on_image(record)
    finally:
        # also after Ctrl-C or an error: what was answered so far is kept
        if json_path is not None and run.records:
            atomic_write_text(json_path, "".join(json.dumps(r) + "\n" for r in run.records))
    return run


def analyze_images(app, inputs, *, aligned: bool = False, json_path=None, draw_dir=None,
                   embedding: bool = False, progress: bool = True, on_image=None) -> PhotoRun:
    """Analyse every face of ``inputs`` (files, folders, ``-``); see the module doc."""

    def answer(faces):
        return [face_record(f, embedding=embedding) for f in faces], None

    return run_photos(app, inputs, answer, aligned=aligned, json_path=json_path, draw_dir=draw_dir,
                      progress=progress, on_image=on_image)
