"""Verification pair lists: LFW ``pairs.txt``, MFR2 ``pairs.txt`` and CSV files.

All three become one ``PairList``: the two image paths of every pair (relative to an image
folder), whether the pair shows the same person, and, where the file says so, LFW's fold of
each pair and a matching case (1: both unmasked, 2: one masked, 3: both masked).

LFW format (``pairs.txt``, ``pairsDevTest.txt``): an optional header, then one pair a line,
``Name i j`` for the same person, ``Name1 i Name2 j`` for two people; image ``i`` of ``Name``
is ``Name/Name_{i:04d}.jpg``. A header of two numbers ``K N`` (``10 300``) means K folds of N
same pairs followed by N different pairs, and those folds are used as given; a header of one
number ``N`` (View 1) means N same then N different pairs, with no folds.

MFR2 uses the same lines without a header and PNG images (``Name/Name_0001.png``).

CSV: a header row naming ``left``, ``right`` and ``same`` (or ``label``) columns, optionally
``fold`` and ``case``; paths relative to the image folder; ``same`` is 1/0, true/false, yes/no.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..imaging import IMAGE_EXTENSIONS

_TRUE = {"1", "true", "yes", "same", "y", "t"}
_FALSE = {"0", "false", "no", "different", "diff", "n", "f", "-1"}


@dataclass
class PairList:
    left: list[str]
    right: list[str]
    issame: np.ndarray  # bool (P,)
    folds: np.ndarray | None = None  # int (P,) fold ids given by the file
    cases: np.ndarray | None = None  # int (P,) matching case labels given by the file
    source: str = ""

    def __post_init__(self):
        self.issame = np.asarray(self.issame, dtype=bool)
        n = len(self.left)
        if len(self.right) != n or self.issame.shape != (n,):
            raise DatasetError(f"{self.source}: pair columns differ in length")
        for name in ("folds", "cases"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.int64)
                if value.shape != (n,):
                    raise DatasetError(f"{self.source}: {name} column differs in length from the pairs")
                setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.left)

    def images(self) -> list[str]:
        """The distinct images of all pairs, in first-seen order."""
        return list(dict.fromkeys(p for pair in zip(self.left, self.right) for p in pair))

    def subset(self, index) -> PairList:
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.nonzero(index)[0]
        return PairList(
            left=[self.left[i] for i in index],
            right=[self.right[i] for i in index],
            issame=self.issame[index],
            folds=None if self.folds is None else self.folds[index],
            cases=None if self.cases is None else self.cases[index],
            source=self.source,
        )


def _lfw_name(name: str, number: str, ext: str, where: str) -> str:
    try:
        i = int(number)
    except ValueError:
        raise DatasetError(f"{where}: image number {number!r} is not an integer") from None
    return f"{name}/{name}_{i:04d}{ext}"


def read_lfw_pairs(path, ext: str = ".jpg", header: str = "auto") -> PairList:
    """Read an LFW- or MFR2-style pairs file (see the module notes).

    ``header``: "auto" (a first line of only numbers is a header), "none".
    """
    path = os.fspath(path)
    ext = ext if ext.startswith(".") else "." + ext
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n + 1, line.split()) for n, line in enumerate(f)]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read pairs file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text pairs file") from None
    lines = [(n, fields) for n, fields in lines if fields]
    if not lines:
        raise DatasetError(f"{path}: no pairs in file")
    fold_size = n_folds = None
    if header == "auto" and all(x.isdigit() for x in lines[0][1]) and len(lines[0][1]) <= 2:
        numbers = [int(x) for x in lines[0][1]]
        lines = lines[1:]
        if len(numbers) == 2:
            n_folds, fold_size = numbers
            expected = 2 * n_folds * fold_size
        else:
            fold_size, expected = numbers[0], 2 * numbers[0]
        if len(lines) != expected:
            raise DatasetError(f"{path}: header promises {expected} pairs, file has {len(lines)}")
    left, right, same = [], [], []
    for n, fields in lines:
        where = f"{path}:{n}"
        if len(fields) == 3:
            left.append(_lfw_name(fields[0], fields[1], ext, where))
            right.append(_lfw_name(fields[0], fields[2], ext, where))
            same.append(True)
        elif len(fields) == 4:
            left.append(_lfw_name(fields[0], fields[1], ext, where))
            right.append(_lfw_name(fields[2], fields[3], ext, where))
            same.append(False)
        else:
            raise DatasetError(f"{where}: expected 'Name i j' or 'Name1 i Name2 j', got {' '.join(fields)!r}")
    same = np.array(same)
    folds = None
    if fold_size is not None:
        # the header says where the blocks of same and different pairs are: check it
        blocks = np.tile(np.repeat([True, False], fold_size), n_folds or 1)
        if not np.array_equal(same, blocks):
            bad = int(np.nonzero(same != blocks)[0][0])
            raise DatasetError(
                f"{path}: pair {bad + 1} is {'same' if same[bad] else 'different'} but the header's "
                f"layout ({fold_size} same then {fold_size} different) puts the other kind there"
            )
        if n_folds is not None:
            folds = np.repeat(np.arange(n_folds), 2 * fold_size)
    return PairList(left, right, same, folds=folds, source=path)


def read_mfr2_pairs(path) -> PairList:
    """MFR2 (``Name i j`` / ``Name1 i Name2 j``, images ``Name/Name_000i.png``)."""
    return read_lfw_pairs(path, ext=".png")


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DatasetError(f"{where}: 'same' value {value!r} is not one of 1/0, true/false, yes/no")


def read_csv_pairs(path) -> PairList:
    """A CSV of pairs: columns left, right, same (or label), optional fold and case."""
    path = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fieldnames = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read CSV ({e.strerror or e})") from None
    if not rows:
        raise DatasetError(f"{path}: no pairs (a header row and one row per pair are expected)")
    label_col = "same" if "same" in fieldnames else "label" if "label" in fieldnames else None
    missing = [c for c in ("left", "right") if c not in fieldnames] + ([] if label_col else ["same"])
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; header is {fieldnames}")
    left, right, same, folds, cases = [], [], [], [], []
    has_fold, has_case = "fold" in fieldnames, "case" in fieldnames
    for n, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path}:{n}"
        if not row["left"] or not row["right"]:
            raise DatasetError(f"{where}: empty image path")
        left.append(row["left"])
        right.append(row["right"])
        same.append(_parse_bool(row[label_col], where))
        for col, flag, store in (("fold", has_fold, folds), ("case", has_case, cases)):
            if flag:
                try:
                    store.append(int(row[col]))
                except ValueError:
                    raise DatasetError(f"{where}: {col} {row[col]!r} is not an integer") from None
    if has_case and not set(cases) <= {1, 2, 3}:
        raise DatasetError(f"{path}: case values must be 1, 2 or 3, got {sorted(set(cases))}")
    return PairList(
        left,
        right,
        same,
        folds=folds if has_fold else None,
        cases=cases if has_case else None,
        source=path,
    )


def guess_extension(pairs: PairList, root) -> PairList:
    """LFW-style names are built with .jpg; if those files are absent in ``root`` but a file with
    another image extension is there (MFR2's .png, a re-encoded copy), switch to it."""
    root = Path(root)
    first = pairs.left[0]
    if (root / first).exists():
        return pairs
    stem = os.path.splitext(first)[0]
    for ext in IMAGE_EXTENSIONS:
        if (root / (stem + ext)).exists():

            def swap(p, ext=ext):
                return os.path.splitext(p)[0] + ext

            return PairList(
                [swap(p) for p in pairs.left],
                [swap(p) for p in pairs.right],
                pairs.issame,
                pairs.folds,
                pairs.cases,
                pairs.source,
            )
    return pairs


def read_pairs(path, fmt: str = "auto") -> PairList:
    """Read a pairs file of format ``lfw``, ``mfr2``, ``csv`` or ``auto`` (by extension: .csv is CSV,
    anything else LFW lines with .jpg names; see ``guess_extension`` for PNG folders)."""
    fmt = fmt.lower()
    if fmt == "auto":
        fmt = "csv" if os.fspath(path).lower().endswith(".csv") else "lfw"
    if fmt == "lfw":
        return read_lfw_pairs(path)
    if fmt == "mfr2":
        return read_mfr2_pairs(path)
    if fmt == "csv":
        return read_csv_pairs(path)
    raise DatasetError(f"{path}: unknown pairs format {fmt!r} (expected auto, lfw, mfr2 or csv)")
