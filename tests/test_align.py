"""Alignment: SCRFD + norm_crop on raw LFW photos reproduces the shared lfw112 crops; resumable."""

import os
import shutil

import cv2
import numpy as np
import pytest

from insightface_bfm.data.align import (
    LANDMARKS_FILE,
    MISSES_FILE,
    align_folder,
    choose_face,
    load_detector,
)
from insightface_bfm.errors import BFMError, PackError

SAMPLE = [
    "Abdullah_Gul/Abdullah_Gul_0013.jpg",
    "Al_Pacino/Al_Pacino_0001.jpg",
    "Alan_Greenspan/Alan_Greenspan_0005.jpg",
    "Albert_Costa/Albert_Costa_0002.jpg",
]


def _landmarks(lfw):
    out = {}
    for line in (lfw / "landmarks.tsv").read_text().splitlines()[1:]:
        name, source, kps = line.split("\t")
        out[name] = (source, np.array(kps.split(), float).reshape(5, 2))
    return out


@pytest.fixture(scope="module")
def detector():
    from conftest import shared_path

    # the settings the shared crops were made with: input 320, threshold 0.3
    return load_detector(shared_path("models", "scrfd_2.5g_bnkps.onnx"), det_size=320, threshold=0.3)


@pytest.fixture
def raw_sample(shared, tmp_path):
    raw = shared("data", "lfw_raw")
    src = tmp_path / "raw"
    for rel in SAMPLE:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / rel, src / rel)
    return src


def test_choose_face_policies():
    # a large face off-centre, a small one in the centre of a 200x200 image
    boxes = np.array([[0, 0, 90, 90, 0.9], [90, 90, 110, 110, 0.99]], float)
    assert choose_face(boxes, (200, 200, 3), "largest") == 0
    assert choose_face(boxes, (200, 200, 3), "center") == 1
    with pytest.raises(BFMError, match="policy"):
        choose_face(boxes, (200, 200, 3), "best")


@pytest.mark.shared
def test_norm_crop_with_shared_landmarks_reproduces_lfw112(shared):
    # the data's own claim, which the next test relies on
    from insightface.utils.face_align import norm_crop

    lfw, raw = shared("data", "lfw112"), shared("data", "lfw_raw")
    marks = _landmarks(lfw)
    for rel in SAMPLE:
        crop = norm_crop(cv2.imread(str(raw / rel)), marks[rel][1]).astype(float)
        assert np.abs(crop - cv2.imread(str(lfw / rel))).mean() < 3  # JPEG q95 noise only


@pytest.mark.shared
def test_align_folder_matches_lfw112_and_resumes(shared, raw_sample, detector, tmp_path):
    lfw = shared("data", "lfw112")
    marks = _landmarks(lfw)
    # a photo without a face and a file that is not an image
    (raw_sample / "Nobody").mkdir()
    cv2.imwrite(str(raw_sample / "Nobody" / "blank.png"), np.full((250, 250, 3), 128, np.uint8))
    (raw_sample / "Nobody" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dst = tmp_path / "aligned"

    summary = align_folder(raw_sample, dst, detector, policy="center", progress=False)
    assert (summary.aligned, summary.skipped, len(summary.misses)) == (4, 0, 2)
    misses = (dst / MISSES_FILE).read_text().splitlines()
    assert [m.split("\t")[0] for m in misses] == ["Nobody/blank.png", "Nobody/broken.jpg"]
    assert "no face" in misses[0] and "unreadable" in misses[1]

    written = {}
    for line in (dst / LANDMARKS_FILE).read_text().splitlines()[1:]:
        name, kps = line.split("\t")
        written[name] = np.array(kps.split(), float).reshape(5, 2)
    for rel in SAMPLE:
        crop = cv2.imread(str(dst / rel))
        assert crop.shape == (112, 112, 3)
        assert np.abs(crop.astype(float) - cv2.imread(str(lfw / rel))).mean() < 3
        assert np.abs(written[rel] - marks[rel][1]).max() < 0.05  # same detector, same keypoints

    # resume: an interrupted run lost one crop; only it is redone, misses are retried
    os.remove(dst / SAMPLE[2])
    summary = align_folder(raw_sample, dst, detector, policy="center", progress=False)
    assert (summary.aligned, summary.skipped, len(summary.misses)) == (1, 3, 2)
    assert len((dst / LANDMARKS_FILE).read_text().splitlines()) == 1 + 4 + 1
    assert not list(dst.rglob("*.tmp"))


@pytest.mark.shared
def test_detector_sources_and_errors(shared, tmp_path, raw_sample):
    scrfd = shared("models", "scrfd_2.5g_bnkps.onnx")
    with pytest.raises(BFMError, match="exactly one"):
        load_detector()
    with pytest.raises(BFMError, match="exactly one"):
        load_detector(scrfd, det_pack="buffalo_l")
    with pytest.raises(PackError, match="not installed"):
        load_detector(det_pack="nope", root=tmp_path)
    with pytest.raises(PackError, match="not load it as a face detector"):
        load_detector(shared("models", "mobilefacenet_128.onnx"))
    pack = tmp_path / "models" / "mypack"
    pack.mkdir(parents=True)
    os.symlink(scrfd, pack / "det_2.5g.onnx")
    det = load_detector(det_pack="mypack", root=tmp_path, det_size=320)
    assert det.taskname == "detection"
    with pytest.raises(BFMError, match="inside the source"):
        align_folder(raw_sample, raw_sample / "out", det, progress=False)
    one = next(p for p in sorted(raw_sample.rglob("*")) if p.is_file())
    with pytest.raises(BFMError, match="overwrite the source image"):  # a named photo into its folder
        align_folder(one, one.parent, det, progress=False)
    with pytest.raises(BFMError, match="no images"):
        align_folder(tmp_path / "models", tmp_path / "o", det, progress=False)
