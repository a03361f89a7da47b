"""Photographed mask fabric: the four surgical-mask photos that ship with insightface.

insightface's own ``MaskRenderer`` pastes these photos (``insightface/data/images/mask_*.jpg``)
onto a 3D face; the ``photo`` mask type maps them into our outline instead, so that some
training masks carry real fabric (pleats, weave, stitched edges, uneven light) rather than a
procedural surface. They are read from the installed insightface package (a dependency of this
one), never copied into this repository.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

# the order is the texture index of a style (``MaskStyle.texture``) and of the photo palette
TEXTURE_NAMES = ("mask_white", "mask_blue", "mask_black", "mask_green")
# stored size (rows, columns): about twice a 112x112 crop's mask, smooth when upsampled for big faces
TEXTURE_SIZE = (96, 192)


def texture_dir() -> Path:
    """insightface's bundled image folder (located without importing insightface)."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'photo' mask type needs insightface installed: its mask photos "
                           "(insightface/data/images/mask_*.jpg) are the textures")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


@functools.lru_cache(maxsize=1)
def photo_textures() -> np.ndarray:
    """The mask photos as float32 BGR, shape (len(TEXTURE_NAMES), rows, columns, 3), read-only."""
    folder = texture_dir()
    out = []
    for name in TEXTURE_NAMES:
        path = folder / f"{name}.jpg"
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            raise RuntimeError(f"{path}: insightface's mask photo is missing or unreadable; the 'photo' "
                               "mask type needs it (reinstall insightface)")
        rows, cols = TEXTURE_SIZE
        out.append(cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32))
    stack = np.stack(out)
    stack.flags.writeable = False
    return stack


def texture_coords(xp, frame, shape, u, v):
    """Where each pixel of the mask samples the photo: (tx, ty) in [0, 1], written for numpy and torch.

    Across, the photo spans the outline's full width (u = -width .. width); down, each column
    of the outline from its top edge to its bottom edge, so the photo's nose-wire band follows
    the top edge and its hem the bottom edge, as a mask stretched over the face does.
    """
    au = xp.abs(u)
    top = shape.top_edge(frame, u, au, xp)
    bottom = shape.bottom_edge(u, au)
    tx = xp.clip(0.5 + 0.5 * u / shape.width, 0.0, 1.0)
    ty = xp.clip((v - top) / xp.maximum(bottom - top, 0.05 + 0.0 * v), 0.0, 1.0)
    return tx, ty
