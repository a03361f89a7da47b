"""Procedurally drawn face identities: the embedded default dataset (no download needed).

Each identity is a set of drawing parameters split between the two halves of the face, so a
mask over the nose and mouth hides a real part of who someone is:

- upper face: eye spacing, size, tilt and iris colour, brows (height, arch, thickness), hair
  (colour, hairline shape, style), forehead marks, glasses;
- lower face: nose (length, width, nostrils, bridge), mouth (width, height, lip thickness and
  colour, cupid's bow), jaw and chin shape, beard style, cheek moles, freckles, blush,
  nasolabial folds;
- both: skin tone and face width.

Every image adds pose (in-plane rotation, scale, shift, a yaw-like shift of the head outline),
lighting (gain, colour cast, directional gradient), expression (smile, open mouth, brow raise,
eye openness, gaze), blur and noise. The faces sit on insightface's ArcFace 5-point template
(``ARCFACE_KPS``), moved by each image's pose; ``keypoints(i)`` gives them, e.g. for
``render_mask``. Images depend only on ``(seed, index)``: any worker process draws the same
image for the same index, and different seeds give disjoint sets of identities.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..imaging import ARCFACE_KPS
from .dataset import IMAGE_SIZE, FaceDataset

# cv2 drawing with sub-pixel precision: coordinates are fixed point with 4 fractional bits.
_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_CX = 56.0  # face centre line in the 112x112 template

# colour palettes as RGB (reversed to BGR when used), interpolated and jittered per identity
_SKIN = np.array(
    [[255, 226, 200], [240, 196, 162], [222, 170, 112], [196, 136, 80], [140, 90, 52], [92, 60, 42]],
    dtype=np.float32,
)
_HAIR = np.array(
    [
        [22, 18, 18],
        [55, 38, 28],
        [105, 72, 45],
        [150, 70, 35],
        [205, 175, 115],
        [140, 140, 138],
        [215, 212, 205],
    ],
    dtype=np.float32,
)
_HAIR_P = np.array([0.28, 0.24, 0.17, 0.08, 0.11, 0.08, 0.04])
_IRIS = np.array(
    [[55, 32, 18], [105, 68, 38], [125, 105, 50], [70, 120, 75], [70, 110, 175], [115, 128, 140]],
    dtype=np.float32,
)

# a fixed bank of sensor noise: each image adds a window of it at its own offset (much cheaper
# than drawing 112x112x3 normal variates per image, and as deterministic)
_NOISE = np.random.default_rng(0x5EED).standard_normal((256, 256, 3)).astype(np.float32)

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE / 2) - 1.0


def _fx(pts) -> np.ndarray:
    """Float points -> int32 fixed-point array for cv2's ``shift`` argument."""
    return np.round(np.asarray(pts, dtype=np.float64) * _ONE).astype(np.int32)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(x * _ONE + 0.5), int(y * _ONE + 0.5)  # coordinates here are >= 0: no need for round()


def _dots(img: np.ndarray, pts: np.ndarray, color, alpha: float = 1.0) -> None:
    """Single-pixel dots (stubble, freckles) in one vectorised write instead of a circle each."""
    xy = np.clip(np.rint(pts), 0, IMAGE_SIZE - 1).astype(np.intp)
    ys, xs = xy[:, 1], xy[:, 0]
    img[ys, xs] = (img[ys, xs] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)


def _bgr(rgb) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in rgb)
    return (min(b, 255.0), min(g, 255.0), min(r, 255.0))


def _scale(color, f: float) -> tuple[float, float, float]:
    return tuple(min(255.0, max(0.0, c * f)) for c in color)


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(x * (1 - t) + y * t for x, y in zip(a, b))


def _palette(rng, table, jitter: float) -> np.ndarray:
    """A colour between two neighbouring palette entries, jittered."""
    t = rng.uniform(0, len(table) - 1)
    i = min(int(t), len(table) - 2)
    c = table[i] * (1 - (t - i)) + table[i + 1] * (t - i)
    return np.clip(c + rng.normal(0, jitter, 3), 0, 255)


def _chaikin(pts: np.ndarray, closed: bool = False, iterations: int = 2) -> np.ndarray:
    """Corner-cutting smoothing of a polygon (keeps the end points of an open curve)."""
    for _ in range(iterations):
        p = np.vstack([pts, pts[:1]]) if closed else pts
        q = 0.75 * p[:-1] + 0.25 * p[1:]
        r = 0.25 * p[:-1] + 0.75 * p[1:]
        mid = np.empty((2 * len(q), 2), dtype=np.float64)
        mid[0::2], mid[1::2] = q, r
        pts = mid if closed else np.vstack([pts[:1], mid, pts[-1:]])
    return pts


def _identity(seed: int, identity: int) -> dict:
    """Drawing parameters of one identity (independent of the image)."""
    rng = np.random.default_rng((seed, identity, 0x1D))
    p: dict = {}
    # -- both halves
    skin = _palette(rng, _SKIN, 9.0)
    p["skin"] = _bgr(skin)
    p["face_w"] = rng.uniform(36.0, 45.0)
    p["face_h"] = rng.uniform(44.0, 52.0)
    p["age"] = rng.uniform(0, 1)
    # -- upper face
    hair_i = rng.choice(len(_HAIR), p=_HAIR_P)
    hair = np.clip(_HAIR[hair_i] + rng.normal(0, 12, 3), 0, 255)
    if p["age"] > 0.8 and rng.random() < 0.5:
        hair = hair * 0.4 + _HAIR[5] * 0.6
    p["hair"] = _bgr(hair)
    p["hair_style"] = rng.choice(4, p=[0.45, 0.25, 0.12, 0.18])  # short, long, bald, fringe
    p["hairline"] = rng.uniform(14.0, 31.0)
    p["hair_side"] = rng.uniform(40.0, 60.0)
    p["hair_pow"] = rng.uniform(1.6, 4.0)
    p["widow"] = rng.uniform(0, 5) if rng.random() < 0.3 else 0.0
    p["fringe"] = rng.uniform(6, 14)
    p["eye_spread"] = rng.uniform(-2.5, 2.5)
    p["eye_dy"] = rng.uniform(-1.5, 1.5)
    p["eye_w"] = rng.uniform(5.5, 9.0)
    p["eye_h"] = rng.uniform(2.4, 4.6)
    p["eye_tilt"] = rng.uniform(-12, 12)
    p["iris"] = _bgr(_palette(rng, _IRIS, 10.0))
    p["iris_r"] = rng.uniform(2.3, 3.5)
    p["lid"] = int(rng.integers(1, 3))
    p["eye_bags"] = rng.random() < 0.3
    brow = np.asarray(hair) * rng.uniform(0.45, 0.85)
    p["brow"] = _bgr(brow)
    p["brow_h"] = rng.uniform(7.0, 12.5)
    p["brow_arch"] = rng.uniform(-1.0, 4.5)
    p["brow_len"] = rng.uniform(10.0, 17.0)
    p["brow_gap"] = rng.uniform(-1.0, 4.0)
    p["brow_slant"] = rng.uniform(-3.0, 3.0)
    p["brow_t"] = int(rng.integers(1, 5))
    p["wrinkles"] = int(rng.integers(0, 4)) if p["age"] > 0.4 else 0
    p["forehead_mole"] = (rng.uniform(38, 74), rng.uniform(28, 42)) if rng.random() < 0.2 else None
    p["glasses"] = rng.random() < 0.12
    p["glasses_col"] = _bgr(rng.choice([[20, 20, 20], [120, 80, 40], [190, 160, 90], [140, 140, 150]]))
    p["glasses_shape"] = int(rng.integers(0, 2))
    # -- lower face
    p["nose_dy"] = rng.uniform(-3.5, 3.5)
    p["nose_w"] = rng.uniform(4.5, 11.0)
    p["nostril"] = rng.uniform(1.0, 3.0)
    p["bridge_w"] = rng.uniform(2.5, 6.0)
    p["bridge_shade"] = rng.uniform(0.75, 0.93)
    p["nose_tip"] = rng.uniform(2.0, 4.5)
    p["mouth_w"] = rng.uniform(9.0, 18.5)
    p["mouth_dy"] = rng.uniform(-3.5, 3.5)
    p["upper_lip"] = rng.uniform(1.3, 4.0)
    p["lower_lip"] = rng.uniform(2.0, 5.5)
    p["bow"] = rng.uniform(0.0, 1.8)
    p["mouth_curve"] = rng.uniform(-1.5, 1.5)
    lip_red = np.array([185.0, 75.0, 85.0]) + rng.normal(0, 25, 3)
    t = rng.uniform(0.25, 0.85)
    p["lip"] = _bgr(np.clip(skin * (1 - t) * rng.uniform(0.6, 1.05) + lip_red * t, 0, 255))
    p["nose_col"] = rng.uniform(0.9, 1.12, 3) if rng.random() < 0.3 else None
    p["birthmark"] = (
        (
            rng.uniform(30, 82),
            rng.uniform(72, 100),
            rng.uniform(3, 7),
            rng.uniform(2, 5),
            rng.uniform(0, 180),
            rng.uniform(0.55, 0.8),
        )
        if rng.random() < 0.15
        else None
    )
    p["chin_cleft"] = rng.random() < 0.2
    p["jaw_w"] = p["face_w"] - rng.uniform(1.0, 11.0)
    p["chin_w"] = rng.uniform(5.0, 20.0)
    p["chin_y"] = rng.uniform(100.0, 114.0)
    # none, moustache, goatee, full, stubble
    p["beard"] = int(rng.choice(5, p=[0.38, 0.17, 0.13, 0.17, 0.15]))
    # facial hair usually has the hair's colour, but not always (a lower-face-only cue)
    beard = hair if rng.random() < 0.65 else _palette(rng, _HAIR, 12.0)
    p["beard_col"] = _bgr(beard)
    p["beard_t"] = rng.uniform(2.5, 5.5)
    p["moles"] = [
        (rng.uniform(28, 84), rng.uniform(64, 104), rng.uniform(0.7, 1.7))
        for _ in range(int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15])))
    ]
    p["freckles"] = (
        rng.uniform([34, 60], [78, 84], (int(rng.integers(12, 30)), 2)) if rng.random() < 0.2 else None
    )
    p["blush"] = rng.uniform(0.0, 0.35) if rng.random() < 0.4 else 0.0
    p["folds"] = p["age"] * rng.uniform(0.5, 1.0)
    p["cheek_scar"] = (
        (rng.uniform(28, 44), rng.uniform(70, 92), rng.uniform(-1, 1) * 0.6, rng.uniform(5, 10))
        if rng.random() < 0.1
        else None
    )
    # stubble dots fixed per identity so the beard texture is part of who someone is
    if p["beard"] == 4:
        p["stubble"] = rng.uniform([30, 80], [82, 112], (260, 2))
    p["cheekbone"] = (rng.uniform(19, 25), rng.uniform(72, 80), rng.uniform(0.0, 0.09))
    p["_contour"], p["_jaw"] = _face_contour(p, 0.0)
    if p["beard"] == 4:  # keep the stubble on the jaw
        jaw = (p["_jaw"] + (_CX, 0.0)).astype(np.float32)
        inside = [cv2.pointPolygonTest(jaw, (float(x), float(y)), False) >= 0 for x, y in p["stubble"]]
        p["stubble"] = p["stubble"][np.asarray(inside, dtype=bool)]
    return p


def _image_params(p: dict, rng: np.random.Generator) -> dict:
    """Per-image variation: pose, expression, lighting, noise."""
    q: dict = {}
    angle = float(np.clip(rng.normal(0, 5.0), -11, 11))
    scale = rng.uniform(0.93, 1.07)
    tx, ty = rng.uniform(-2.5, 2.5, 2)
    squeeze = rng.uniform(0.92, 1.0)  # a turned head looks narrower
    m = cv2.getRotationMatrix2D((_CX, 62.0), angle, scale)
    m[:, 2] += (tx, ty)
    q["M"] = m @ np.array([[squeeze, 0.0, (1 - squeeze) * _CX], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q["yaw"] = rng.uniform(-4.0, 4.0)
    q["smile"] = rng.uniform(-0.3, 1.0)
    q["open"] = rng.uniform(0.5, 5.5) if rng.random() < 0.3 else 0.0
    q["brow_raise"] = rng.uniform(-1.5, 3.0)
    q["eye_open"] = rng.uniform(0.55, 1.1)
    q["gaze"] = rng.uniform(-1.2, 1.2, 2)
    q["bg"] = rng.uniform(30, 230, 3)
    q["bg2"] = rng.uniform(30, 230, 3)
    q["gain"] = rng.uniform(0.72, 1.22)
    q["cast"] = rng.uniform(0.88, 1.12, 3)
    q["light_dir"] = rng.normal(0, 1, 2)
    q["light_amp"] = rng.uniform(0.0, 0.45)
    q["gray"] = rng.random() < 0.08  # some cameras and photos are monochrome
    q["blur"] = rng.uniform(0.0, 1.3)
    q["noise"] = rng.uniform(2.0, 9.0)
    q["noise_at"] = rng.integers(0, _NOISE.shape[0] - IMAGE_SIZE, 2)
    q["hair_shift"] = rng.uniform(-1.5, 1.5)
    return q


def _feature_points(p: dict, q: dict) -> dict:
    """Canonical (pre-pose) positions of the eyes, nose tip and mouth corners of one image."""
    le = np.array([ARCFACE_KPS[0, 0] - p["eye_spread"], ARCFACE_KPS[0, 1] + p["eye_dy"]])
    re = np.array([ARCFACE_KPS[1, 0] + p["eye_spread"], ARCFACE_KPS[1, 1] + p["eye_dy"]])
    nose = np.array([ARCFACE_KPS[2, 0], ARCFACE_KPS[2, 1] + p["nose_dy"]])
    my = (ARCFACE_KPS[3, 1] + ARCFACE_KPS[4, 1]) / 2 + p["mouth_dy"] - 2.8 * q["smile"]
    half = p["mouth_w"] + 1.5 * max(q["smile"], 0.0)
    ml = np.array([_CX - half, my])
    mr = np.array([_CX + half, my])
    return {"le": le, "re": re, "nose": nose, "ml": ml, "mr": mr}


def _draw_eye(img, p, q, c, side: int) -> None:
    tilt = p["eye_tilt"] * side
    ew, eh = p["eye_w"], p["eye_h"] * q["eye_open"]
    center, axes = _pt(*c), _pt(ew, eh)
    cv2.ellipse(img, center, axes, tilt, 0, 360, (228, 232, 236), -1, _AA, _SHIFT)
    g = q["gaze"]
    ir = p["iris_r"]
    ic = (c[0] + g[0], c[1] + g[1] * 0.4)
    ir_v = min(ir, eh * 0.95)
    cv2.ellipse(img, _pt(*ic), _pt(ir, ir_v), 0, 0, 360, p["iris"], -1, _AA, _SHIFT)
    cv2.ellipse(img, _pt(*ic), _pt(ir * 0.45, min(ir * 0.45, ir_v)), 0, 0, 360, (15, 15, 15), -1, _AA, _SHIFT)
    dark = _scale(p["skin"], 0.35)
    cv2.ellipse(img, center, axes, tilt, 180, 360, dark, p["lid"], _AA, _SHIFT)
    cv2.ellipse(img, center, axes, tilt, 10, 170, _scale(p["skin"], 0.7), 1, _AA, _SHIFT)
    if p["eye_bags"]:
        cv2.ellipse(
            img,
            _pt(c[0], c[1] + 2),
            _pt(ew * 0.9, eh + 2.5),
            tilt,
            30,
            150,
            _scale(p["skin"], 0.8),
            1,
            _AA,
            _SHIFT,
        )


def _draw_brow(img, p, q, c, side: int) -> None:
    inner = c[0] + side * (-p["eye_w"] + 2.0 - p["brow_gap"])
    x = inner + side * np.linspace(0, p["brow_len"], 5)
    base = c[1] - p["brow_h"] - q["brow_raise"]
    t = np.linspace(0, 1, 5)
    y = base - p["brow_arch"] * np.sin(t * math.pi * 0.9) + p["brow_slant"] * (t - 0.5)
    pts = _fx(np.stack([x, y], 1))
    cv2.polylines(img, [pts], False, p["brow"], p["brow_t"], _AA, _SHIFT)


def _draw_hair_cap(img, p, q, cx: float) -> None:
    """Hair above the hairline, clipped to the head ellipse."""
    fw, fh, cy = p["face_w"] + 2.0, p["face_h"] + 3.0, 56.0
    xs = np.linspace(cx - fw, cx + fw, 25)
    u = np.clip(np.abs((xs - cx) / fw), 0.0, 1.0)
    hl = p["hairline"] + q["hair_shift"]
    ys = hl + (p["hair_side"] - hl) * u ** p["hair_pow"]
    if p["widow"]:
        ys += p["widow"] * np.clip(1 - np.abs(xs - cx) / 7.0, 0, None)
    # head top: the ellipse's upper arc
    ys_top = cy - fh * np.sqrt(np.clip(1 - ((xs - cx) / fw) ** 2, 0, 1))
    ys = np.maximum(ys, ys_top)
    if p["hair_style"] == 2:  # bald: only a band at the sides and back
        ys = np.minimum(ys, np.maximum(ys_top, cy - 6 + 30 * (1 - u) ** 0.5))
        ys_top = np.maximum(ys_top, cy - 10 - 10 * u)
        ys_top = np.minimum(ys_top, ys)
    if p["hair_style"] == 3:  # fringe: hair comes down over the forehead with a ragged edge
        fr = hl + p["fringe"] + 1.5 * np.sin(xs * 1.3)
        ys = np.where(u < 0.85, np.maximum(ys, fr), ys)
    poly = np.concatenate([np.stack([xs, ys], 1), np.stack([xs[::-1], ys_top[::-1]], 1)])
    cv2.fillPoly(img, [_fx(poly)], p["hair"], _AA, _SHIFT)


def _draw_mouth(img, p, q, f) -> None:
    ml, mr = f["ml"], f["mr"]
    my = (ml[1] + mr[1]) / 2
    half = (mr[0] - ml[0]) / 2
    cx = (ml[0] + mr[0]) / 2
    curve = p["mouth_curve"] + 2.5 * q["smile"]  # positive: centre line lower than the corners (smile)
    ut, lt, op = p["upper_lip"], p["lower_lip"], q["open"]
    xs = np.linspace(-1, 1, 9)
    line_y = my + curve * (1 - xs**2)
    # upper lip: from corner over the cupid's bow back along the lip line
    top = line_y - ut * (1 - xs**2) ** 0.6 + p["bow"] * np.exp(-((xs / 0.12) ** 2))
    upper = np.concatenate(
        [np.stack([cx + half * xs, top], 1), np.stack([cx + half * xs[::-1], line_y[::-1]], 1)]
    )
    low_line = line_y + op * (1 - xs**2) ** 0.8
    bottom = low_line + lt * (1 - xs**2) ** 0.7
    lower = np.concatenate(
        [np.stack([cx + half * xs, low_line], 1), np.stack([cx + half * xs[::-1], bottom[::-1]], 1)]
    )
    if op > 0.3:
        inner = np.concatenate(
            [np.stack([cx + half * xs, line_y], 1), np.stack([cx + half * xs[::-1], low_line[::-1]], 1)]
        )
        cv2.fillPoly(img, [_fx(inner)], (30, 25, 45), _AA, _SHIFT)
        teeth = np.stack([cx + half * 0.6 * xs, line_y + min(op, 2.0) * (1 - xs**2)], 1)
        cv2.polylines(img, [_fx(teeth)], False, (215, 225, 230), 1, _AA, _SHIFT)
    cv2.fillPoly(img, [_fx(upper)], p["lip"], _AA, _SHIFT)
    cv2.fillPoly(img, [_fx(lower)], _scale(p["lip"], 1.08), _AA, _SHIFT)
    cv2.polylines(
        img, [_fx(np.stack([cx + half * xs, line_y], 1))], False, _scale(p["lip"], 0.45), 1, _AA, _SHIFT
    )


def _draw_nose(img, p, f) -> None:
    n = f["nose"]
    shade = _scale(p["skin"], p["bridge_shade"])
    bw = p["bridge_w"]
    top_y = f["le"][1] + 2.0
    for s in (-1, 1):
        pts = np.array(
            [
                [n[0] + s * bw * 0.6, top_y],
                [n[0] + s * bw * 0.8, (top_y + n[1]) / 2],
                [n[0] + s * (p["nose_w"] - 0.5), n[1] - 1.5],
            ]
        )
        cv2.polylines(img, [_fx(_chaikin(pts, iterations=1))], False, shade, 1, _AA, _SHIFT)
        cv2.ellipse(
            img,
            _pt(n[0] + s * p["nose_w"] * 0.85, n[1] + 1.0),
            _pt(p["nose_w"] * 0.4, 2.6),
            0,
            90 - s * 90,
            270 - s * 90 if s > 0 else 360,
            _scale(p["skin"], 0.72),
            1,
            _AA,
            _SHIFT,
        )
        cv2.ellipse(
            img,
            _pt(n[0] + s * p["nose_w"] * 0.45, n[1] + 2.2),
            _pt(p["nostril"], p["nostril"] * 0.6),
            s * 20,
            0,
            360,
            _scale(p["skin"], 0.38),
            -1,
            _AA,
            _SHIFT,
        )
    tip = _scale(p["skin"], 1.06)
    if p["nose_col"] is not None:
        tip = tuple(min(255.0, c * k) for c, k in zip(tip, p["nose_col"]))
    cv2.ellipse(
        img, _pt(n[0], n[1] - 0.5), _pt(p["nose_tip"], p["nose_tip"] * 0.8), 0, 0, 360, tip, -1, _AA, _SHIFT
    )


def _draw_beard(img, p, f, contour_lower: np.ndarray, cx: float) -> None:
    style = p["beard"]
    col = p["beard_col"]
    ml, mr = f["ml"], f["mr"]
    my = (ml[1] + mr[1]) / 2
    if style in (1, 3):  # moustache (also part of the full beard)
        t = p["beard_t"]
        pts = np.array(
            [
                [ml[0] - 1.5, my + 1.5],
                [ml[0] + 2, my - t - 1],
                [_CX, my - t - 2.5 - p["upper_lip"]],
                [mr[0] - 2, my - t - 1],
                [mr[0] + 1.5, my + 1.5],
                [_CX, my - p["upper_lip"] - 0.5],
            ]
        )
        cv2.fillPoly(img, [_fx(_chaikin(pts, closed=True, iterations=1))], col, _AA, _SHIFT)
    if style == 2:  # goatee
        cv2.ellipse(
            img,
            _pt(_CX, my + p["lower_lip"] + 7),
            _pt(7 + p["beard_t"], 6 + p["beard_t"]),
            0,
            0,
            360,
            col,
            -1,
            _AA,
            _SHIFT,
        )
    if style == 3:  # full beard: the jaw below the mouth line
        keep = contour_lower[contour_lower[:, 1] > my - 8]
        # the jaw runs right -> chin -> left; close it left -> right under the lower lip
        top = np.array([[ml[0] - 3, my - 3], [_CX, my + p["lower_lip"] + 2], [mr[0] + 3, my - 3]])
        poly = np.concatenate([keep, top])
        cv2.fillPoly(img, [_fx(poly)], col, _AA, _SHIFT)
    if style == 4:  # stubble: a shadow over the jaw and fine dots
        over = img.copy()
        keep = contour_lower[contour_lower[:, 1] > my - 2]
        top = np.array([[ml[0] - 4, my - 2], [_CX, my - p["upper_lip"] - 3], [mr[0] + 4, my - 2]])
        cv2.fillPoly(over, [_fx(np.concatenate([keep, top]))], col, _AA, _SHIFT)
        cv2.addWeighted(over, 0.3, img, 0.7, 0, dst=img)
        dot = _mix(p["skin"], col, 0.75)
        _dots(img, p["stubble"] + (cx - _CX, 0.0), dot, 0.8)


def _face_contour(p: dict, cx: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed head outline (upper ellipse + jaw) and its lower (jaw) part, centred on ``cx``."""
    fw, fh, cy = p["face_w"], p["face_h"], 56.0
    a = np.linspace(math.pi, 2 * math.pi, 19)
    upper = np.stack([cx + fw * np.cos(a), cy + fh * np.sin(a)], 1)
    jw, cw, chin = p["jaw_w"], p["chin_w"], p["chin_y"]
    jaw = np.array(
        [
            [cx + fw, cy + 2],
            [cx + jw, 86.0],
            [cx + cw, chin - 4.5],
            [cx, chin],
            [cx - cw, chin - 4.5],
            [cx - jw, 86.0],
            [cx - fw, cy + 2],
        ]
    )
    jaw = _chaikin(jaw, iterations=2)
    return np.concatenate([upper, jaw]), jaw


def _render(p: dict, q: dict) -> np.ndarray:
    size = IMAGE_SIZE
    img = np.empty((size, size, 3), dtype=np.uint8)
    # background: a vertical blend of two colours
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img[:] = (q["bg"] * (1 - t) + q["bg2"] * t).astype(np.uint8)
    cx = _CX - q["yaw"]  # the head outline moves against the (aligned) features when the head turns
    f = _feature_points(p, q)
    skin = p["skin"]
    contour, jaw = p["_contour"] + (cx, 0.0), p["_jaw"] + (cx, 0.0)
    if p["hair_style"] == 1:  # long hair behind the head
        cv2.ellipse(
            img, _pt(cx, 70), _pt(p["face_w"] + 9, 62), 0, 0, 360, _scale(p["hair"], 0.85), -1, _AA, _SHIFT
        )
    cv2.rectangle(img, _pt(cx - 20, 90), _pt(cx + 20, 120), _scale(skin, 0.8), -1, _AA, _SHIFT)
    for s in (-1, 1):
        cv2.ellipse(
            img, _pt(cx + s * p["face_w"], 60), _pt(5, 10), 0, 0, 360, _scale(skin, 0.93), -1, _AA, _SHIFT
        )
    cv2.fillPoly(img, [_fx(contour)], skin, _AA, _SHIFT)
    _draw_hair_cap(img, p, q, cx)
    if p["hair_style"] == 1:  # strands down the sides of the face
        for s in (-1, 1):
            pts = np.array(
                [
                    [cx + s * (p["face_w"] - 8), 24],
                    [cx + s * (p["face_w"] - 3), 45],
                    [cx + s * (p["face_w"] - 1), 85],
                    [cx + s * (p["face_w"] + 8), 95],
                ]
            )
            cv2.polylines(img, [_fx(_chaikin(pts))], False, _scale(p["hair"], 0.85), 4, _AA, _SHIFT)
    # forehead
    for k in range(p["wrinkles"]):
        y = f["le"][1] - p["brow_h"] - 7 - 3.5 * k
        cv2.ellipse(img, _pt(_CX, y + 8), _pt(13 - k, 8), 0, 220, 320, _scale(skin, 0.82), 1, _AA, _SHIFT)
    if p["forehead_mole"] is not None:
        cv2.circle(img, _pt(*p["forehead_mole"]), _ONE * 3 // 2, _scale(skin, 0.45), -1, _AA, _SHIFT)
    # lower face marks (drawn before nose/mouth so those stay on top)
    cx_b, cy_b, depth = p["cheekbone"]
    if depth > 0.04:  # cheekbone shadows
        for sgn in (-1, 1):
            cv2.ellipse(
                img,
                _pt(cx + sgn * cx_b, cy_b),
                _pt(6, 10),
                -sgn * 25,
                0,
                360,
                _scale(skin, 1 - depth),
                -1,
                _AA,
                _SHIFT,
            )
    if p["blush"] > 0:
        over = img.copy()
        for s in (-1, 1):
            cv2.ellipse(over, _pt(_CX + s * 22, 76), _pt(8, 5), 0, 0, 360, (90, 90, 230), -1, _AA, _SHIFT)
        cv2.addWeighted(over, p["blush"], img, 1 - p["blush"], 0, dst=img)
    if p["freckles"] is not None:
        _dots(img, p["freckles"], _scale(skin, 0.6), 0.8)
    if p["birthmark"] is not None:
        x, y, a, b, ang, dark = p["birthmark"]
        cv2.ellipse(img, _pt(x, y), _pt(a, b), ang, 0, 360, _scale(skin, dark), -1, _AA, _SHIFT)
    if p["chin_cleft"]:
        cv2.line(img, _pt(_CX, p["chin_y"] - 7), _pt(_CX, p["chin_y"] - 2), _scale(skin, 0.7), 1, _AA, _SHIFT)
    for x, y, r in p["moles"]:
        cv2.circle(img, _pt(x, y), int(r * _ONE), _scale(skin, 0.4), -1, _AA, _SHIFT)
    if p["cheek_scar"] is not None:
        x, y, slope, length = p["cheek_scar"]
        cv2.line(img, _pt(x, y), _pt(x + length, y + slope * length), _scale(skin, 1.15), 1, _AA, _SHIFT)
    if p["folds"] > 0.25:
        shade = _scale(skin, 1 - 0.25 * p["folds"])
        for s in (-1, 1):
            pts = np.array(
                [
                    [_CX + s * (p["nose_w"] + 2.5), f["nose"][1] + 1],
                    [_CX + s * (p["nose_w"] + 6), (f["nose"][1] + f["ml"][1]) / 2 + 2],
                    [_CX + s * (p["mouth_w"] + 4), f["ml"][1] + 3],
                ]
            )
            cv2.polylines(img, [_fx(_chaikin(pts))], False, shade, 1, _AA, _SHIFT)
    _draw_beard(img, p, f, jaw, cx)
    _draw_nose(img, p, f)
    _draw_mouth(img, p, q, f)
    # upper face features
    for c, s in ((f["le"], -1), (f["re"], 1)):
        _draw_eye(img, p, q, c, s)
        _draw_brow(img, p, q, c, s)
    if p["glasses"]:
        for c in (f["le"], f["re"]):
            if p["glasses_shape"] == 0:
                cv2.circle(img, _pt(*c), int(11.5 * _ONE), p["glasses_col"], 1, _AA, _SHIFT)
            else:
                cv2.rectangle(
                    img, _pt(c[0] - 12, c[1] - 7), _pt(c[0] + 12, c[1] + 7), p["glasses_col"], 1, _AA, _SHIFT
                )
        cv2.line(
            img,
            _pt(f["le"][0] + 11, f["le"][1] - 1),
            _pt(f["re"][0] - 11, f["re"][1] - 1),
            p["glasses_col"],
            1,
            _AA,
            _SHIFT,
        )
    # pose
    img = cv2.warpAffine(img, q["M"], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # lighting: gain, colour cast and a directional gradient
    d = q["light_dir"] / (np.linalg.norm(q["light_dir"]) + 1e-6)
    field = q["gain"] * (1.0 + q["light_amp"] * (d[0] * _XX + d[1] * _YY))
    if q["gray"]:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = img.astype(np.float32)
    out *= field[..., None]
    out *= q["cast"].astype(np.float32)
    if q["blur"] > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), q["blur"])
    y0, x0 = q["noise_at"]
    out += _NOISE[y0 : y0 + size, x0 : x0 + size] * np.float32(q["noise"])
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


class SyntheticFaces(FaceDataset):
    """``num_identities`` x ``images_per_identity`` procedurally drawn aligned 112x112 faces.

    Image ``i`` shows identity ``i // images_per_identity``; it depends only on ``(seed, i)``.
    ``keypoints(i)`` returns its 5 points (ArcFace template order) after the image's pose.
    """

    kind = "synthetic faces"

    def __init__(self, num_identities: int, images_per_identity: int, seed: int = 0):
        if int(num_identities) < 1 or int(images_per_identity) < 1:
            raise ValueError("num_identities and images_per_identity must be positive")
        super().__init__(f"synthetic:{int(num_identities)}:{int(images_per_identity)}:{int(seed)}")
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.labels = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.images_per_identity)
        self.num_classes = self.num_identities
        self._ids: dict[int, dict] = {}

    def _params(self, index: int) -> tuple[dict, dict]:
        identity, k = divmod(index, self.images_per_identity)
        p = self._ids.get(identity)
        if p is None:
            p = self._ids[identity] = _identity(self.seed, identity)
        rng = np.random.default_rng((self.seed, identity, k, 0x1A))
        return p, _image_params(p, rng)

    def keypoints(self, index) -> np.ndarray:
        """The 5 facial points (eyes, nose tip, mouth corners) of image ``index``, float32 5x2."""
        i = self._check_index(index)
        p, q = self._params(i)
        f = _feature_points(p, q)
        pts = np.stack([f["le"], f["re"], f["nose"], f["ml"], f["mr"]])
        return (pts @ q["M"][:, :2].T + q["M"][:, 2]).astype(np.float32)

    def _load(self, index: int) -> np.ndarray:
        return _render(*self._params(index))

    def describe(self) -> str:
        return (
            f"synthetic faces (seed {self.seed}): {self.num_identities} identities x "
            f"{self.images_per_identity} images = {len(self)} images"
        )
