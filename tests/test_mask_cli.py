"""``bfm mask``: folders and RecordIO, resume, manifest, raw photos with a detector."""

import json

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import make_face_folder
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.masks import MaskStyle, render_mask
from insightface_bfm.masks.masked_sets import MANIFEST, mask_dataset, read_manifest


def _make_folder(root, n=4):
    return make_face_folder(root, n)


def test_folder_manifest_resume_and_reproduce(tmp_path):
    src = _make_folder(tmp_path / "src")
    dst = tmp_path / "dst"
    args = ["mask", str(src), str(dst), "--seed", "3", "--types", "n95,cloth", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "4 masked" in res.output
    outs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png"))
    assert outs == ["id0/img0.png", "id0/img2.png", "id1/img1.png", "id1/img3.png"]
    header, entries = read_manifest(dst / MANIFEST)
    assert header["seed"] == 3 and header["types"] == ["n95", "cloth"] and len(entries) == 4
    # every output is reproducible from its manifest entry
    for e in entries:
        face = e["faces"][0]
        style = MaskStyle.from_dict(face["style"])
        assert style.type in ("n95", "cloth")
        expected, _ = render_mask(cv2.imread(str(src / e["image"])), np.array(face["kps"]), style)
        assert np.array_equal(expected, cv2.imread(str(dst / e["output"])))
    first = (dst / "id0/img0.png").read_bytes()

    # resume: remove one output; only it is redone, identically
    (dst / "id0/img0.png").unlink()
    mtime = (dst / "id1/img1.png").stat().st_mtime_ns
    summary = mask_dataset(src, dst, seed=3, types=["n95", "cloth"], progress=False)
    assert (summary.masked, summary.skipped) == (1, 3)
    assert (dst / "id0/img0.png").read_bytes() == first
    assert (dst / "id1/img1.png").stat().st_mtime_ns == mtime
    assert len(read_manifest(dst / MANIFEST)[1]) == 4

    # other settings into the same DST: refused rather than mixed
    res = CliRunner().invoke(main, ["mask", str(src), str(dst), "--seed", "4", "--quiet"])
    assert res.exit_code == 2 and "seed 3" in res.output


def test_occluders_by_family_name(tmp_path):
    """README "Synthetic masks": ``bfm mask SRC DST --types occluder`` draws hands, scarves and objects."""
    src = _make_folder(tmp_path / "src", 6)
    dst = tmp_path / "dst"
    res = CliRunner().invoke(main, ["mask", str(src), str(dst), "--types", "occluder", "--quiet"])
    assert res.exit_code == 0, res.output
    header, entries = read_manifest(dst / MANIFEST)
    assert header["types"] == ["hand", "scarf", "object"] and len(entries) == 6
    for e in entries:
        face = e["faces"][0]
        style = MaskStyle.from_dict(face["style"])
        assert style.type in ("hand", "scarf", "object")
        expected, _ = render_mask(cv2.imread(str(src / e["image"])), np.array(face["kps"]), style)
        assert np.array_equal(expected, cv2.imread(str(dst / e["output"])))


def test_bad_arguments(tmp_path):
    src = _make_folder(tmp_path / "src", 1)
    runner = CliRunner()
    res = runner.invoke(main, ["mask", str(src), str(tmp_path / "o"), "--types", "visor"])
    assert res.exit_code == 2 and "visor" in res.output
    res = runner.invoke(main, ["mask", str(src), str(tmp_path / "o"), "--worn-low", "2"])
    assert res.exit_code == 2 and "--worn-low" in res.output
    res = runner.invoke(main, ["mask", str(src), str(tmp_path / "o"), "--raw"])
    assert res.exit_code == 2 and "--detector" in res.output
    res = runner.invoke(main, ["mask", str(src), str(src / "inside")])
    assert res.exit_code == 2 and "inside" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["mask", str(empty), str(tmp_path / "o2")])
    assert res.exit_code == 2 and "no images" in res.output


def test_recordio_in_and_out(tmp_path):
    from insightface_bfm.data.recordio import RecordIOReader, RecordIOWriter, pack_header, unpack_header

    src = tmp_path / "rec"
    rng = np.random.default_rng(1)
    with RecordIOWriter(src / "train.rec", src / "train.idx") as w:
        w.write_idx(0, pack_header((2, np.array([4.0, 6.0], np.float32), 0, 0)))
        for k in (1, 2, 3):
            img = np.clip(rng.normal(140, 20, (112, 112, 3)), 0, 255).astype(np.uint8)
            w.write_idx(k, pack_header((0, float(k % 2), k, 0), cv2.imencode(".jpg", img)[1].tobytes()))
        w.write_idx(4, pack_header((2, np.array([1.0, 3.0], np.float32), 0, 0)))
        w.write_idx(5, pack_header((2, np.array([3.0, 4.0], np.float32), 0, 0)))
    (src / "property").write_text("2,112,112")
    dst = tmp_path / "out"
    summary = mask_dataset(src, dst, seed=0, progress=False)
    assert summary.masked == 3
    r_in, r_out = RecordIOReader(src / "train.rec"), RecordIOReader(dst / "train.rec")
    assert r_in.keys == r_out.keys
    for k in r_in.keys:
        h_in, b_in = unpack_header(r_in.read_idx(k))
        h_out, b_out = unpack_header(r_out.read_idx(k))
        assert np.array_equal(np.atleast_1d(h_in.label), np.atleast_1d(h_out.label))
        assert (b_in == b_out) == (k in (0, 4, 5))
    assert (dst / "property").read_text() == "2,112,112"
    assert len(read_manifest(dst / MANIFEST)[1]) == 3
    assert mask_dataset(src, dst, seed=0, progress=False).skipped == 3  # complete: skipped
    # and RecordIO -> folder, resumable per image
    folder = mask_dataset(src, tmp_path / "as_folder", fmt="folder", progress=False)
    assert folder.masked == 3 and len(list((tmp_path / "as_folder").rglob("*.jpg"))) == 3


@pytest.mark.shared
def test_raw_photos_with_detector(tmp_path, shared):
    raw = shared("data", "lfw_raw")
    det = shared("models", "scrfd_2.5g_bnkps.onnx")
    src = tmp_path / "raw"
    src.mkdir()
    for p in sorted(raw.rglob("*.jpg"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    dst = tmp_path / "masked"
    pack = tmp_path / "pack"  # a pack folder holding the detector works like the ONNX file
    pack.mkdir()
    (pack / "det_2.5g.onnx").symlink_to(det)
    res = CliRunner().invoke(main, ["mask", str(src), str(dst), "--raw", "--detector", str(pack),
                                    "--det-size", "320", "--quiet"])
    assert res.exit_code == 0, res.output
    entries = read_manifest(dst / MANIFEST)[1]
    assert len(entries) == 2 and all(len(e["faces"]) >= 1 for e in entries)
    for e in entries:
        img, out = cv2.imread(str(src / e["image"])), cv2.imread(str(dst / e["output"]))
        assert img.shape == out.shape
        nose = np.round(e["faces"][0]["kps"][2]).astype(int)
        assert np.abs(img[nose[1], nose[0]].astype(int) - out[nose[1], nose[0]]).sum() > 0
    assert json.loads((dst / MANIFEST).read_text().splitlines()[0])["points"] == "detector"


@pytest.mark.shared
def test_raw_photo_every_face_masked(tmp_path, shared):
    """insightface's t1.jpg holds 6 faces: each gets its own mask and manifest entry."""
    import os

    import insightface

    t1 = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    det = shared("models", "scrfd_2.5g_bnkps.onnx")
    src = tmp_path / "group"
    src.mkdir()
    (src / "t1.jpg").write_bytes(open(t1, "rb").read())
    summary = mask_dataset(src, tmp_path / "out", detector=_detector(det), progress=False)
    assert summary.faces == 6
    faces = read_manifest(tmp_path / "out" / MANIFEST)[1][0]["faces"]
    assert len(faces) == 6 and len({f["style"]["seed"] for f in faces}) == 6
    img, out = cv2.imread(t1), cv2.imread(str(tmp_path / "out" / "t1.jpg"))
    for f in faces:
        x, y = np.round(f["kps"][2]).astype(int)
        assert np.abs(img[y, x].astype(int) - out[y, x]).sum() > 0


def _detector(path):
    from insightface_bfm.masks.masked_sets import load_detector

    return load_detector(path, det_size=640)
