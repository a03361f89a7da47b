"""Generated identities: deterministic, aligned, and carrying identity in both face halves."""

import numpy as np
import pytest

from insightface_bfm.data import open_dataset
from insightface_bfm.data.synthetic import SyntheticFaces
from insightface_bfm.errors import DatasetError
from insightface_bfm.imaging import ARCFACE_KPS


def test_shape_labels_and_determinism():
    ds = SyntheticFaces(4, 3, seed=7)
    assert len(ds) == 12 and ds.num_classes == 4
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    img, label = ds[5]
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and label == 1
    # the same (seed, index) draws the same image, in any order and any instance
    again = SyntheticFaces(4, 3, seed=7)
    assert np.array_equal(again[5][0], img)
    assert np.array_equal(again[-7][0], img)
    assert not np.array_equal(SyntheticFaces(4, 3, seed=8)[5][0], img)
    assert not np.array_equal(ds[4][0], img)
    with pytest.raises(IndexError):
        ds[12]


def test_keypoints_follow_the_arcface_template():
    ds = SyntheticFaces(20, 2, seed=1)
    kps = np.stack([ds.keypoints(i) for i in range(len(ds))])
    assert kps.shape == (40, 5, 2) and kps.dtype == np.float32
    err = np.linalg.norm(kps - ARCFACE_KPS, axis=2)
    assert err.mean() < 6.0 and err.max() < 16.0
    # pose varies per image: not all images put the points at the same place
    assert np.std(kps[:, 0, 0]) > 0.5


def test_identity_lives_in_upper_and_lower_face():
    # nearest neighbour on small pixels: same identity is found far above chance, from either half
    import cv2

    ds = SyntheticFaces(20, 6, seed=3)
    imgs = np.stack([cv2.resize(ds[i][0], (28, 28), interpolation=cv2.INTER_AREA) for i in range(len(ds))])
    y = ds.labels

    def nn_accuracy(feats):
        f = feats.reshape(len(feats), -1).astype(np.float32)
        f -= f.mean(1, keepdims=True)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        np.fill_diagonal(s, -np.inf)
        same = (y[:, None] == y[None]) & ~np.eye(len(y), dtype=bool)
        return (y[s.argmax(1)] == y).mean(), s[same].mean(), s[~same & np.isfinite(s)].mean()

    for part in (imgs, imgs[:, :15], imgs[:, 15:]):  # whole, above the nose bridge, nose and below
        acc, same, diff = nn_accuracy(part)
        assert same > diff
        assert acc > 0.25  # chance is 0.05


def test_open_dataset_synthetic_spec():
    ds = open_dataset("synthetic:3:2:5")
    assert isinstance(ds, SyntheticFaces) and len(ds) == 6 and ds.seed == 5
    assert "3 identities" in ds.describe()
    assert open_dataset("synthetic:3:2").seed == 0
    for bad in ("synthetic:3", "synthetic:a:2", "synthetic:0:2", "synthetic:3:2:1:1"):
        with pytest.raises(DatasetError, match="synthetic:N_IDS:IMGS_PER_ID"):
            open_dataset(bad)
