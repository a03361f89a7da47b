"""Datasets of aligned 112x112 face crops: image folders, insightface RecordIO, generated faces.

``open_dataset(path)`` is the one entry point; every format yields ``(bgr uint8 112x112x3,
int label)`` or ``None`` for a sample that cannot be read. This package never imports torch
(the trainer's collate step lives in ``insightface_bfm.train``).
"""

from .dataset import FaceDataset, open_dataset
from .folders import ImageFolderDataset
from .recordio import RecordIODataset, RecordIOReader, RecordIOWriter, pack_folder
from .synthetic import SyntheticFaces

__all__ = [
    "FaceDataset",
    "ImageFolderDataset",
    "RecordIODataset",
    "RecordIOReader",
    "RecordIOWriter",
    "SyntheticFaces",
    "open_dataset",
    "pack_folder",
]
