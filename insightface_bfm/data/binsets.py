"""insightface ``.bin`` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), read safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` the encoded images (JPEG/PNG bytes) of
all pairs, two consecutive images per pair, and ``issame_list`` one boolean per pair. insightface
loads it with plain ``pickle.load``, which runs whatever code the file names. Here the unpickler
resolves no global at all (with one harmless exception below), so a file that tries to build
any object, call any function or import any module is refused with ``UnsafePickleError`` before
anything runs; and the loaded value must have exactly the expected structure.

The exception: pickles written by Python 3 with protocol 2 encode each ``bytes`` as a call to
``_codecs.encode(str, "latin1")``. That one function (only with the latin1 codec) is allowed.
Python 2's own pickles (insightface's published sets) need nothing: their strings load as bytes.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError, UnsafePickleError
from ..imaging import decode_image


def _latin1_encode(text, encoding="latin1", *rest):
    # the one callable a protocol-2 pickle of bytes needs; other codecs are refused
    if rest or not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode called with codec {encoding!r}, only latin1 is allowed")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafePickleError(
            f"{self._source}: refused: the pickle asks for {module}.{name}; a .bin set holds only "
            "image bytes and booleans"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refused: persistent ids are not part of a .bin set")


@dataclass
class BinSet:
    """Encoded images of ``len(issame)`` pairs: images ``2k`` and ``2k+1`` form pair ``k``."""

    images: list[bytes]
    issame: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.issame)

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 HxWx3 BGR."""
        return decode_image(self.images[i], f"{self.source}[{i}]")


def load_bin(path) -> BinSet:
    """Load a ``.bin`` set, refusing anything but ``(list of bytes, list of bool)``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read .bin set ({e.strerror or e})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or not a pickle at all
        raise DatasetError(f"{path}: not a readable .bin set ({type(e).__name__}: {e})") from None
    return _check_structure(obj, path)


def _check_structure(obj, path: str) -> BinSet:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise UnsafePickleError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, list) or not isinstance(issame, list):
        raise UnsafePickleError(
            f"{path}: expected (list, list), got ({type(bins).__name__}, {type(issame).__name__})"
        )
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise UnsafePickleError(f"{path}: image {i} is a {type(b).__name__}, expected encoded bytes")
    for i, s in enumerate(issame):
        if not isinstance(s, bool):
            raise UnsafePickleError(f"{path}: label {i} is a {type(s).__name__}, expected a boolean")
    if len(bins) != 2 * len(issame):
        raise DatasetError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected two per pair)")
    if not issame:
        raise DatasetError(f"{path}: no pairs in the set")
    return BinSet(images=[bytes(b) for b in bins], issame=np.array(issame, dtype=bool), source=path)


def save_bin(path, images: list[bytes], issame) -> None:
    """Write a ``.bin`` set that insightface's loader reads (protocol 4), atomically."""
    from ..atomic import atomic_write_bytes

    issame = [bool(s) for s in issame]
    if len(images) != 2 * len(issame):
        raise DatasetError(f"{path}: {len(images)} images for {len(issame)} pairs (expected two per pair)")
    atomic_write_bytes(path, pickle.dumps(([bytes(b) for b in images], issame), protocol=4))
