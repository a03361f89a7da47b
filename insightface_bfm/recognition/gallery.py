"""Gallery files on disk: enrol folders of people, search photos, list, remove.

The gallery itself is ``matching.Gallery`` (both embeddings and the masked flag of every entry,
one ``.npz``, written atomically, no pickle). Here:

- ``enrol_folder(app, gallery, folder)``: one sub-folder per identity (``Ann/1.jpg``), or
  loose files named after the person (``Ann.jpg``); the main face of each image is enrolled.
  Each entry keeps the sha256 of its image, so enrolling the same image again (a rerun, a copy
  under another name) adds nothing: enrolment is idempotent, and resumable because the
  gallery is saved every few seconds and on exit (Ctrl-C, SIGTERM) under the gallery's run lock.
- ``search_images(app, gallery, inputs)``: every face of each image, its ``k`` best entries
  (best first) and its answer: the best entry within the open-set threshold of the extractor it
  is met through (the pack's ``search_*`` thresholds set for this gallery's size,
  ``FaceAnalysis.search_thresholds``), else ``unknown``.
- A gallery remembers the pack that enrolled it (name, sha256 of E_F and E_P): searching it
  with another pack, whose embeddings mean something else, is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BFMError, ImageError, NoFaceError, NotFoundError
from ..imaging import collect_images, decode_image
from ..matching import Gallery
from ..runlock import output_lock
from .analyze import check_aligned, face_record, image_faces, run_photos

SAVE_EVERY_S = 20.0
UNKNOWN = "unknown"
BATCH = 32  # aligned crops analysed per network run


def pack_identity(app) -> dict:
    pack = app.pack
    return {
        "name": pack.name,
        "embedding_size": pack.embedding_size,
        "full_sha256": pack.files.get(Path(pack.full).name),
        "partial_sha256": pack.files.get(Path(pack.partial).name),
    }


def open_gallery(path, app=None, *, create: bool = False) -> Gallery:
    """Load the gallery at ``path`` (or a new one with ``create``), checked against ``app``'s pack."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise NotFoundError(
                f"{path}: gallery file not found (create it with `bfm gallery enrol {path} DIR`)")
        gallery = Gallery(None if app is None else app.pack.embedding_size)
    else:
        gallery = Gallery.load(path)
    if app is None:
        return gallery
    mine = pack_identity(app)
    if gallery.embedding_size is not None and gallery.embedding_size != mine["embedding_size"]:
        enrolled_with = gallery.info.get("pack", {}).get("name")
        raise BFMError(
            f"{path}: holds {gallery.embedding_size}-D embeddings, pack {mine['name']} embeds to "
            f"{mine['embedding_size']}-D; use the pack that enrolled it ({enrolled_with})"
        )
    theirs = gallery.info.get("pack")
    if theirs and len(gallery) and any(theirs.get(k) != mine[k] for k in ("full_sha256", "partial_sha256")):
        raise BFMError(
            f"{path}: enrolled with pack {theirs.get('name')!r}, whose extractors differ from pack "
            f"{mine['name']!r}'s; search it with that pack or enrol into a new gallery"
        )
    if not theirs:
        gallery.info["pack"] = mine
    return gallery


def identity_of(name: Path) -> str:
    """``Ann/x.jpg`` -> Ann (sub-folder per identity); ``Ann.jpg`` -> Ann (file name)."""
    return name.parts[0] if len(name.parts) > 1 else name.stem


@dataclass
class EnrolSummary:
    enrolled: int = 0
    skipped: int = 0  # images already in the gallery
    misses: list = field(default_factory=list)  # (path, reason)
    entries: int = 0
    identities: int = 0
    path: str = ""

    def __str__(self):
        return (f"{self.path}: {self.enrolled} enrolled, {self.skipped} already there, {len(self.misses)} "
                f"missed; {self.entries} entries of {self.identities} identities")


def enrol_folder(app, gallery_path, folder, *, aligned: bool = False, progress: bool = True) -> EnrolSummary:
    """Enrol the main face of every image of ``folder`` (see the module doc); returns a summary."""
    from tqdm import tqdm

    gallery_path = Path(gallery_path)
    try:
        items = collect_images(folder)
    except ImageError as e:
        raise BFMError(str(e)) from None
    summary = EnrolSummary(path=str(gallery_path))
    with output_lock(gallery_path, "bfm gallery enrol", folder=False):
        gallery = open_gallery(gallery_path, app, create=True)
        saved_at, dirty = time.monotonic(), False
        pending = []  # aligned crops waiting for one batched network run: (crop, identity, sha, path)

        def flush_pending():
            if not pending:
                return
            faces = app.get_aligned(np.stack([p[0] for p in pending]), embed="both")
            for face, (_, identity, sha, _) in zip(faces, pending):
                gallery.enrol(face, identity, source=sha)
            summary.enrolled += len(pending)
            pending.clear()

        try:
            for path, name, _ in tqdm(items, desc="enrolling", unit="img", disable=not progress):
                try:
                    data = path.read_bytes()
                    sha = hashlib.sha256(data).hexdigest()
                    if gallery.has_source(sha) or any(p[2] == sha for p in pending):
                        summary.skipped += 1
                        continue
                    img = decode_image(data, str(path))
                    identity = identity_of(name)
                    if aligned:
                        pending.append((check_aligned(img, path), identity, sha, path))
                        if len(pending) >= BATCH:
                            flush_pending()
                    else:
                        faces = image_faces(app, img, path, embed="both", main_only=True)
                        if not faces:
                            summary.misses.append((str(path), "no face found"))
                            continue
                        gallery.enrol(faces[0], identity, source=sha)
                        summary.enrolled += 1
                except (OSError, ImageError) as e:
                    summary.misses.append((str(path), str(e)))
                    continue
                dirty = True
                if time.monotonic() - saved_at > SAVE_EVERY_S:
                    flush_pending()
                    gallery.save(gallery_path)
                    saved_at, dirty = time.monotonic(), False
            flush_pending()
        finally:
            if dirty or not gallery_path.exists():
                pending.clear()  # an interrupted batch is simply redone by the next run
                gallery.save(gallery_path)
    summary.entries = len(gallery)
    summary.identities = len(set(gallery.identities))
    return summary


def search_faces(app, gallery: Gallery, faces, *, k: int = 5, thresholds: dict) -> tuple[list, list]:
    """The search record of each analysed face (its ``k`` best entries and its answer: the best entry
    within the open-set threshold of the extractor it is met through, ``Gallery.identify``, else
    unknown) and a picture label per face; what ``bfm gallery search`` and ``bfm serve`` answer per
    image. ``thresholds``: ``app.search_thresholds(..., gallery_size=len(gallery))``."""
    records, labels = [], []
    for face in faces:
        found = gallery.identify(face, thresholds, k=k, embed_missing=app.embed_missing)
        hits, best = found.candidates, found.match
        known = best is not None
        record = face_record(face)
        record["identity"] = best.identity if known else UNKNOWN
        record["matches"] = [
            {"identity": h.identity, "similarity": round(h.similarity, 6),
             "distance": round(h.distance, 6), "extractor": h.extractor}
            for h in hits
        ]
        records.append(record)
        labels.append(f"{best.identity} {best.similarity:.2f}" if known else UNKNOWN)
    return records, labels


def searchable_gallery(app, gallery_path, k: int = 5) -> Gallery:
    """The gallery at ``gallery_path`` checked for a search with ``app``'s pack (not empty)."""
    if k < 1:
        raise BFMError(f"k must be >= 1, got {k}")
    gallery = open_gallery(gallery_path, app)
    if not len(gallery):
        raise BFMError(f"{gallery_path}: the gallery is empty; enrol people first")
    return gallery


def search_images(app, gallery_path, inputs, *, k: int = 5, threshold: float | None = None,
                  aligned: bool = False, json_path=None, draw_dir=None, progress: bool = True,
                  on_image=None, fpir: float | None = None):
    """Search every face of ``inputs`` in the gallery; records as ``bfm gallery search --json``.

    ``threshold`` (squared L2, both extractors) or ``fpir`` (the pack's calibrated thresholds at that
    false-positive identification rate) override the pack's open-set thresholds, which are set for
    this gallery's size."""
    gallery = searchable_gallery(app, gallery_path, k)
    thresholds = app.search_thresholds(threshold, fpir, gallery_size=len(gallery))

    def answer(faces):
        return search_faces(app, gallery, faces, k=k, thresholds=thresholds)

    return run_photos(app, inputs, answer, aligned=aligned, json_path=json_path, draw_dir=draw_dir,
                      progress=progress, on_image=on_image)


def enrol_pictures(app, gallery_path, identity: str, images, *, aligned: bool = False,
                   wait: float = 0.0) -> dict:
    """Enrol the main face of each of ``images`` (``(name, encoded bytes)`` pairs) as ``identity``.

    All or nothing: every image is decoded and analysed first (a corrupt image or one without a
    face raises, naming it, and nothing is enrolled); then, under the gallery's run lock (waiting
    up to ``wait`` seconds for another writer), the gallery is read, the new entries added (an image
    already in it, by sha256, is skipped) and saved atomically. What ``bfm serve`` runs per request.
    """
    if not isinstance(identity, str) or not identity.strip():
        raise BFMError(f"enrol: identity must be a non-empty name, got {identity!r}")
    if not images:
        raise BFMError(f"enrol {identity!r}: no images given")
    analysed = []  # (face, sha256)
    for name, data in images:
        img = decode_image(data, name)
        faces = app.get_aligned(check_aligned(img, name), embed="both") if aligned else \
            app.get(img, max_num=1, embed="both")
        if not faces:
            raise NoFaceError(f"{name}: no face found")
        analysed.append((faces[0], hashlib.sha256(data).hexdigest()))
    gallery_path = Path(gallery_path)
    enrolled = skipped = 0
    with output_lock(gallery_path, "bfm serve (enrol)", folder=False, wait=wait):
        gallery = open_gallery(gallery_path, app, create=True)
        for face, sha in analysed:
            if gallery.has_source(sha):
                skipped += 1
                continue
            gallery.enrol(face, identity, source=sha)
            enrolled += 1
        if enrolled or not gallery_path.exists():
            gallery.save(gallery_path)
    return {"identity": identity, "enrolled": enrolled, "skipped": skipped, "entries": len(gallery),
            "identities": len(set(gallery.identities))}


def list_gallery(gallery_path) -> dict:
    """Entries per identity, masked entries, embedding size and the enrolling pack."""
    gallery = open_gallery(gallery_path)
    masked = gallery.masked
    counts: dict[str, int] = {}
    for name in gallery.identities:
        counts[name] = counts.get(name, 0) + 1
    return {
        "gallery": str(gallery_path),
        "entries": len(gallery),
        "masked_entries": int(np.sum(masked)),
        "embedding_size": gallery.embedding_size,
        "pack": gallery.info.get("pack", {}).get("name"),
        "identities": dict(sorted(counts.items())),
    }


def remove_identities(gallery_path, names, *, wait: float = 0.0) -> dict:
    """Remove every entry of each of ``names``; an identity not in the gallery is an error."""
    gallery_path = Path(gallery_path)
    with output_lock(gallery_path, "bfm gallery remove", folder=False, wait=wait):
        gallery = open_gallery(gallery_path)
        present = set(gallery.identities)
        missing = [n for n in names if n not in present]
        if missing:
            raise NotFoundError(f"{gallery_path}: no identity {', '.join(map(repr, missing))} in the gallery")
        removed = {n: gallery.remove(n) for n in names}
        gallery.save(gallery_path)
    return removed
