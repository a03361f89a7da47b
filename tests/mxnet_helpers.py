"""Build MXNet checkpoints in tests without mxnet: a symbol JSON builder and a .params writer.

The writer packs the bytes by hand with ``struct`` (independently of the package's reader), in
mxnet's layout (src/ndarray/ndarray.cc ``NDArray::Save`` + dmlc-core's serializer), little-endian:

    uint64 0x112 | uint64 0 | uint64 N | N x array | uint64 K | K x (uint64 len | bytes)
    array, V2:     uint32 0xF993FAC9 | int32 stype 0 | int32 ndim | ndim x int64 | body
    array, V3:     uint32 0xF993FACA | int32 stype 0 | int32 ndim (-1 = none) | ndim x int64 | body
    array, V1:     uint32 0xF993FAC8 | int32 ndim | ndim x int64 | body
    array, legacy: uint32 ndim | ndim x uint32 | body
    body (absent for a none array): int32 dev_type (1 cpu) | int32 dev_id | int32 type flag | raw data
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# mshadow type flags
_FLAGGED = (np.float32, np.float64, np.float16, np.uint8, np.int32, np.int8, np.int64)
TYPE_FLAGS = {np.dtype(t): flag for flag, t in enumerate(_FLAGGED)}
MAGIC = {"v1": 0xF993FAC8, "v2": 0xF993FAC9, "v3": 0xF993FACA}


def pack_array(array: np.ndarray | None, version: str = "v2") -> bytes:
    """One NDArray record; None is the "none" (empty) array of that version."""
    if version == "legacy":
        shape = () if array is None else array.shape
        out = struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
    else:
        out = struct.pack("<I", MAGIC[version])
        if version != "v1":
            out += struct.pack("<i", 0)  # dense storage
        if array is None:
            ndim, shape = (-1 if version == "v3" else 0), ()
        else:
            ndim, shape = array.ndim, array.shape
        out += struct.pack("<i", ndim) + struct.pack(f"<{len(shape)}q", *shape)
    if array is None:
        return out
    flag = TYPE_FLAGS[array.dtype]
    return out + struct.pack("<iii", 1, 0, flag) + np.ascontiguousarray(array).astype(
        array.dtype.newbyteorder("<")).tobytes()


def pack_params(arrays, names=None, version: str = "v2") -> bytes:
    """A whole ``mx.nd.save`` file: the list form when ``names`` is None, else the dict form."""
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    out += b"".join(pack_array(a, version) for a in arrays)
    names = names or []
    out += struct.pack("<Q", len(names))
    for name in names:
        raw = name.encode("utf-8")
        out += struct.pack("<Q", len(raw)) + raw
    return out


def _attr(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, tuple | list):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


class Graph:
    """A symbol under construction: ``data`` is node 0; ``var`` adds a stored weight, ``op`` an operator."""

    def __init__(self, normalise: bool = True):
        self.nodes = [{"op": "null", "name": "data", "inputs": []}]
        self.arg: dict[str, np.ndarray] = {}
        self.aux: dict[str, np.ndarray] = {}
        self.x = 0
        if normalise:  # insightface's own input chain: the op under test sees (pixels - 127.5) / 128
            self.x = self.op("_minus_scalar", "_minusscalar0", [0], scalar=127.5)
            self.x = self.op("_mul_scalar", "_mulscalar0", [self.x], scalar=0.0078125)

    def var(self, name: str, value, aux: bool = False) -> int:
        self.nodes.append({"op": "null", "name": name, "inputs": []})
        (self.aux if aux else self.arg)[name] = np.asarray(value)
        return len(self.nodes) - 1

    def op(self, op: str, name: str, inputs, **attrs) -> int:
        entries = [[i, 0, 0] if isinstance(i, int) else [i[0], i[1], 0] for i in inputs]
        node = {"op": op, "name": name, "inputs": entries}
        if attrs:
            node["attrs"] = {k: _attr(v) for k, v in attrs.items()}
        self.nodes.append(node)
        return len(self.nodes) - 1

    def save(self, folder, prefix: str = "model", epoch: int = 0, heads=None, version: str = "v2",
             dtype=None) -> str:
        """Write PREFIX-symbol.json and PREFIX-EPOCH.params; returns the spec ``folder/prefix,epoch``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        heads = heads if heads is not None else [len(self.nodes) - 1]
        arg_nodes = [i for i, n in enumerate(self.nodes) if n["op"] == "null"]
        doc = {"nodes": self.nodes, "arg_nodes": arg_nodes,
               "node_row_ptr": list(range(len(self.nodes) + 1)),
               "heads": [[h, 0, 0] for h in heads], "attrs": {"mxnet_version": ["int", 10901]}}
        (folder / f"{prefix}-symbol.json").write_text(json.dumps(doc))
        names, arrays = [], []
        for kind, table in (("arg", self.arg), ("aux", self.aux)):
            for name, value in table.items():
                names.append(f"{kind}:{name}")
                arrays.append(value.astype(dtype) if dtype is not None else value)
        (folder / f"{prefix}-{epoch:04d}.params").write_bytes(pack_params(arrays, names, version))
        return f"{folder / prefix},{epoch}"
