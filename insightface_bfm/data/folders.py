"""Image-folder datasets: ``ROOT/<identity>/<image>``, one sub-folder per identity.

Labels are the positions of the identity folders in sorted name order (as torchvision's
ImageFolder and insightface's face2rec number them), so the same folder always gives the
same labels. Hidden files and folders (``.name``) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..imaging import IMAGE_EXTENSIONS, read_image
from .dataset import FaceDataset


def scan_image_folder(root) -> tuple[list[str], list[str], np.ndarray]:
    """Return ``(class_names, image_paths, labels)`` of an identity-folder tree.

    Raises ``DatasetError`` when ``root`` is missing, holds no identity folder, or an
    identity folder holds no image (naming that folder).
    """
    root = Path(os.fspath(root))
    if not root.exists():
        raise DatasetError(f"{root}: no such image folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected one sub-folder per identity)")
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"{root}: cannot list ({e.strerror or e})") from None
    if not classes:
        raise DatasetError(f"{root}: no identity folders (expected ROOT/<identity>/<image>.jpg)")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        try:
            files = sorted(
                e.name
                for e in os.scandir(folder)
                if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
            )
        except OSError as e:
            raise DatasetError(f"{folder}: cannot list ({e.strerror or e})") from None
        if not files:
            raise DatasetError(
                f"{folder}: empty identity folder (no {'/'.join(x[1:] for x in IMAGE_EXTENSIONS)} images)"
            )
        paths.extend(str(folder / f) for f in files)
        labels.extend([label] * len(files))
    return classes, paths, np.asarray(labels, dtype=np.int64)


class ImageFolderDataset(FaceDataset):
    """Aligned 112x112 crops in ``ROOT/<identity>/*.{jpg,jpeg,png,bmp,webp}``."""

    kind = "image folder"

    def __init__(self, root):
        super().__init__(os.fspath(root))
        self.classes, self.paths, self.labels = scan_image_folder(root)
        self.num_classes = len(self.classes)

    def _sample_name(self, index: int) -> str:
        return self.paths[index]

    def _load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])
