"""The one dataset form of the project, and ``open_dataset``, the one door into it.

Every format (image folder, insightface RecordIO, generated identities) is a ``FaceDataset``:
a sequence whose items are ``(bgr uint8 112x112x3, int label)``. A sample that cannot be read
or decoded is not an exception deep inside a DataLoader worker: ``ds[i]`` logs a warning that
names the file or record, counts it in ``ds.skipped`` (per process) and returns ``None``, so
the collate step can drop it.

Size policy: the crops are expected to be aligned to insightface's 112x112 ArcFace template.
A square crop of another size (e.g. 224x224 from a higher-resolution alignment) is the same
alignment scaled, so it is resized to 112x112; a non-square image is not an aligned crop and
is reported and skipped like a corrupt one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import DatasetError, ImageError

log = logging.getLogger("insightface_bfm.data")

IMAGE_SIZE = 112


def fit_aligned_crop(img: np.ndarray, source: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Return ``img`` as a ``size`` x ``size`` crop, resizing square crops; raise ``ImageError`` else."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if h != w:
        raise ImageError(f"{source}: {w}x{h} is not an aligned square face crop (expected {size}x{size})")
    interp = cv2.INTER_AREA if h > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


class FaceDataset(Sequence):
    """Base class: a sequence of ``(bgr uint8 112x112x3, int label)``, ``None`` for bad samples.

    Subclasses set ``labels`` (np.int64, one per sample, known without decoding an image) and
    ``num_classes`` in ``__init__`` (the length follows from the labels), and implement
    ``_load(i)`` (return a BGR image or raise ``ImageError``/``OSError``) and ``_sample_name(i)``.
    """

    kind = "dataset"

    def __init__(self, source: str):
        self.source = str(source)
        self._skipped = 0
        self._pid = os.getpid()

    # -- per-process bad-sample counter: a forked DataLoader worker starts again at 0
    @property
    def skipped(self) -> int:
        if self._pid != os.getpid():
            self._pid, self._skipped = os.getpid(), 0
        return self._skipped

    def _count_skip(self) -> None:
        self._skipped = self.skipped + 1

    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    # -- to implement
    def _load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _sample_name(self, index: int) -> str:
        return f"{self.source}[{index}]"

    # -- shared behaviour
    def _check_index(self, index) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return i

    def load(self, index) -> tuple[np.ndarray, int]:
        """Like ``ds[i]`` but raises ``ImageError`` for a bad sample instead of returning None."""
        i = self._check_index(index)
        name = self._sample_name(i)
        try:
            img = self._load(i)
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ImageError(f"{name}: expected a uint8 HxWx3 BGR image, got {img.dtype} {img.shape}")
        return fit_aligned_crop(img, name), int(self.labels[i])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        try:
            return self.load(index)
        except ImageError as e:
            self._count_skip()
            log.warning("skipping bad sample: %s", e)
            return None

    def describe(self) -> str:
        return f"{self.kind} {self.source}: {self.num_classes} identities, {len(self)} images"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


SYNTHETIC_PREFIX = "synthetic:"


def _open_synthetic(spec: str) -> FaceDataset:
    from .synthetic import SyntheticFaces

    parts = spec[len(SYNTHETIC_PREFIX) :].split(":")
    usage = "expected synthetic:N_IDS:IMGS_PER_ID[:SEED] with positive integers, e.g. synthetic:200:20"
    if len(parts) not in (2, 3):
        raise DatasetError(f"{spec}: {usage}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise DatasetError(f"{spec}: {usage}") from None
    if values[0] < 1 or values[1] < 1 or (len(values) == 3 and values[2] < 0):
        raise DatasetError(f"{spec}: {usage}")
    return SyntheticFaces(*values)


def open_dataset(path) -> FaceDataset:
    """Open an image folder, an insightface RecordIO (dir or ``.rec``) or ``synthetic:N:M[:SEED]``."""
    if isinstance(path, str) and path.startswith(SYNTHETIC_PREFIX):
        return _open_synthetic(path)
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: no such dataset (expected an image folder, a RecordIO directory or .rec)")
    if p.is_file():
        if p.suffix == ".rec":
            from .recordio import RecordIODataset

            return RecordIODataset(p)
        raise DatasetError(
            f"{p}: not a dataset: expected a folder of identity folders, a RecordIO "
            "directory (train.rec, train.idx, property) or a .rec file"
        )
    if (p / "train.rec").is_file():
        from .recordio import RecordIODataset

        return RecordIODataset(p / "train.rec")
    from .folders import ImageFolderDataset

    return ImageFolderDataset(p)
