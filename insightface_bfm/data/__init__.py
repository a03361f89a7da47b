"""Datasets of aligned 112x112 face crops: image folders, insightface RecordIO, generated faces.

``open_dataset(path)`` is the one entry point; every format yields ``(bgr uint8 112x112x3,
int label)`` or ``None`` for a sample that cannot be read. This package never imports torch.
"""

from .dataset import FaceDataset, open_dataset

__all__ = ["FaceDataset", "open_dataset"]
