"""Masked copies of whole data sets (image folders, RecordIO), reproducible from a manifest.

``mask_dataset(src, dst, ...)`` is what ``bfm mask SRC DST`` runs. Each image gets a style drawn
from ``(seed, image name)`` alone, so a rerun, a resumed run and a run on another machine give
the same masks; the styles (and the 5 points used) go to ``DST/mask_manifest.jsonl``: a header
line, then one line per image.

Folder output is resumable: every image is written atomically and counts as done once it
exists and the manifest (flushed atomically every few hundred images and on exit) lists it.
RecordIO output is written atomically as a whole: a rerun skips a complete output and redoes
an interrupted one (use ``fmt="folder"`` for image-level resume of a huge RecordIO).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import BFMError, DatasetError, ImageError
from ..imaging import (
    ARCFACE_KPS,
    collect_images,
    decode_image,
    encode_image,
    read_image,
    refuse_writing_over_sources,
)
from ..runlock import output_lock
from .render import render_mask
from .styles import MaskStyle, check_types, random_style

log = logging.getLogger("insightface_bfm.masks")

MANIFEST = "mask_manifest.jsonl"
MANIFEST_KIND = "insightface-bfm mask manifest"
FLUSH_EVERY_S = 20.0


@dataclass
class MaskSummary:
    masked: int = 0  # images written by this run
    skipped: int = 0  # already done by an earlier run
    faces: int = 0  # masks drawn by this run
    misses: list = field(default_factory=list)  # (image, reason): unreadable, or no face in --raw
    manifest: str = ""

    def __str__(self):
        return (f"{self.masked} masked ({self.faces} faces), {self.skipped} already there, "
                f"{len(self.misses)} missed; manifest {self.manifest}")


def image_rng(seed: int, name: str) -> np.random.Generator:
    """The random stream of one image: depends only on the seed and the image's name."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def load_detector(path, det_size: int = 640, threshold: float = 0.5):
    """insightface SCRFD from an ONNX file or from the detector of a pack folder (found as
    ``FaceAnalysis(det_pack=...)`` finds it)."""
    from ..data.align import load_detector as load

    path = Path(os.path.expanduser(os.fspath(path)))
    if path.is_dir():
        return load(det_pack=str(path), det_size=det_size, threshold=threshold)
    return load(detector=path, det_size=det_size, threshold=threshold)


def mask_image(img: np.ndarray, name: str, seed: int, types, detector=None, worn_low: float = 0.0,
               lighting: bool = False):
    """Mask one image: the aligned crop (template points) or, with a detector, every face found.

    Returns ``(masked, faces)``, ``faces`` a list of ``{"kps", "style"}`` dicts; masked is None
    when the detector found no face.
    """
    rng = image_rng(seed, name)
    if detector is None:
        kps_list = [ARCFACE_KPS]
        if img.shape[:2] != (112, 112):  # aligned crops of another size: scale the template
            kps_list = [ARCFACE_KPS * np.array([img.shape[1] / 112.0, img.shape[0] / 112.0])]
    else:
        _, kpss = detector.detect(img, max_num=0)
        kps_list = [] if kpss is None else list(kpss)
    out, faces = img, []
    h, w = img.shape[:2]
    for kps in kps_list:
        style = random_style(rng, types, worn_low=worn_low, lighting=lighting)
        kps = np.asarray(kps, dtype=np.float64)
        if detector is not None:
            # a detector may place a point a little outside the photo: pull it onto the border
            kps = np.clip(kps, [0.0, 0.0], [w - 1.0, h - 1.0])
        try:
            out, _ = render_mask(out, kps, style)
        except ImageError as e:
            log.warning("%s: face skipped (%s)", name, e)
            continue
        faces.append({"kps": kps.tolist(), "style": style.to_dict()})  # exact: reproducible
    if not faces:
        return None, faces
    return out, faces


class Manifest:
    """``DST/mask_manifest.jsonl``: header line + one line per image, rewritten atomically."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.header = header
        self.entries: dict[str, dict] = {}
        self._flushed = time.monotonic()
        if path.is_file():
            self.entries = {e["image"]: e for e in read_manifest(path)[1]}

    def add(self, entry: dict):
        self.entries[str(entry["image"])] = entry
        if time.monotonic() - self._flushed > FLUSH_EVERY_S:
            self.flush()

    def flush(self):
        lines = [json.dumps(self.header)] + [json.dumps(e) for e in self.entries.values()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self._flushed = time.monotonic()


def read_manifest(path) -> tuple[dict, list[dict]]:
    """(header, entries) of a mask manifest; each entry's faces carry ``MaskStyle`` dicts."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        header = json.loads(lines[0]) if lines else {}
        entries = [json.loads(ln) for ln in lines[1:]]
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable mask manifest ({e})") from None
    if header.get("kind") != MANIFEST_KIND:
        raise DatasetError(f"{path}: not a mask manifest (header kind {header.get('kind')!r})")
    for e in entries:
        for face in e.get("faces", []):
            MaskStyle.from_dict(face["style"])  # validates
    return header, entries


def _source_kind(src) -> tuple[str, Path | None]:
    if not isinstance(src, Path) or str(src) == "-":
        return "files", None  # a list of paths, or "-": paths on stdin
    if src.is_file() and src.suffix != ".rec":
        return "files", None
    if src.is_file() and src.suffix == ".rec":
        return "rec", src
    if src.is_dir() and (src / "train.rec").is_file():
        return "rec", src / "train.rec"
    if src.is_dir():
        return "folder", None
    raise DatasetError(f"{src}: not an image folder, a RecordIO folder (train.rec) or a .rec file")


def mask_dataset(src, dst, *, types=None, seed: int = 0, detector=None, fmt: str = "auto",
                 worn_low: float = 0.0, lighting: bool = False, progress: bool = True) -> MaskSummary:
    """Write a masked copy of ``src`` to the folder ``dst``: ``src`` is an image folder, an image
    file, a list of image files, ``"-"`` (image paths on stdin), a RecordIO folder or a ``.rec``.
    Holds ``dst``'s run lock (a second run into it fails; SIGTERM unwinds like Ctrl-C).

    ``detector``: None for aligned crops (ArcFace template points), else an insightface detector
    (``load_detector``) whose faces all get masks. ``fmt``: ``auto`` (same kind as the source),
    ``folder`` or ``rec``. ``worn_low``: share of masks worn under the nose (default none).
    ``lighting``: contact shadows and the sheen of synthetic fabrics (``random_style``'s).
    """
    types = check_types(types)
    src = Path(src) if isinstance(src, (str, os.PathLike)) and str(src) != "-" else src
    dst = Path(dst)
    kind, rec = _source_kind(src)
    if fmt == "auto":
        fmt = "folder" if kind == "files" else kind
    if fmt not in ("folder", "rec"):
        raise BFMError(f"format {fmt!r}: expected auto, folder or rec")
    if kind != "files" and (dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents):
        raise BFMError(f"{dst}: the destination must not be the source folder {src} or inside it")
    items = _folder_items(src, dst) if kind in ("folder", "files") else None
    source = "-" if kind == "files" and not isinstance(src, Path) else str(src)
    with output_lock(dst, "bfm mask"):
        return _mask_into(src, dst, kind, rec, items, source, types, seed, detector, fmt, worn_low,
                          bool(lighting), progress)


def _mask_into(src, dst, kind, rec, items, source, types, seed, detector, fmt, worn_low, lighting, progress):
    header = {"kind": MANIFEST_KIND, "version": 1, "source": source, "seed": int(seed),
              "types": list(types), "points": "detector" if detector is not None else "template",
              "worn_low": float(worn_low), "lighting": lighting}
    manifest = Manifest(dst / MANIFEST, header)
    if manifest.entries and manifest.path.is_file():
        old = read_manifest(manifest.path)[0]
        # manifests from before an option was added were made without it
        was = {"worn_low": 0.0, "lighting": False}
        keys = ("seed", "types", "points", "worn_low", "lighting")
        if any(old.get(k, was.get(k)) != header[k] for k in keys):
            raise BFMError(f"{manifest.path}: made with seed {old.get('seed')}, types {old.get('types')}, "
                           f"points {old.get('points')}, worn_low {old.get('worn_low', 0.0)}, "
                           f"lighting {old.get('lighting', False)}; "
                           "use another DST or the same settings to resume")
    reader = None
    if items is None:
        items, reader = _rec_items(rec)
    summary = MaskSummary(manifest=str(manifest.path))
    how = (seed, types, detector, worn_low, lighting)  # mask_image's arguments after the image's
    if fmt == "folder":
        _to_folder(items, dst, manifest, summary, how, progress)
    elif reader is None:
        raise BFMError(f"{src}: RecordIO output needs a RecordIO source; use format 'folder'")
    else:
        _to_rec(items, reader, rec, dst, manifest, summary, how, progress)
    return summary


class _Item:
    """One source image: its manifest name, its output path relative to DST and a loader."""

    __slots__ = ("name", "rel", "load")

    def __init__(self, name, rel, load):
        self.name, self.rel, self.load = name, rel, load


def _folder_items(src, dst: Path):
    try:
        found = collect_images(src if isinstance(src, (Path, str)) else list(src))
    except ImageError as e:
        raise DatasetError(str(e)) from None
    refuse_writing_over_sources(found, dst)
    items = []
    for path, rel, _ in found:
        items.append(_Item(rel.as_posix(), rel, lambda path=path: read_image(path)))
    return items


def _rec_items(rec: Path):
    from ..data.recordio import RecordIOReader, unpack_header

    reader = RecordIOReader(rec)
    keys = list(reader.keys)
    first = reader.read_header(keys[0])[0] if keys else None
    if first is not None and first.flag > 0 and keys[0] == 0:
        end = int(first.label[0])  # insightface layout: images are keys 1 .. end-1
        image_keys = [k for k in keys if 0 < k < end]
    else:
        image_keys = keys
    items = []
    for k in image_keys:
        def load(k=k):
            header, payload = unpack_header(reader.read_idx(k), f"{rec} record {k}")
            return decode_image(payload, f"{rec} record {k}"), header

        label = reader.read_header(k)[0].label
        cls = int(label if np.ndim(label) == 0 else label[0])
        items.append(_Item(str(k), Path(str(cls)) / f"{k}.jpg", load))
    return items, reader


def _bar(items, progress, desc):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", disable=not progress)


def _to_folder(items, dst, manifest, summary, how, progress):
    dst.mkdir(parents=True, exist_ok=True)
    try:
        for item in _bar(items, progress, "masking"):
            out_path = dst / item.rel
            entry = manifest.entries.get(item.name)
            if out_path.exists() and entry is not None and entry.get("faces"):
                summary.skipped += 1
                continue
            try:
                loaded = item.load()
            except (ImageError, DatasetError) as e:
                summary.misses.append((item.name, f"unreadable: {e}"))
                continue
            img = loaded[0] if isinstance(loaded, tuple) else loaded
            masked, faces = mask_image(img, item.name, *how)
            if masked is None:
                summary.misses.append((item.name, "no face found"))
                continue
            atomic_write_bytes(out_path, encode_image(masked, out_path.suffix))
            manifest.add({"image": item.name, "output": item.rel.as_posix(), "faces": faces})
            summary.masked += 1
            summary.faces += len(faces)
    finally:
        manifest.flush()


def _to_rec(items, reader, rec, dst, manifest, summary, how, progress):
    from ..data.recordio import RecordIOWriter, pack_header, unpack_header

    out_rec, out_idx = dst / "train.rec", dst / "train.idx"
    if out_rec.is_file() and out_idx.is_file() and all(it.name in manifest.entries for it in items):
        summary.skipped = len(items)
        return
    image_keys = {int(it.name) for it in items}
    manifest.entries = {}
    with RecordIOWriter(out_rec, out_idx) as writer:
        for key in _bar(reader.keys, progress, "masking"):
            payload = reader.read_idx(key)
            if key in image_keys:
                name = str(key)
                header, body = unpack_header(payload, f"{rec} record {key}")
                try:
                    img = decode_image(body, f"{rec} record {key}")
                    masked, faces = mask_image(img, name, *how)
                except ImageError as e:
                    masked, faces = None, []
                    summary.misses.append((name, f"unreadable: {e}"))
                if masked is None:
                    if not summary.misses or summary.misses[-1][0] != name:
                        summary.misses.append((name, "no face found"))
                else:  # unmasked records are kept as they were
                    payload = pack_header(header, encode_image(masked, ".jpg"))
                    summary.masked += 1
                    summary.faces += len(faces)
                manifest.entries[name] = {"image": name, "faces": faces}
            writer.write_idx(key, payload)
    prop = rec.parent / "property"
    if prop.is_file():
        atomic_write_text(dst / "property", prop.read_text())
    manifest.flush()
