"""Pure-Python RecordIO: framing, headers, insightface layout, and byte equality with mxnet's files."""

import hashlib
import json
import logging
import struct

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from insightface_bfm.data import open_dataset
from insightface_bfm.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIODataset,
    RecordIOReader,
    RecordIOWriter,
    frame_record,
    pack_folder,
    pack_header,
    pack_img,
    unpack_header,
    unpack_img,
)
from insightface_bfm.errors import DatasetError

MAGIC_BYTES = struct.pack("<I", MAGIC)


def test_framing_by_hand():
    # 5 bytes: magic, lrecord (cflag 0, length 5), data, 3 zero bytes of padding
    assert frame_record(b"abcde") == MAGIC_BYTES + struct.pack("<I", 5) + b"abcde\0\0\0"
    # the magic at aligned offset 4 splits the record: part 1 "abcd", part 3 "xy" (magic dropped)
    framed = frame_record(b"abcd" + MAGIC_BYTES + b"xy")
    assert framed == (MAGIC_BYTES + struct.pack("<I", (1 << 29) | 4) + b"abcd"
                      + MAGIC_BYTES + struct.pack("<I", (3 << 29) | 2) + b"xy\0\0")
    # at an unaligned offset it is plain data
    plain = MAGIC_BYTES + struct.pack("<I", 6) + b"ab" + MAGIC_BYTES + b"\0\0"
    assert frame_record(b"ab" + MAGIC_BYTES) == plain


def test_header_pack_unpack():
    rec = pack_header(IRHeader(0, 3.0, 7, 0), b"img")
    assert rec == struct.pack("<IfQQ", 0, 3.0, 7, 0) + b"img"
    h, payload = unpack_header(rec)
    assert (h.flag, h.label, h.id, h.id2, payload) == (0, 3.0, 7, 0, b"img")
    rec = pack_header(IRHeader(0, [5.0, 7.0], 1, 2), b"xyz")
    assert rec[:24] == struct.pack("<IfQQ", 2, 0.0, 1, 2)
    h, payload = unpack_header(rec)
    assert h.flag == 2 and h.label.tolist() == [5.0, 7.0] and payload == b"xyz"
    img = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    h, back = unpack_img(pack_img(IRHeader(0, 1.0, 0, 0), img, img_fmt=".png"))
    assert h.label == 1.0 and np.array_equal(back, img)


def test_round_trip_multipart_and_insightface_header(tmp_path):
    rng = np.random.default_rng(0)
    payloads = {
        1: pack_header(IRHeader(0, 0.0, 1, 0), rng.bytes(101)),
        # magic words at several aligned offsets, two in a row and one at the very end
        2: pack_header(IRHeader(0, [1.0, 7.0], 2, 0), b"abcd" + MAGIC_BYTES * 2 + b"q" * 8 + MAGIC_BYTES),
        3: pack_header(IRHeader(0, 1.0, 3, 0), MAGIC_BYTES * 3 + b"tail"),
        4: pack_header(IRHeader(0, 2.0, 4, 0), b""),
    }
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write_idx(0, pack_header(IRHeader(0, [5.0, 8.0], 0, 0)))
        for k, p in payloads.items():
            w.write_idx(k, p)
        for k, (a, b) in enumerate([(1, 2), (2, 4), (4, 5)]):
            w.write_idx(5 + k, pack_header(IRHeader(0, [float(a), float(b)], 0, 0)))
        assert not rec.exists()  # atomic: nothing under the real name before close
    from insightface_bfm.atomic import current_umask

    for written in (rec, idx):  # the mode a plain open() gives, not mkstemp's private 0600
        assert written.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    raw = rec.read_bytes()
    assert raw.count(MAGIC_BYTES) > 8 + 4  # the split records are really multi-part on disk
    r = RecordIOReader(rec, idx)
    assert r.keys == list(range(8))
    for k, p in payloads.items():
        assert r.read_idx(k) == p
    assert len(list(r)) == 8
    ds = open_dataset(tmp_path)
    assert isinstance(ds, RecordIODataset)
    assert ds.labels.tolist() == [0, 1, 1, 2] and ds.num_classes == 3  # array label -> label[0]
    assert ds.identity_range == (5, 8)


def test_plain_dataset_without_header(tmp_path):
    # im2rec-style: no header record, every key is an image (here keys 5..7, label [class, extra])
    img = np.full((112, 112, 3), 7, np.uint8)
    with RecordIOWriter(tmp_path / "plain.rec") as w:
        for k, c in ((5, 2), (6, 0), (7, 1)):
            label = [float(c), 9.0] if k == 6 else float(c)
            w.write_idx(k, pack_img(IRHeader(0, label, k, 0), img, img_fmt=".png"))
    ds = open_dataset(tmp_path / "plain.rec")
    assert ds.labels.tolist() == [2, 0, 1] and ds.num_classes == 3 and ds.identity_range is None
    assert np.array_equal(ds[1][0], img) and ds[1][1] == 0


def test_writer_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), RecordIOWriter(tmp_path / "a.rec") as w:
        w.write_idx(0, b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_reads_mxnet_written_file(shared):
    d = shared("data", "mxnet_rec")
    expected = json.loads((d / "expected.json").read_text())
    r = RecordIOReader(d / "train.rec", d / "train.idx")
    for key, e in expected["records"].items():
        h, payload = unpack_header(r.read_idx(int(key)))
        label = h.label[0] if h.flag else h.label
        assert int(label) == e["label"] and len(payload) == e["bytes"]
        assert hashlib.sha256(payload).hexdigest() == e["sha256"], f"record {key}"
    ds = open_dataset(d)
    assert len(ds) == expected["images"] and ds.num_classes == expected["classes"]
    assert ds.labels.tolist() == [expected["records"][str(k)]["label"] for k in range(1, len(ds) + 1)]
    img, label = ds[2]  # record 3: the multi-part one
    assert img.shape == (112, 112, 3) and label == expected["records"]["3"]["label"]


def test_rewrite_reproduces_mxnet_bytes(shared, tmp_path):
    d = shared("data", "mxnet_rec")
    r = RecordIOReader(d / "train.rec", d / "train.idx")
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        for key in r.keys:
            w.write_idx(key, r.read_idx(key))
    assert (tmp_path / "train.rec").read_bytes() == (d / "train.rec").read_bytes()
    assert (tmp_path / "train.idx").read_bytes() == (d / "train.idx").read_bytes()


def test_truncated_rec_names_file_and_offset(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, pack_header(IRHeader(0, [3.0, 4.0], 0, 0)))
        w.write_idx(1, pack_header(IRHeader(0, 0.0, 1, 0), b"a" * 300))
        offset = w.write_idx(2, pack_header(IRHeader(0, 0.0, 2, 0), b"b" * 300))
        w.write_idx(3, pack_header(IRHeader(0, [1.0, 3.0], 0, 0)))
    data = (tmp_path / "train.rec").read_bytes()
    (tmp_path / "train.rec").write_bytes(data[: offset + 100])
    with pytest.raises(DatasetError, match=rf"train\.rec: truncated record at offset {offset}"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match=rf"train\.rec: truncated record at offset {offset}"):
        RecordIOReader(tmp_path / "train.rec").read_idx(2)
    (tmp_path / "train.rec").write_bytes(data[:offset - 8])
    with pytest.raises(DatasetError, match=r"train\.rec: (truncated record|no record) at offset"):
        RecordIOReader(tmp_path / "train.rec").read_idx(2)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(DatasetError, match=r"train\.idx: missing index file"):
        open_dataset(tmp_path / "train.rec")


def _folder(root, corrupt=False):
    for c, name in enumerate(["ann", "ben", "cat"]):
        (root / name).mkdir(parents=True)
        for k in range(c + 2):
            img = np.full((112, 112, 3), 40 * c + 10 * k, np.uint8)
            cv2.imwrite(str(root / name / f"{k}.png"), img)
    if corrupt:
        (root / "ben" / "9.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_pack_folder_insightface_layout(tmp_path, caplog):
    src = _folder(tmp_path / "src", corrupt=True)
    with caplog.at_level(logging.WARNING, logger="insightface_bfm.data"):
        summary = pack_folder(src, tmp_path / "out", progress=False)
    assert summary == {"images": 9, "classes": 3, "skipped": 1, "out": str(tmp_path / "out")}
    assert "9.jpg" in caplog.text
    assert (tmp_path / "out" / "property").read_text() == "3,112,112"
    r = RecordIOReader(tmp_path / "out" / "train.rec")
    h0, _ = unpack_header(r.read_idx(0))
    assert h0.flag == 2 and h0.label.tolist() == [10.0, 13.0]
    spans = [unpack_header(r.read_idx(k))[0].label.tolist() for k in (10, 11, 12)]
    assert spans == [[1.0, 3.0], [3.0, 6.0], [6.0, 10.0]]
    ds = open_dataset(tmp_path / "out")
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    img, label = ds[3]
    assert label == 1 and np.array_equal(img, np.full((112, 112, 3), 50, np.uint8))
    # the header identity records agree with the image labels
    for c, (a, b) in enumerate(spans):
        assert set(ds.labels[int(a) - 1:int(b) - 1].tolist()) == {c}


def test_bfm_data_pack_cli(tmp_path):
    from insightface_bfm.cli import main

    src = _folder(tmp_path / "src")
    result = CliRunner().invoke(main, ["data", "pack", str(src), str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    assert "wrote 9 images of 3 identities" in result.output
    result = CliRunner().invoke(main, ["data", "info", str(tmp_path / "out")])
    assert result.exit_code == 0 and "3 identities, 9 images" in result.output
    (src / "dan").mkdir()
    result = CliRunner().invoke(main, ["data", "pack", str(src), str(tmp_path / "out2")])
    assert result.exit_code == 2 and "dan: empty identity folder" in result.output
    assert not (tmp_path / "out2" / "train.rec").exists()
