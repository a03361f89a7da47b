"""Read MXNet ``.params`` files (``mx.nd.save`` / ``save_checkpoint``) with numpy alone, no mxnet.

Byte layout, little-endian, as mxnet 0.x-1.9 writes it (``NDArray::Save`` in src/ndarray/ndarray.cc,
dmlc-core's serializer for vectors and strings); checked on a file written by mxnet 1.9.1:

    file     uint64 0x112 (list magic) | uint64 reserved (0)
             uint64 N | N x array
             uint64 K | K x name (uint64 length | UTF-8 bytes)      K = N (dict form) or 0 (list form)
    array    uint32 magic, then by magic:
      0xF993FAC9 (V2, mxnet >= 0.11)   int32 storage type | shape | body
      0xF993FACA (V3, numpy-shape mode) int32 storage type | shape | body
      0xF993FAC8 (V1)                  shape | body
      anything else (legacy, pre-V1)   the uint32 is ndim | ndim x uint32 dims | body
    shape    int32 ndim | ndim x int64 dims         (V1-V3)
    body     int32 device type | int32 device id | int32 type flag | prod(shape) x itemsize bytes

An array whose shape is "none" has no body: ndim 0 for legacy, V1 and V2 (a V2 scalar cannot be
saved), ndim -1 for V3 (where ndim 0 is a scalar with one value). Storage types other than 0
(dense) carry extra shapes and index arrays (row_sparse, csr); recognition checkpoints never hold
them, and they are refused. Checkpoint names are ``arg:NAME`` (weights) and ``aux:NAME``
(BatchNorm moving statistics); Gluon's ``save_parameters`` writes bare names.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import PackError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
# mshadow type flags -> numpy dtypes (12 = bfloat16, widened to float32 on reading)
DTYPES = {
    0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64,
    7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64, 12: "bfloat16",
}
STORAGE_TYPES = {0: "default", 1: "row_sparse", 2: "csr"}


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size))

    def shape(self, legacy_ndim: int | None = None) -> tuple[int, ...] | None:
        """A shape, or None for the "none" marker (ndim -1)."""
        if legacy_ndim is not None:
            return tuple(self.unpack(f"{legacy_ndim}I"))
        (ndim,) = self.unpack("i")
        if ndim < 0:
            return None
        return tuple(self.unpack(f"{ndim}q"))


def read_ndarrays(path) -> tuple[list[np.ndarray | None], list[str]]:
    """The arrays of an mxnet ``.params`` / ``mx.nd.save`` file and their names ([] for the list form).

    An array saved as "none" (an empty NDArray) comes back as None; float16 / float64 and the
    integer types keep their dtype (bfloat16 becomes float32). Errors are one-line ``PackError``s.
    """
    path = Path(path)
    if not path.is_file():
        raise PackError(f"{path}: mxnet params file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PackError(f"{path}: unreadable mxnet params file ({e.strerror or e})") from None
    reader = _Reader(data)
    arrays: list[np.ndarray | None] = []
    count = None
    try:
        magic, _reserved = reader.unpack("QQ")
        if magic != LIST_MAGIC:
            raise PackError(f"{path}: not an mxnet NDArray file (first 8 bytes {bytes(data[:8]).hex()}, "
                            f"expected the list magic 0x112)")
        (count,) = reader.unpack("Q")
        if count > len(data):  # each array takes at least one byte: a foreign or damaged count
            raise _Truncated
        for index in range(count):
            arrays.append(_read_array(reader, path, index))
        (name_count,) = reader.unpack("Q")
        if name_count not in (0, count):
            raise PackError(f"{path}: {count} arrays but {name_count} names")
        names = []
        for _ in range(name_count):
            (length,) = reader.unpack("Q")
            try:
                names.append(bytes(reader.take(length)).decode("utf-8"))
            except UnicodeDecodeError:
                raise PackError(f"{path}: array name #{len(names)} is not UTF-8 text") from None
    except _Truncated:
        where = "header" if count is None else f"array #{len(arrays)} of {count}"
        if count is not None and len(arrays) == count:
            where = "array names"
        raise PackError(f"{path}: truncated mxnet params file ({len(data)} bytes; ended inside the "
                        f"{where})") from None
    if reader.pos != len(data):
        raise PackError(f"{path}: {len(data) - reader.pos} unexpected bytes after the last array name")
    return arrays, names


def _read_array(reader: _Reader, path: Path, index: int) -> np.ndarray | None:
    (magic,) = reader.unpack("I")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = reader.unpack("i")
        if stype != 0:
            kind = STORAGE_TYPES.get(stype, f"storage type {stype}")
            raise PackError(f"{path}: array #{index} is {kind}; only dense arrays are supported")
        shape = reader.shape()
        none = shape is None or (magic == V2_MAGIC and len(shape) == 0)
    elif magic == V1_MAGIC:
        shape = reader.shape()
        none = shape is None or len(shape) == 0
    else:
        if magic > 32:  # mxnet tensors have at most 32 dims: this is no legacy header either
            raise PackError(f"{path}: array #{index} starts with unknown magic 0x{magic:08X}")
        shape = reader.shape(legacy_ndim=magic)
        none = len(shape) == 0
    if none:
        return None
    _dev_type, _dev_id, type_flag = reader.unpack("iii")
    dtype = DTYPES.get(type_flag)
    if dtype is None:
        raise PackError(f"{path}: array #{index} has unknown type flag {type_flag}")
    count = int(np.prod(shape, dtype=np.int64))
    if dtype == "bfloat16":  # the upper half of a float32
        raw = np.frombuffer(reader.take(2 * count), dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    dtype = np.dtype(dtype).newbyteorder("<")
    values = np.frombuffer(reader.take(dtype.itemsize * count), dtype=dtype)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_params(path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(arg_params, aux_params)`` of a checkpoint's ``.params`` (the dict form), as mxnet's
    ``load_checkpoint`` splits them; bare names (Gluon) count as arguments. Empty arrays are dropped."""
    arrays, names = read_ndarrays(path)
    if arrays and not names:
        raise PackError(f"{path}: a list of {len(arrays)} unnamed arrays, not a checkpoint's named weights")
    args: dict[str, np.ndarray] = {}
    aux: dict[str, np.ndarray] = {}
    for name, array in zip(names, arrays):
        kind, _, bare = name.partition(":")
        if not bare:
            kind, bare = "arg", name
        if kind not in ("arg", "aux"):
            raise PackError(f"{path}: parameter name {name!r} has an unknown prefix (expected arg: or aux:)")
        target = args if kind == "arg" else aux
        if bare in args or bare in aux:
            raise PackError(f"{path}: parameter {bare!r} is stored twice")
        if array is not None:
            target[bare] = array
    return args, aux
