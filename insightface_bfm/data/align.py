"""Detect and align raw photos into 112x112 crops, the form every model here takes.

insightface's SCRFD finds faces and their 5 keypoints; ``face_align.norm_crop`` (through
``imaging.norm_crop``, without its scikit-image FutureWarning) warps the
keypoints onto the ArcFace template (the paper used MTCNN for this step; the template is the
same idea). When a photo holds several faces, ``policy`` picks one: ``largest`` (box area) or
``center`` (box centre nearest the image centre, as for LFW, whose subject is centred).

The folder layout is kept (``SRC/a/b.jpg`` -> ``DST/a/b.jpg``). Each crop is written
atomically, so a crop that exists is complete and a rerun skips it: the job resumes where it
stopped. Photos without a face (or unreadable) are listed in ``DST/misses.txt`` and retried on
the next run; the keypoints used for every crop are appended to ``DST/landmarks.tsv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import BFMError, ImageError, PackError
from ..imaging import collect_images, encode_image, read_image, refuse_writing_over_sources
from ..runlock import output_lock

POLICIES = ("largest", "center")
MISSES_FILE = "misses.txt"
LANDMARKS_FILE = "landmarks.tsv"


def load_detector(detector=None, det_pack: str | None = None, root=None,
                  det_size: int = 640, threshold: float = 0.5):
    """insightface's SCRFD from an ONNX file, or the detector of an insightface (or BFM) pack found
    the way ``FaceAnalysis(det_pack=...)`` finds it (``zoo.packs.find_detector``: name under ROOT/models,
    ROOT from ``root``, ``$INSIGHTFACE_BFM_ROOT`` or ``~/.insightface``)."""
    from insightface.model_zoo import get_model

    if (detector is None) == (det_pack is None):
        raise BFMError("give exactly one of a detector ONNX file (--detector) or an insightface pack "
                       "(--det-pack)")
    if detector is not None:
        path = os.fspath(detector)
        if not os.path.isfile(path):
            raise PackError(f"{path}: detector ONNX file not found")
    else:
        from ..zoo.packs import find_detector

        path = str(find_detector(det_pack, root))
    try:
        model = get_model(path)
    except Exception as e:
        raise PackError(f"{path}: insightface cannot load it ({e})") from None
    if model is None or getattr(model, "taskname", None) != "detection":
        raise PackError(f"{path}: insightface does not load it as a face detector")
    model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)
    return model


def choose_face(bboxes: np.ndarray, image_shape, policy: str) -> int:
    """Index of the face ``policy`` picks among detector boxes (N x 4+, x1 y1 x2 y2)."""
    if policy == "largest":
        area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
        return int(np.argmax(area))
    if policy == "center":
        h, w = image_shape[:2]
        cx, cy = (bboxes[:, 0] + bboxes[:, 2]) / 2, (bboxes[:, 1] + bboxes[:, 3]) / 2
        return int(np.argmin((cx - w / 2) ** 2 + (cy - h / 2) ** 2))
    raise BFMError(f"policy {policy!r}: expected one of {', '.join(POLICIES)}")


def align_image(img: np.ndarray, detector, policy: str = "largest", size: int = 112):
    """(crop, kps) of the face ``policy`` picks, or (None, None) when no face is found."""
    from ..imaging import norm_crop

    bboxes, kpss = detector.detect(img, max_num=0)
    if bboxes is None or len(bboxes) == 0 or kpss is None:
        return None, None
    k = choose_face(bboxes, img.shape, policy)
    kps = kpss[k].astype(np.float32)
    return norm_crop(img, kps, size), kps


@dataclass
class AlignSummary:
    aligned: int = 0
    skipped: int = 0  # already there from an earlier run
    misses: list = field(default_factory=list)  # (relative path, reason)

    def __str__(self):
        return f"{self.aligned} aligned, {self.skipped} already there, {len(self.misses)} missed"




def align_folder(src, dst, detector, policy: str = "largest", size: int = 112, progress: bool = True,
                 misses_file: str = MISSES_FILE) -> AlignSummary:
    """Align every image of ``src`` into ``dst`` (same relative paths); resumable.

    ``src``: a folder, an image file, a list of image files or ``"-"`` (paths on stdin).
    ``detector``: an insightface detection model (``load_detector``), anything with
    ``detect(img, max_num=0) -> (bboxes, kpss)``. Holds ``dst``'s run lock (a second run into
    it fails at once; SIGTERM unwinds like Ctrl-C, writing the landmarks and misses so far).
    """
    from tqdm import tqdm

    dst = Path(dst)
    if policy not in POLICIES:
        raise BFMError(f"policy {policy!r}: expected one of {', '.join(POLICIES)}")
    if isinstance(src, (str, os.PathLike)) and str(src) != "-":
        src = Path(src)
        if not src.exists():
            raise BFMError(f"{src}: no such image file or folder")
        if src.is_dir() and (dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents):
            raise BFMError(f"{dst}: the destination must not be inside the source folder {src}")
    try:
        files = collect_images(src)
    except ImageError as e:
        raise BFMError(str(e)) from None
    refuse_writing_over_sources(files, dst)
    summary = AlignSummary()
    landmarks = []
    with output_lock(dst, "bfm align"):
        try:
            for path, rel, _ in tqdm(files, desc="aligning", unit="img", disable=not progress):
                out = dst / rel
                if out.exists():
                    summary.skipped += 1
                    continue
                try:
                    img = read_image(path)
                except ImageError as e:
                    summary.misses.append((rel.as_posix(), f"unreadable: {e}"))
                    continue
                crop, kps = align_image(img, detector, policy, size)
                if crop is None:
                    summary.misses.append((rel.as_posix(), "no face found"))
                    continue
                atomic_write_bytes(out, encode_image(crop, rel.suffix))
                landmarks.append(rel.as_posix() + "\t" + " ".join(f"{v:.2f}" for v in kps.reshape(-1)))
                summary.aligned += 1
        finally:
            # also on Ctrl-C / SIGTERM: the crops written so far keep their landmarks
            _append_lines(dst / LANDMARKS_FILE, landmarks, header="image\tkps_x1 y1 ... x5 y5 (source image)")
            # the misses of this run replace the old list: earlier misses were retried just now
            atomic_write_text(dst / misses_file, "".join(f"{p}\t{why}\n" for p, why in summary.misses))
    return summary


def _append_lines(path: Path, lines: list[str], header: str) -> None:
    if not lines:
        return
    old = path.read_text(encoding="utf-8") if path.is_file() else header + "\n"
    atomic_write_text(path, old + "".join(line + "\n" for line in lines))
