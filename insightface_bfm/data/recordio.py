"""insightface's RecordIO datasets in pure Python: byte-compatible with mxnet, without mxnet.

Three layers, each matching what mxnet writes:

1. dmlc record framing (dmlc-core ``recordio``): every record is ``magic`` (0xced7230a, uint32
   little endian), ``lrecord`` (uint32: continuation flag in the top 3 bits, part length in the
   lower 29), the part bytes, then zero padding to a multiple of 4. A payload that contains the
   magic word at a 4-aligned position is split there (the word itself is dropped) into parts
   flagged 1 (first), 2 (middle), 3 (last), so that a reader can always resynchronise on the
   magic; the reader puts the word back between parts. Unsplit records have flag 0.
2. The ``.idx`` text file of ``MXIndexedRecordIO``: one ``key\\toffset`` line per record.
3. ``mx.recordio.pack``'s header (``IRHeader``): flag uint32, label float32, id uint64, id2
   uint64; ``flag > 0`` means the label is an array of ``flag`` float32 values that follow
   the header (and the scalar label field is 0).

insightface's face datasets (``train.rec``, ``train.idx``, ``property``): record 0 is a header
whose label is ``[first identity record key, end key]`` (flag 2); images are keys 1 .. first-1
with the class as label (a scalar, or an array whose first value is the class); then one
identity record per class whose label is its ``[first image key, end key)``. ``property`` is
``num_classes,height,width``. A plain dataset (record 0 with flag 0) has images under every key.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import struct
import tempfile
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..atomic import atomic_write_text, current_umask
from ..errors import DatasetError, ImageError, PackError
from ..imaging import decode_image
from .dataset import IMAGE_SIZE, FaceDataset, fit_aligned_crop

log = logging.getLogger("insightface_bfm.data")

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
_FRAME = struct.Struct("<II")
# mxnet packs 'IfQQ' natively; on every platform mxnet runs on that is these 24 little-endian bytes
IR_FORMAT = "<IfQQ"
_IR = struct.Struct(IR_FORMAT)
IR_SIZE = _IR.size


class IRHeader(NamedTuple):
    """mxnet's image-record header: ``label`` is a float or a float32 array (then ``flag`` = its size)."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_header(header, payload: bytes = b"") -> bytes:
    """``mx.recordio.pack``: header (+ float32 label array) + payload."""
    flag, label, id_, id2 = header
    if isinstance(label, numbers.Number):
        head = _IR.pack(0, float(label), int(id_), int(id2))
        return head + bytes(payload)
    arr = np.asarray(label, dtype=np.float32).ravel()
    return _IR.pack(arr.size, 0.0, int(id_), int(id2)) + arr.astype("<f4").tobytes() + bytes(payload)


def unpack_header(record: bytes, source: str = "record") -> tuple[IRHeader, bytes]:
    """``mx.recordio.unpack``: record bytes -> (IRHeader, payload)."""
    if len(record) < IR_SIZE:
        raise DatasetError(
            f"{source}: record of {len(record)} bytes is shorter than its {IR_SIZE}-byte header"
        )
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    body = IR_SIZE
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if len(record) < end:
            raise DatasetError(
                f"{source}: header announces {flag} labels but the record has {len(record)} bytes"
            )
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
        body = end
    return IRHeader(flag, label, id_, id2), bytes(record[body:])


def pack_img(header, img: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """``mx.recordio.pack_img``: encode a BGR image (JPEG quality or PNG compression) and pack it."""
    fmt = img_fmt.lower()
    if fmt in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(quality)]
    else:
        params = []
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise ImageError(f"cannot encode image of shape {getattr(img, 'shape', None)} as {img_fmt}")
    return pack_header(header, buf.tobytes())


def unpack_img(record: bytes, source: str = "record") -> tuple[IRHeader, np.ndarray]:
    """``mx.recordio.unpack_img``: record -> (IRHeader, BGR image)."""
    header, payload = unpack_header(record, source)
    return header, decode_image(payload, source)


def frame_record(payload: bytes) -> bytes:
    """dmlc framing of one record, splitting it where the magic word sits at an aligned offset."""
    data = bytes(payload)
    n = len(data)
    if n > _LEN_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LEN_MASK} bytes, got {n}")
    out = []
    start = 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n & ~3):
        if pos % 4 == 0:
            out.append(_FRAME.pack(MAGIC, ((1 if start == 0 else 2) << _LEN_BITS) | (pos - start)))
            out.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    out.append(_FRAME.pack(MAGIC, ((3 if start else 0) << _LEN_BITS) | (n - start)))
    out.append(data[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


class RecordIOReader:
    """Random access to an mxnet ``.rec`` through its ``.idx`` (``MXIndexedRecordIO`` in 'r' mode).

    Reads with ``os.pread`` on a descriptor opened per process, so it is safe to share across
    forked DataLoader workers. A damaged file raises ``DatasetError`` naming file and offset.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(os.fspath(rec_path))
        self.idx_path = (
            Path(os.fspath(idx_path)) if idx_path is not None else self.rec_path.with_suffix(".idx")
        )
        if not self.rec_path.is_file():
            raise DatasetError(f"{self.rec_path}: no such RecordIO file")
        if not self.idx_path.is_file():
            raise DatasetError(f"{self.idx_path}: missing index file of {self.rec_path.name}")
        self.size = self.rec_path.stat().st_size
        self.idx: dict[int, int] = {}
        self.keys: list[int] = []
        with open(self.idx_path, encoding="ascii", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.strip().split("\t")
                if fields == [""]:
                    continue
                try:
                    key, offset = int(fields[0]), int(fields[1])
                except (ValueError, IndexError):
                    raise DatasetError(
                        f"{self.idx_path}:{lineno}: expected 'key<TAB>offset', got {line!r}"
                    ) from None
                if key not in self.idx:
                    self.keys.append(key)
                self.idx[key] = offset
        self._fd = None
        self._pid = None

    # -- low level
    def _read(self, offset: int, n: int) -> bytes:
        if self._pid != os.getpid():
            self._fd, self._pid = (
                os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0)),
                os.getpid(),
            )
        if hasattr(os, "pread"):
            return os.pread(self._fd, n, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)  # pragma: no cover (Windows)
        return os.read(self._fd, n)  # pragma: no cover

    def _frame_at(self, offset: int) -> tuple[int, int]:
        head = self._read(offset, 8)
        if len(head) < 8:
            raise DatasetError(
                f"{self.rec_path}: truncated record at offset {offset} (file ends at {self.size} bytes)"
            )
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise DatasetError(
                f"{self.rec_path}: no record at offset {offset} (magic 0x{magic:08x}, "
                f"expected 0x{MAGIC:08x}); the file is corrupt or {self.idx_path.name} does not belong to it"
            )
        return lrec >> _LEN_BITS, lrec & _LEN_MASK

    def read_at(self, offset: int) -> tuple[bytes, int]:
        """Read the record starting at ``offset``: (payload, offset of the next record)."""
        parts = []
        pos = offset
        while True:
            cflag, length = self._frame_at(pos)
            if (cflag in (0, 1)) != (pos == offset):
                raise DatasetError(
                    f"{self.rec_path}: broken multi-part record at offset {offset} "
                    f"(part flag {cflag} at offset {pos})"
                )
            data = self._read(pos + 8, length)
            if len(data) < length:
                raise DatasetError(
                    f"{self.rec_path}: truncated record at offset {pos}: needs {length} bytes, "
                    f"file ends at {self.size}"
                )
            parts.append(data)
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return b"".join(parts), pos
            parts.append(_MAGIC_BYTES)  # the split removed the magic word; put it back

    def read_idx(self, key: int) -> bytes:
        """The payload stored under ``key`` (``MXIndexedRecordIO.read_idx``)."""
        try:
            offset = self.idx[int(key)]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None
        return self.read_at(offset)[0]

    def read_header(self, key: int) -> tuple[IRHeader, int]:
        """Header of record ``key`` and its total payload length, reading only its first bytes."""
        offset = self.idx[int(key)]
        cflag, length = self._frame_at(offset)
        if offset + 8 + length > self.size:
            raise DatasetError(
                f"{self.rec_path}: truncated record at offset {offset}: needs {length} bytes, "
                f"file ends at {self.size}"
            )
        if cflag == 0 and length >= IR_SIZE:  # the common case: read just the header and labels
            flag, label, id_, id2 = _IR.unpack(self._read(offset + 8, IR_SIZE))
            if flag == 0:
                return IRHeader(flag, label, id_, id2), length
            if IR_SIZE + 4 * flag <= length:
                raw = self._read(offset + 8 + IR_SIZE, 4 * flag)
                return IRHeader(flag, np.frombuffer(raw, "<f4").astype(np.float32), id_, id2), length
        payload = self.read_at(offset)[0]
        source = f"{self.rec_path} record {key}"
        return unpack_header(payload, source)[0], len(payload)

    def __iter__(self):
        """Payloads in file order, by scanning the framing (``MXRecordIO.read`` until the end)."""
        pos = 0
        while pos < self.size:
            payload, pos = self.read_at(pos)
            yield payload

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key) -> bool:
        return key in self.idx

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):  # descriptors do not travel to spawned workers; each reopens
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class RecordIOWriter:
    """``MXIndexedRecordIO`` in 'w' mode, written atomically.

    Records and index lines go to temporary files beside the targets; ``close()`` renames them
    into place (``.rec`` first, then ``.idx``), ``abort()`` (or an exception inside ``with``)
    deletes them, so a crash never leaves a half-written dataset under the real names.
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = Path(os.fspath(rec_path))
        self.idx_path = (
            Path(os.fspath(idx_path)) if idx_path is not None else self.rec_path.with_suffix(".idx")
        )
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self.idx_path.parent.mkdir(parents=True, exist_ok=True)
        self._rec, self._rec_tmp = self._tmp(self.rec_path, "wb")
        self._idx, self._idx_tmp = self._tmp(self.idx_path, "w")
        self._offset = 0
        self._frames: dict[int, tuple[int, int]] = {}  # key -> (offset, framed length), for rewrite_idx
        self.closed = False

    @staticmethod
    def _tmp(path: Path, mode: str):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 -> the mode a plain open() gives
        return os.fdopen(fd, mode, **({"newline": "\n", "encoding": "ascii"} if "b" not in mode else {})), tmp

    def tell(self) -> int:
        return self._offset

    def write(self, payload: bytes) -> int:
        """Append one record (``MXRecordIO.write``); returns its offset."""
        framed = frame_record(payload)
        offset = self._offset
        self._rec.write(framed)
        self._offset += len(framed)
        return offset

    def write_idx(self, key: int, payload: bytes) -> int:
        """Append one record under ``key`` and its index line; returns its offset."""
        key = int(key)
        offset = self.write(payload)
        self._frames[key] = (offset, self._offset - offset)
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def rewrite_idx(self, key: int, payload: bytes) -> None:
        """Replace record ``key`` in place by one of the same framed size (e.g. a header written first)."""
        offset, size = self._frames[int(key)]
        framed = frame_record(payload)
        if len(framed) != size:
            raise ValueError(f"record {key}: a rewrite must keep its size ({size} bytes), got {len(framed)}")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(self._offset)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for f in (self._rec, self._idx):
                f.flush()
                os.fsync(f.fileno())
                f.close()
            os.replace(self._rec_tmp, self.rec_path)
            os.replace(self._idx_tmp, self.idx_path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._discard()

    def _discard(self) -> None:
        for f, tmp in ((self._rec, self._rec_tmp), (self._idx, self._idx_tmp)):
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.abort()


def _class_of(label, source: str) -> int:
    value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
    if isinstance(label, np.ndarray) and label.size == 0:
        raise DatasetError(f"{source}: empty label array")
    if not value.is_integer() or value < 0:
        raise DatasetError(f"{source}: label {value} is not a class index")
    return int(value)


class RecordIODataset(FaceDataset):
    """insightface's ``train.rec`` / ``train.idx`` / ``property`` as a ``FaceDataset``."""

    kind = "RecordIO"

    def __init__(self, rec_path, idx_path=None):
        rec_path = Path(os.fspath(rec_path))
        super().__init__(str(rec_path))
        self.reader = RecordIOReader(rec_path, idx_path)
        self.property_path = rec_path.parent / "property"
        if not len(self.reader):
            raise DatasetError(f"{self.reader.idx_path}: empty index, no records")
        # like insightface: a record 0 with an array label is the header; otherwise every key is an image
        header = self.reader.read_header(0)[0] if 0 in self.reader else None
        self.identity_range: tuple[int, int] | None = None
        if header is not None and header.flag > 0:
            label = np.asarray(header.label)
            first = int(label[0])
            if first < 1:
                raise DatasetError(
                    f"{rec_path}: header record 0 has label {label.tolist()}, not [first, end]"
                )
            self.image_keys = np.arange(1, first, dtype=np.int64)
            if label.size >= 2:
                self.identity_range = (first, int(label[1]))
        else:
            self.image_keys = np.asarray(self.reader.keys, dtype=np.int64)
        labels = np.empty(len(self.image_keys), dtype=np.int64)
        for i, key in enumerate(self.image_keys.tolist()):
            if key not in self.reader:
                raise DatasetError(f"{self.reader.idx_path}: no record {key}")
            h, _ = self.reader.read_header(key)
            labels[i] = _class_of(h.label, f"{rec_path} record {key}")
        self.labels = labels
        self.num_classes = self._read_num_classes()
        if len(labels) and labels.max() >= self.num_classes:
            raise DatasetError(
                f"{rec_path}: label {int(labels.max())} is out of range for {self.num_classes} classes"
            )

    def _read_num_classes(self) -> int:
        if self.property_path.is_file():
            text = self.property_path.read_text(errors="replace").strip()
            try:
                return int(text.split(",")[0])
            except ValueError:
                raise DatasetError(
                    f"{self.property_path}: expected 'num_classes,height,width', got {text!r}"
                ) from None
        if self.identity_range is not None:
            return self.identity_range[1] - self.identity_range[0]
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def _sample_name(self, index: int) -> str:
        return f"{self.source} record {int(self.image_keys[index])}"

    def _load(self, index: int) -> np.ndarray:
        key = int(self.image_keys[index])
        _, payload = unpack_header(self.reader.read_idx(key), self._sample_name(index))
        return decode_image(payload, self._sample_name(index))


def pack_folder(src, out, *, progress: bool = True) -> dict:
    """Pack an identity-folder tree into ``OUT/train.rec``, ``train.idx``, ``property`` (insightface layout).

    Image files are stored as they are (no re-encoding) when they decode to 112x112; square
    crops of another size are resized and stored as PNG (lossless); unreadable or non-square
    images are reported and left out. Returns ``{"images", "classes", "skipped", "out"}``.
    """
    from tqdm import tqdm

    from .folders import scan_image_folder

    out = Path(os.fspath(out))
    if out.exists() and not out.is_dir():
        raise PackError(f"{out}: exists and is not a directory")
    classes, paths, labels = scan_image_folder(src)
    skipped = 0
    with RecordIOWriter(out / "train.rec", out / "train.idx") as writer:
        # record 0 first, with the final [first identity key, end] filled in once known
        writer.write_idx(0, pack_header(IRHeader(0, [0.0, 0.0], 0, 0)))
        key = 1
        ranges: dict[int, list[int]] = {}  # class -> [first image key, end key)
        bar = tqdm(paths, unit="img", desc=f"packing {Path(os.fspath(src)).name}", disable=not progress)
        for path, label in zip(bar, labels.tolist()):  # paths come grouped by class, in class order
            span = ranges.setdefault(label, [key, key])
            try:
                with open(path, "rb") as f:
                    data = f.read()
                img = decode_image(data, path)
                if img.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
                    data = cv2.imencode(".png", fit_aligned_crop(img, path))[1].tobytes()
            except (OSError, ImageError) as e:
                skipped += 1
                msg = e if isinstance(e, ImageError) else f"{path}: cannot read ({e.strerror or e})"
                log.warning("skipping bad image: %s", msg)
                continue
            writer.write_idx(key, pack_header(IRHeader(0, float(label), key, 0), data))
            key += 1
            span[1] = key
        bar.close()
        if key == 1:
            raise PackError(f"{src}: no readable image to pack")
        for c, (start, end) in sorted(ranges.items()):
            if start == end:
                log.warning("identity %s has no readable image; its class %d stays empty", classes[c], c)
        first_identity = key
        for start, end in (ranges[c] for c in range(len(classes))):
            writer.write_idx(key, pack_header(IRHeader(0, [float(start), float(end)], 0, 0)))
            key += 1
        writer.rewrite_idx(0, pack_header(IRHeader(0, [float(first_identity), float(key)], 0, 0)))
    atomic_write_text(out / "property", f"{len(classes)},{IMAGE_SIZE},{IMAGE_SIZE}")
    return {"images": first_identity - 1, "classes": len(classes), "skipped": skipped, "out": str(out)}
