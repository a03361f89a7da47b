"""Pair list readers: LFW pairs.txt (with and without the fold header), MFR2, CSV."""

import numpy as np
import pytest

from insightface_bfm.data.pairs import (
    guess_extension,
    read_csv_pairs,
    read_lfw_pairs,
    read_mfr2_pairs,
    read_pairs,
)
from insightface_bfm.errors import DatasetError

LFW_2x2 = """2\t2
Alice\t1\t2
Bob\t3\t12
Alice\t1\tCarol\t4
Bob\t2\tDan\t1
Carol\t1\t2
Dan\t1\t3
Eve\t1\tFay\t2
Gus\t10\tHal\t1
"""


def test_lfw_with_fold_header(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text(LFW_2x2)
    pairs = read_lfw_pairs(p)
    assert len(pairs) == 8
    assert pairs.left[0] == "Alice/Alice_0001.jpg" and pairs.right[0] == "Alice/Alice_0002.jpg"
    assert pairs.right[1] == "Bob/Bob_0012.jpg"
    assert pairs.left[2] == "Alice/Alice_0001.jpg" and pairs.right[2] == "Carol/Carol_0004.jpg"
    assert pairs.left[7] == "Gus/Gus_0010.jpg"
    assert pairs.issame.tolist() == [True, True, False, False] * 2
    assert pairs.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pairs.images()[:3] == ["Alice/Alice_0001.jpg", "Alice/Alice_0002.jpg", "Bob/Bob_0003.jpg"]
    sub = pairs.subset([1, 6])
    assert sub.left == ["Bob/Bob_0003.jpg", "Eve/Eve_0001.jpg"] and sub.folds.tolist() == [0, 1]


def test_view1_header_has_no_folds(tmp_path):
    p = tmp_path / "pairsDevTest.txt"
    p.write_text("2\nA 1 2\nB 1 3\nA 1 B 2\nC 4 D 1\n")
    pairs = read_lfw_pairs(p)
    assert pairs.folds is None and pairs.issame.tolist() == [True, True, False, False]


def test_header_layout_is_checked(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("1\t2\nA 1 2\nA 1 B 2\nB 1 3\nC 4 D 1\n")  # same/different interleaved
    with pytest.raises(DatasetError, match="pair 2 is different"):
        read_lfw_pairs(p)
    p.write_text("1\t2\nA 1 2\nB 1 3\nA 1 B 2\n")  # one line short
    with pytest.raises(DatasetError, match="promises 4 pairs, file has 3"):
        read_lfw_pairs(p)


def test_bad_lines_name_file_and_line(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("A 1 2\nA 1 B\n")
    with pytest.raises(DatasetError, match=r"pairs.txt:2"):
        read_lfw_pairs(p)
    p.write_text("A 1 x\n")
    with pytest.raises(DatasetError, match="not an integer"):
        read_lfw_pairs(p)
    p.write_text("\n\n")
    with pytest.raises(DatasetError, match="no pairs"):
        read_lfw_pairs(p)
    with pytest.raises(DatasetError, match="cannot read"):
        read_lfw_pairs(tmp_path / "absent.txt")


def test_mfr2_names_are_png(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("AdrianDunbar 1 2\nAdrianDunbar 1 AlexanderDeCroo 3\n")
    pairs = read_mfr2_pairs(p)
    assert pairs.left == ["AdrianDunbar/AdrianDunbar_0001.png", "AdrianDunbar/AdrianDunbar_0001.png"]
    assert pairs.right == ["AdrianDunbar/AdrianDunbar_0002.png", "AlexanderDeCroo/AlexanderDeCroo_0003.png"]
    assert pairs.issame.tolist() == [True, False] and pairs.folds is None


def test_guess_extension_switches_to_png(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "A_0001.png").write_bytes(b"x")
    p = tmp_path / "pairs.txt"
    p.write_text("A 1 2\n")
    pairs = guess_extension(read_pairs(p), tmp_path)
    assert pairs.left == ["A/A_0001.png"] and pairs.right == ["A/A_0002.png"]


def test_csv(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("left,right,same,fold,case\na/1.jpg,a/2.jpg,1,0,1\na/1.jpg,b/1.jpg,false,0,2\n"
                 "c/1.png,c/2.png,yes,1,3\nb/1.jpg,c/1.png,0,1,3\n")
    pairs = read_pairs(p)
    assert pairs.left[2] == "c/1.png" and pairs.issame.tolist() == [True, False, True, False]
    assert pairs.folds.tolist() == [0, 0, 1, 1] and pairs.cases.tolist() == [1, 2, 3, 3]
    q = tmp_path / "min.csv"
    q.write_text("right,left,label\nx.jpg,y.jpg,1\n")
    pairs = read_csv_pairs(q)
    assert pairs.left == ["y.jpg"] and pairs.folds is None and pairs.cases is None


@pytest.mark.parametrize(
    "text,match",
    [
        ("left,right\na,b\n", "missing column"),
        ("left,right,same\na,b,maybe\n", "maybe"),
        ("left,right,same,case\na,b,1,4\n", "case values"),
        ("left,right,same\n", "no pairs"),
        ("left,right,same,fold\na,b,1,x\n", "fold 'x'"),
    ],
)
def test_csv_errors(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DatasetError, match=match):
        read_csv_pairs(p)


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="unknown pairs format"):
        read_pairs(tmp_path / "x.txt", "xml")


@pytest.mark.shared
def test_official_lfw_lists(shared):
    lfw = shared("data", "lfw112")
    pairs = read_lfw_pairs(lfw / "pairs.txt")
    assert len(pairs) == 6000 and pairs.issame.sum() == 3000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    images = pairs.images()
    assert len(images) == 7701
    assert all((lfw / p).is_file() for p in images)
    dev = read_lfw_pairs(lfw / "pairsDevTest.txt")
    assert len(dev) == 1000 and dev.folds is None and dev.issame[:500].all() and not dev.issame[500:].any()
