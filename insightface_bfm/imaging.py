"""The one agreed image form and the conversion to network input.

Images travel through the project as uint8 HxWx3 BGR arrays (insightface's and cv2's
convention). Networks take float32 Nx3xHxW RGB normalised as (x - 127.5) / 127.5, exactly
what insightface's ArcFaceONNX feeds a recognition model. ``to_network_input`` is the only
place that converts between the two; ``from_network_input`` is its inverse.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

# insightface's ArcFace 5-point template for 112x112 crops (eyes, nose tip, mouth corners);
# the same numbers as insightface.utils.face_align.arcface_dst, kept here so that the
# renderer and the synthetic data need no insightface import.
ARCFACE_KPS = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

INPUT_MEAN = 127.5
INPUT_STD = 127.5
# Files read as images wherever a folder of images is walked.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Largest side accepted for a raw photo: past this a decode costs gigabytes.
MAX_IMAGE_SIDE = 16384


def check_image(img, name: str = "image", *, size: int | None = None) -> np.ndarray:
    """Return ``img`` if it is a uint8 HxWx3 BGR array, else raise ``ImageError`` naming it.

    ``size`` (e.g. 112) also demands a square crop of that side.
    """
    if img is None:
        raise ImageError(f"{name}: got None instead of an image (did cv2.imread fail to read the file?)")
    if not isinstance(img, np.ndarray):
        raise ImageError(f"{name}: expected a numpy uint8 HxWx3 BGR array, got {type(img).__name__}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        raise ImageError(
            f"{name}: grayscale image of shape {img.shape}; convert it with "
            "cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)"
        )
    if img.ndim == 3 and img.shape[2] == 4:
        raise ImageError(
            f"{name}: 4-channel (BGRA) image; convert it with cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)"
        )
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"{name}: expected shape HxWx3, got {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{name}: empty image of shape {img.shape}")
    if max(img.shape[:2]) > MAX_IMAGE_SIDE:
        raise ImageError(f"{name}: image of shape {img.shape} exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    if img.dtype != np.uint8:
        raise ImageError(f"{name}: expected dtype uint8, got {img.dtype}")
    if size is not None and img.shape[:2] != (size, size):
        raise ImageError(f"{name}: expected an aligned {size}x{size} crop, got {img.shape[1]}x{img.shape[0]}")
    return img


def decode_image(data: bytes, source: str = "image bytes") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to uint8 HxWx3 BGR, or raise ``ImageError``."""
    if not data:
        raise ImageError(f"{source}: empty image data")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{source}: corrupt or unsupported image data ({len(data)} bytes)")
    return img


def read_image(path) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR, or raise ``ImageError`` naming the path."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read image ({e.strerror or e})") from None
    return decode_image(data, path)


def encode_image(img: np.ndarray, suffix: str, quality: int = 95) -> bytes:
    """Encode uint8 BGR as ``suffix`` (".jpg", ".png", ...); JPEG at ``quality``."""
    suffix = suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, img, params)
    if not ok:
        raise ImageError(f"cannot encode an image of shape {getattr(img, 'shape', None)} as {suffix}")
    return buf.tobytes()


def list_image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursively, through linked folders too: a selection of
    identities is often a folder of symlinks), as sorted paths relative to it."""
    root = Path(root)
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path.relative_to(root))
    return sorted(found)


def norm_crop(img: np.ndarray, kps, size: int = 112) -> np.ndarray:
    """insightface's ``face_align.norm_crop`` (the ArcFace 5-point template): the project's one
    alignment call. It runs scikit-image's ``SimilarityTransform.estimate``, deprecated since 0.26,
    which warns on every face; that FutureWarning alone is silenced here (same pixels)."""
    import warnings

    from insightface.utils import face_align

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`estimate` is deprecated", category=FutureWarning)
        return face_align.norm_crop(img, landmark=kps, image_size=size)


def to_network_input(images) -> np.ndarray:
    """uint8 BGR image (HxWx3) or batch (NxHxWx3) -> float32 Nx3xHxW RGB in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ImageError(f"expected HxWx3 or NxHxWx3 BGR images, got shape {arr.shape}")
    rgb = arr[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    return (rgb - INPUT_MEAN) / INPUT_STD


def from_network_input(blob) -> np.ndarray:
    """Inverse of ``to_network_input``: float Nx3xHxW RGB in [-1, 1] -> uint8 NxHxWx3 BGR."""
    arr = np.asarray(blob, dtype=np.float32) * INPUT_STD + INPUT_MEAN
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)[..., ::-1].copy()


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def refuse_writing_over_sources(found, dst) -> None:
    """Raise if an output ``dst / name`` of ``collect_images``' list would be one of its sources
    (``bfm align`` and ``bfm mask`` write one file per image under ``dst``)."""
    dst = Path(dst)
    for path, rel, _ in found:
        if (dst / rel).resolve() == path.resolve():
            raise ImageError(
                f"{dst}: writing {Path(rel).as_posix()} there would overwrite the source image {path}"
            )


def collect_images(inputs, stdin=None) -> list[tuple[Path, Path, bool]]:
    """The images a command was given: files, folders (walked), and ``-`` (paths read from stdin).

    Returns ``(path, name, named)`` per image: ``name`` is where outputs go relative to the
    destination (inside a folder: the path under it; a named file: its file name, or where two
    named files share one, their paths under their common folder); ``named`` is True for files given
    directly (commands treat problems with those as errors, with folder contents as misses).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files, folders = [], []
    for item in inputs:
        if str(item) == "-":
            stream = stdin if stdin is not None else sys.stdin
            listed = [line.strip() for line in stream.read().splitlines() if line.strip()]
            if not listed:
                raise ImageError("-: no image paths on standard input")
            entries = listed
        else:
            entries = [item]
        for entry in entries:
            path = Path(os.path.expanduser(os.fspath(entry)))
            if path.is_dir():
                folders.append(path)
            elif path.is_file():
                if not is_image_file(path):
                    raise ImageError(f"{path}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
                files.append(path)
            else:
                raise ImageError(f"{path}: no such file or folder")
    out = []
    for folder in folders:
        found = list_image_files(folder)
        if not found:
            raise ImageError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
        out.extend((folder / rel, rel, False) for rel in found)
    if files:
        unique_files = list(dict.fromkeys(p.resolve() for p in files))
        if len({p.name for p in unique_files}) == len(unique_files):
            out.extend((p, Path(p.name), True) for p in files)
        else:  # two files of one name: keep their paths under their common folder apart
            base = Path(os.path.commonpath([p.parent for p in unique_files]))
            out.extend((p, p.resolve().relative_to(base), True) for p in files)
    seen, paths, unique = {}, set(), []
    for path, name, named in out:
        if path.resolve() in paths:
            continue  # the same image given twice (e.g. a file and its folder)
        if name in seen:
            raise ImageError(
                f"{path} and {seen[name]}: both would be named {name.as_posix()}; give them apart"
            )
        seen[name] = path
        paths.add(path.resolve())
        unique.append((path, name, named))
    return unique
