"""insightface .bin sets: the expected structure loads; anything else, above all code, is refused."""

import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from insightface_bfm.data.binsets import load_bin, save_bin
from insightface_bfm.errors import DatasetError, UnsafePickleError


def _jpegs(n):
    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))[1].tobytes()
            for _ in range(n)]


def test_roundtrip_and_decode(tmp_path):
    images = _jpegs(4)
    save_bin(tmp_path / "set.bin", images, [True, False])
    bins = load_bin(tmp_path / "set.bin")
    assert len(bins) == 2 and bins.issame.tolist() == [True, False]
    assert bins.images == images
    assert bins.decode(3).shape == (112, 112, 3)


def test_python3_protocol2_pickle_loads(tmp_path):
    # protocol 2 writes each bytes object as a call to _codecs.encode(str, "latin1")
    images = _jpegs(2)
    data = pickle.dumps((images, [True]), protocol=2)
    assert b"_codecs" in data
    (tmp_path / "p2.bin").write_bytes(data)
    assert load_bin(tmp_path / "p2.bin").images == images


def _short_binstring(b):
    return b"U" + bytes([len(b)]) + b


def test_python2_style_pickle_loads(tmp_path):
    # how insightface's published sets were written: Python 2 str -> SHORT_BINSTRING opcodes
    data = (b"\x80\x02" + b"](" + _short_binstring(b"img0") + _short_binstring(b"img1")
            + _short_binstring(b"img2") + _short_binstring(b"img3") + b"e"
            + b"](\x88\x89e" + b"\x86.")
    (tmp_path / "py2.bin").write_bytes(data)
    bins = load_bin(tmp_path / "py2.bin")
    assert bins.images == [b"img0", b"img1", b"img2", b"img3"] and bins.issame.tolist() == [True, False]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "inside_images"])
def test_code_executing_pickle_is_refused_without_running(tmp_path, where):
    marker = tmp_path / "pwned"
    exploit = _Exploit(marker)
    obj = exploit if where == "top" else ([b"a", exploit], [True])
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    # control: the same kind of file does run code under plain pickle (a harmless touch in tmp)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control), protocol=4))
    assert control.exists()
    with pytest.raises(UnsafePickleError, match=r"system"):
        load_bin(path)
    assert not marker.exists()


def test_only_latin1_codec_is_allowed(tmp_path):
    text = b"rot13"
    data = (b"\x80\x02c_codecs\nencode\n" + b"X" + struct.pack("<I", 3) + b"abc"
            + b"X" + struct.pack("<I", len(text)) + text + b"\x86R.")
    (tmp_path / "codec.bin").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="latin1"):
        load_bin(tmp_path / "codec.bin")


@pytest.mark.parametrize(
    "obj,match",
    [
        ({"bins": [], "issame": []}, "expected a pair"),
        (([b"a", b"b"], [1]), "expected a boolean"),
        (([b"a", "b"], [True]), "expected encoded bytes"),
        (((b"a", b"b"), [True]), r"expected \(list, list\)"),
        (([b"a", b"b"], np.array([True])), "numpy"),
    ],
)
def test_unexpected_structures_are_refused(tmp_path, obj, match):
    path = tmp_path / "odd.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(UnsafePickleError, match=match):
        load_bin(path)


def test_inconsistent_or_broken_files(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True]), protocol=4))
    with pytest.raises(DatasetError, match="3 images for 1 pairs"):
        load_bin(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="not a readable .bin"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-5])
    with pytest.raises(DatasetError):
        load_bin(path)
    with pytest.raises(DatasetError, match="cannot read"):
        load_bin(tmp_path / "absent.bin")
