"""Image-folder datasets: labels from sorted folder names, bad images reported and skipped."""

import logging

import cv2
import numpy as np
import pytest

from insightface_bfm.data import open_dataset
from insightface_bfm.data.folders import ImageFolderDataset
from insightface_bfm.errors import DatasetError


def _face(value):
    img = np.full((112, 112, 3), value, np.uint8)
    img[40:60, 30:80] = 255 - value
    return img


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "faces"
    for name, n in (("bob", 2), ("alice", 3), ("carol", 1)):
        (root / name).mkdir(parents=True)
        for k in range(n):
            cv2.imwrite(str(root / name / f"{k}.png"), _face(10 * k + len(name)))
    (root / "alice" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


def test_labels_from_sorted_folders(folder):
    ds = open_dataset(folder)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ["alice", "bob", "carol"] and ds.num_classes == 3
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 2]
    img, label = ds[3]
    assert label == 1 and img.shape == (112, 112, 3) and img.dtype == np.uint8
    assert np.array_equal(img, _face(0 + 3))
    assert "3 identities, 6 images" in ds.describe()


def test_corrupt_image_reported_skipped_counted(folder, caplog):
    bad = folder / "bob" / "1.png"
    bad.write_bytes(b"\x89PNG garbage")
    cv2.imwrite(str(folder / "carol" / "1.png"), np.zeros((112, 90, 3), np.uint8))  # not a square crop
    cv2.imwrite(str(folder / "carol" / "2.png"), np.zeros((224, 224, 3), np.uint8))  # square: resized
    ds = open_dataset(folder)
    assert len(ds) == 8
    with caplog.at_level(logging.WARNING, logger="insightface_bfm.data"):
        items = [ds[i] for i in range(len(ds))]
    assert items[4] is None and items[6] is None
    assert ds.skipped == 2
    assert str(bad) in caplog.text and "carol" in caplog.text
    assert items[7][0].shape == (112, 112, 3) and items[7][1] == 2
    with pytest.raises(Exception, match="1.png"):
        ds.load(4)


def test_empty_identity_folder_is_an_error(folder):
    (folder / "dave").mkdir()
    (folder / "dave" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"dave.*empty identity folder"):
        open_dataset(folder)


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no identity folders"):
        open_dataset(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a dataset"):
        open_dataset(tmp_path / "x.txt")
