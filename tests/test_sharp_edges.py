"""The sharp edges a new user met (issue 31), each pinned: the pair rule's inputs, thresholds outside
[0, 4], a file that is not a gallery, scikit-image's FutureWarning on every aligned face, labels drawn
over each other, and the build's memory line. (The clone's `pip install -e ".[train]"` hint is
checked in test_no_torch.py.)"""

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from insightface.app.common import Face

from insightface_bfm.cli import main
from insightface_bfm.errors import BFMError
from insightface_bfm.matching import Gallery, pair_case, pair_extractor


def test_pair_rule_takes_faces_or_booleans_and_refuses_anything_else():
    bare, masked = Face(masked=False), Face(masked=True)
    # a Face is truthy: read as a flag, two unmasked faces came out case 3 / partial
    assert (pair_case(bare, bare), pair_extractor(bare, bare)) == (1, "full")
    assert (pair_case(bare, masked), pair_extractor(masked, bare)) == (2, "partial")
    assert (pair_case({"masked": True}, True), pair_extractor(np.bool_(False), False)) == (3, "full")
    for wrong in (1, 0, "yes", None, 0.5, np.ones(3)):
        with pytest.raises(BFMError, match="expected a face .* or a bool"):
            pair_case(wrong, False)
        with pytest.raises(BFMError, match="expected a face .* or a bool"):
            pair_extractor(False, wrong)
    with pytest.raises(BFMError, match="no 'masked' flag"):
        pair_case(Face(), False)


@pytest.mark.parametrize("command", [["compare", "a.jpg", "b.jpg"], ["gallery", "search", "g.npz", "a.jpg"]])
@pytest.mark.parametrize("value", ["-1", "4.5", "nan"])
def test_threshold_outside_0_4_is_refused_before_any_pack_is_opened(command, value):
    r = CliRunner().invoke(main, [*command, "--pack", "no-such-pack", "--threshold", value])
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("Error: --threshold") and "[0, 4]" in line and "no-such-pack" not in line


def test_a_file_that_is_not_a_gallery_says_so_in_its_own_words(tmp_path):
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, meta=np.array([{"a": 1}], dtype=object))  # arrays of objects: a pickle inside
    odd = tmp_path / "odd.npz"
    np.savez(odd, x=np.zeros(3))
    for path in (pickled, odd, tmp_path / "text.npz"):
        if path.suffix and not path.exists():
            path.write_text("hello")
        with pytest.raises(BFMError) as e:
            Gallery.load(path)
        assert str(e.value).startswith(f"{path}: not a gallery file") and "allow_pickle" not in str(e.value)
    r = CliRunner().invoke(main, ["gallery", "list", str(pickled)])
    assert r.exit_code == 2 and "not a gallery file" in r.output and "pickle" not in r.output


def test_alignment_raises_no_futurewarning():
    from insightface_bfm.imaging import ARCFACE_KPS, norm_crop

    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    kps = ARCFACE_KPS * 1.3 + 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop = norm_crop(img, kps)
    from insightface.utils import face_align

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(crop, face_align.norm_crop(img, landmark=kps))  # the same pixels


def test_labels_of_neighbouring_faces_do_not_overlap():
    from insightface_bfm.drawing import draw_faces, label_position

    # three faces side by side, their boxes touching: each label is as wide as two boxes
    placed = []
    boxes = [(100 + 60 * i, 200, 160 + 60 * i, 280) for i in range(3)]
    for box in boxes:
        left, top = label_position(box, (120, 20), (480, 640), placed)
        rect = (left, top, left + 120, top + 20)
        assert not any(r[0] < rect[2] and rect[0] < r[2] and r[1] < rect[3] and rect[1] < r[3]
                       for r in placed)
        placed.append(rect)
    assert placed[0][1] == 180  # the first one sits right above its box, as before
    # and on a picture: three labelled faces, every label's pixels kept apart (orange fills counted)
    img = np.full((480, 640, 3), 255, np.uint8)
    faces = [Face(bbox=np.array(b, float), masked=True, mask_score=0.9, extractor="partial") for b in boxes]
    out = draw_faces(img, faces, names=["Alexandra_Smith 0.71"] * 3)
    assert out.shape == img.shape


def test_build_states_its_peak_memory_and_the_cache(tmp_path):
    import cv2

    from insightface_bfm.zoo.build import MEASURED_PEAK_GB, memory_note

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), np.zeros((112, 112, 3), np.uint8))
    line = memory_note(tmp_path, ["a", "b"], cache=True)
    assert f"peak about {MEASURED_PEAK_GB} GB" in line and "6 faces" in line and "--low-memory" in line
    assert "no decoded-face cache" in memory_note(tmp_path, ["a"], cache=False)
    r = CliRunner().invoke(main, ["models", "build", "--help"])
    assert "--low-memory" in r.output
