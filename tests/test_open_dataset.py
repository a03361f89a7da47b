"""open_dataset: one door for every format; bad samples are None, warned about and counted."""

import multiprocessing as mp

import cv2
import numpy as np
import pytest

from insightface_bfm.data import FaceDataset, open_dataset
from insightface_bfm.data.folders import ImageFolderDataset
from insightface_bfm.data.recordio import RecordIODataset, pack_folder
from insightface_bfm.data.synthetic import SyntheticFaces
from insightface_bfm.errors import DatasetError


@pytest.fixture
def folder(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for k in range(2):
            cv2.imwrite(str(tmp_path / "f" / name / f"{k}.jpg"), np.full((112, 112, 3), 99, np.uint8))
    return tmp_path / "f"


def test_dispatch_by_format(folder, tmp_path):
    assert isinstance(open_dataset(folder), ImageFolderDataset)
    assert isinstance(open_dataset(str(folder)), ImageFolderDataset)
    pack_folder(folder, tmp_path / "rec", progress=False)
    for path in (tmp_path / "rec", tmp_path / "rec" / "train.rec", str(tmp_path / "rec")):
        ds = open_dataset(path)
        assert isinstance(ds, RecordIODataset) and len(ds) == 4 and ds.num_classes == 2
    ds = open_dataset("synthetic:2:3")
    assert isinstance(ds, SyntheticFaces) and isinstance(ds, FaceDataset)
    for ds in (open_dataset(folder), open_dataset(tmp_path / "rec"), open_dataset("synthetic:2:2")):
        img, label = ds[len(ds) - 1]
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and isinstance(label, int) and label == 1
        assert ds.labels.dtype == np.int64 and len(ds.labels) == len(ds)
        assert str(len(ds)) in ds.describe()


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=r"missing.*no such dataset"):
        open_dataset(tmp_path / "missing")


def _child_skipped(ds, q):
    q.put(ds.skipped)


def test_skipped_counter_is_per_process(folder):
    (folder / "b" / "1.jpg").write_bytes(b"broken")
    ds = open_dataset(folder)
    assert ds[3] is None and ds.skipped == 1
    assert ds[0] is not None and ds.skipped == 1
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method here")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_skipped, args=(ds, q))
    p.start()
    p.join(20)
    assert q.get(timeout=5) == 0  # a forked worker counts its own skips
    assert ds.skipped == 1


def test_data_package_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, insightface_bfm.data, insightface_bfm.data.cli; "
        "insightface_bfm.data.open_dataset('synthetic:2:2')[0]; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bfm_data_info_synthetic():
    from click.testing import CliRunner

    from insightface_bfm.cli import main

    result = CliRunner().invoke(main, ["data", "info", "synthetic:3:4:1"])
    assert result.exit_code == 0, result.output
    assert "3 identities x 4 images = 12 images" in result.output
    assert "min 4, median 4, max 4" in result.output
    result = CliRunner().invoke(main, ["data", "info", "synthetic:x"])
    assert result.exit_code == 2 and "synthetic:N_IDS:IMGS_PER_ID" in result.output


def test_datasets_pickle_for_spawned_workers(folder, tmp_path):
    import pickle

    pack_folder(folder, tmp_path / "rec", progress=False)
    for ds in (open_dataset(folder), open_dataset(tmp_path / "rec"), open_dataset("synthetic:2:2:4")):
        first = ds[0]  # opens files / fills caches before pickling
        copy = pickle.loads(pickle.dumps(ds))
        again = copy[0]
        assert np.array_equal(again[0], first[0]) and again[1] == first[1]
        assert copy.labels.tolist() == ds.labels.tolist()
