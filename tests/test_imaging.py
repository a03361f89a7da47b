import cv2
import numpy as np
import pytest

from insightface_bfm.atomic import atomic_open, atomic_write_bytes
from insightface_bfm.errors import ImageError
from insightface_bfm.imaging import (
    ARCFACE_KPS,
    check_image,
    decode_image,
    from_network_input,
    read_image,
    to_network_input,
)


def test_template_matches_insightface():
    from insightface.utils.face_align import arcface_dst

    np.testing.assert_array_equal(ARCFACE_KPS, arcface_dst)


@pytest.mark.parametrize(
    "img, words",
    [
        (None, "None"),
        (np.zeros((8, 8), np.uint8), "grayscale"),
        (np.zeros((8, 8, 4), np.uint8), "BGRA"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        ([[1, 2, 3]], "numpy"),
    ],
)
def test_check_image_names_the_problem(img, words):
    with pytest.raises(ImageError, match=words) as e:
        check_image(img, "probe.jpg")
    assert "probe.jpg" in str(e.value)


def test_check_image_size_and_huge():
    with pytest.raises(ImageError, match="112x112"):
        check_image(np.zeros((100, 112, 3), np.uint8), size=112)
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), shape=(20000, 10, 3), strides=(0, 0, 1))
    with pytest.raises(ImageError, match="limit"):
        check_image(huge)


def test_network_input_round_trip_and_convention():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    blob = to_network_input(img)
    assert blob.shape == (1, 3, 112, 112) and blob.dtype == np.float32
    # channel 0 of the blob is the image's red channel (BGR index 2), normalised as insightface does
    ref = cv2.dnn.blobFromImages([img], 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    np.testing.assert_allclose(blob, ref, atol=1e-6)
    np.testing.assert_array_equal(from_network_input(blob)[0], img)


def test_read_and_decode_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        read_image(bad)
    with pytest.raises(ImageError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", "x")
    ok, buf = cv2.imencode(".png", np.full((4, 5, 3), 7, np.uint8))
    good = tmp_path / "good.png"
    atomic_write_bytes(good, buf.tobytes())
    assert read_image(good).shape == (4, 5, 3)


def test_atomic_open_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_files_and_temp_dirs_get_ordinary_modes(tmp_path):
    import os

    from insightface_bfm.atomic import current_umask, make_temp_dir

    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    d = make_temp_dir(tmp_path / "pack")
    assert d.parent == tmp_path and d.name.startswith(".pack.")
    assert os.stat(d).st_mode & 0o777 == 0o777 & ~current_umask()
