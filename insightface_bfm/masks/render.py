"""Per-image mask renderer: numpy and cv2 only (the inference path never imports torch).

``render_mask(image, kps, style)`` draws one mask on one face. Everything is computed only in
the box the mask can touch, from per-pixel face coordinates (see ``geometry``), so a 112x112
aligned crop and a face in a 4000x3000 photo cost the same. Face coordinates of a given set
of points are cached, which makes aligned crops (all on the ArcFace template) cheap.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict

import cv2
import numpy as np

from ..errors import ImageError
from ..imaging import check_image
from . import appearance as look
from . import geometry as geo
from . import textures
from .styles import ALL_TYPES, SKIN_GRAIN, MaskStyle, random_style

# numpy's clip ufunc itself: np.clip wraps it in a few microseconds of Python-level checks per
# call, a tenth of a render here (the same floats; np.clip where numpy does not expose it)
_clip = getattr(getattr(getattr(np, "_core", None), "umath", None), "clip", np.clip)

_COORD_CACHE: OrderedDict = OrderedDict()
_COORD_CACHE_SIZE = 16
_COORD_LOCK = threading.Lock()
# validated points, their frame and mask boxes, per (points, image size): aligned crops all share
# the template's, so a render skips the scalar set-up (a third of a 112x112 render's time)
_FRAME_CACHE: OrderedDict = OrderedDict()
_FRAME_CACHE_SIZE = 64


def check_kps(kps, image_shape, name: str = "kps") -> np.ndarray:
    """Validate 5 facial points (x, y) against an image of ``image_shape``; returns float64 5x2."""
    try:
        pts = np.asarray(kps, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: expected 5x2 numeric points (x, y), got {type(kps).__name__}") from None
    if pts.shape == (10,):
        pts = pts.reshape(5, 2)
    if pts.shape != (5, 2):
        raise ImageError(
            f"{name}: expected insightface's 5 points as a 5x2 array (eyes, nose tip, mouth corners), "
            f"got shape {pts.shape}"
        )
    if not np.isfinite(pts).all():
        raise ImageError(f"{name}: points contain NaN or infinity: {pts.tolist()}")
    h, w = image_shape[:2]
    outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
    if outside.any():
        bad = [f"#{i} ({pts[i, 0]:.1f}, {pts[i, 1]:.1f})" for i in np.flatnonzero(outside)]
        raise ImageError(f"{name}: points {', '.join(bad)} lie outside the {w}x{h} image")
    return pts


def _frame(pts: np.ndarray, name: str) -> geo.FaceFrame:
    with np.errstate(all="ignore"):  # degenerate points are reported below, not warned about
        frame = geo.face_frame(np, pts)
    frame = geo.FaceFrame(*(float(getattr(frame, k)) for k in (
        "cx", "cy", "ax", "ay", "nose_u", "depth", "w_left", "w_right", "nose_v")))
    iod = float(np.hypot(*(pts[1] - pts[0])))
    if not (frame.depth > 0.2 * iod and frame.depth > 1.0 and iod > 1.0 and np.isfinite(frame.nose_v)):
        raise ImageError(
            f"{name}: degenerate points (eye distance {iod:.1f} px, eye-to-mouth {frame.depth:.1f} px); "
            "expected left eye, right eye, nose tip, left and right mouth corner"
        )
    return frame


class _Face:
    """Validated points of one face in one image size, its frame and its mask boxes (cached)."""

    def __init__(self, pts, frame):
        self.pts, self.frame = pts, frame
        self.boxes = {}  # envelope (top, bottom, width) -> pixel box or None


def _face(kps, image_shape) -> _Face:
    """``check_kps`` and ``_frame``, once per (points, image size)."""
    key = None
    if isinstance(kps, np.ndarray) and kps.dtype.kind == "f" and kps.size == 10:
        key = (kps.dtype.str, kps.tobytes(), image_shape[0], image_shape[1])
        with _COORD_LOCK:
            hit = _FRAME_CACHE.get(key)
            if hit is not None:
                _FRAME_CACHE.move_to_end(key)
                return hit
    pts = check_kps(kps, image_shape).copy()  # a copy: the caller's array stays writeable
    face = _Face(pts, _frame(pts, "kps"))
    pts.flags.writeable = False
    if key is not None:
        with _COORD_LOCK:
            _FRAME_CACHE[key] = face
            if len(_FRAME_CACHE) > _FRAME_CACHE_SIZE:
                _FRAME_CACHE.popitem(last=False)
    return face


# the per-pixel maps a render reads (``_FaceMaps``, ``_Band``, ``_Rows``)
_PER_PIXEL = ("u", "v", "w", "au", "uu", "below2", "surface", "seam", "u_clip", "v64", "surface64")
# a band's columns are rounded out to multiples of this: a few bands serve every style
_BAND_STEP = 8
_BAND_MAX_PIXELS = 160 * 160


class _Grid:
    """Per-pixel maps over a box, and their bands of rows (views; cached)."""

    def rows(self, sy: slice) -> _Rows:
        key = (sy.start, sy.stop)
        hit = self._rows.get(key)
        if hit is None:
            hit = self._rows[key] = _Rows(self, sy)
        return hit


class _FaceMaps(_Grid):
    """Everything per-pixel that depends on the face and the box but not on the style.

    Cached per (points, box): aligned crops all share the template points and, thanks to the
    envelope box, one entry, so a render only computes the style's own terms. A render works on
    the rows of a band of columns of these maps, held as C-contiguous copies: numpy runs about
    twice as fast on contiguous rows as on sub-box views (pixels the mask does not reach keep theirs).
    """

    def __init__(self, frame, box):
        x0, y0, x1, y1 = box
        self.xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        self.ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        u, v, w = geo.face_coords(np, frame, self.xs, self.ys)
        self.u, self.v, self.w = u.astype(np.float32), v.astype(np.float32), w.astype(np.float32)
        self.au = np.abs(self.u)
        self.uu = self.u * self.u
        below = np.maximum(self.v - 1.0, 0.0)
        self.below2 = below * below  # for the jaw narrowing
        self.surface = look.surface(np, frame, self.u, self.v).astype(np.float32)
        self.seam = look.centre_seam(np, frame, self.u, self.w).astype(np.float32)
        self.u_clip = np.clip(self.u, -1.0, 1.0)
        # float64 twins of the maps that meet float64 terms (exact copies: mixed-type numpy
        # operations convert on the fly, at twice the cost)
        self.v64, self.surface64 = self.v.astype(np.float64), self.surface.astype(np.float64)
        # each row's range of v and each column's range of u: the rows and columns an outline can
        # reach (``_own_window``); as lists, for bisect where they rise (upright faces)
        self.v_lo, self.v_hi = self.v.min(1).tolist(), self.v.max(1).tolist()
        self.u_lo, self.u_hi = self.u.min(0).tolist(), self.u.max(0).tolist()
        self.upright = all(_rising(r) for r in (self.v_lo, self.v_hi, self.u_lo, self.u_hi))
        self.sx = slice(0, len(self.u_lo))
        self._rows, self._bands = {}, {}
        window = geo.cheek_window(np, self.u, self.v)
        self.left = (window & (self.u < 0)).astype(np.float32)
        self.right = (window & (self.u >= 0)).astype(np.float32)
        self.n_left, self.n_right = float(self.left.sum()), float(self.right.sum())
        # the cheeks' box and (left, right) weights: both sums of grey levels in one matrix product,
        # exact (so equal to numpy's sums) while they stay below 2**24; else None (the sums)
        self.cheeks = self.cheek_weights = None
        if 0 < min(self.n_left, self.n_right) and 255 * max(self.n_left, self.n_right) < 2**24:
            rows, cols = np.nonzero(window)
            self.cheeks = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            weights = [side[self.cheeks].ravel() for side in (self.left, self.right)]
            self.cheek_weights = np.stack(weights, 1)

    def band(self, sx: slice) -> _Grid:
        """The maps of columns ``sx`` (cached; all of them, these maps, for faces larger than crops:
        their bands would take much memory and rarely serve twice)."""
        if sx == self.sx or self.u.size > _BAND_MAX_PIXELS:
            return self
        key = (sx.start, sx.stop)
        hit = self._bands.get(key)
        if hit is None:
            hit = self._bands[key] = _Band(self, sx)
        return hit


def _rising(values) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


class _Band(_Grid):
    """Columns ``sx`` of a ``_FaceMaps``: the same per-pixel maps, as contiguous copies."""

    def __init__(self, maps, sx):
        self.sx = sx
        self.xs, self.ys = maps.xs[:, sx], maps.ys
        for name in _PER_PIXEL:
            setattr(self, name, np.ascontiguousarray(getattr(maps, name)[:, sx]))
        self._rows = {}


class _Rows:
    """A band of rows of a ``_FaceMaps`` or ``_Band``: the same per-pixel maps, sliced (contiguous)."""

    def __init__(self, grid, sy):
        self.xs, self.ys = grid.xs, grid.ys[sy]
        for name in _PER_PIXEL:
            setattr(self, name, getattr(grid, name)[sy])


def _outline_distance(maps, frame, shape):
    """``geometry.outline_distance`` from cached maps: the same operations in the same float
    types (the top edge is float64: ``top_centre`` is a float64 scalar), in place.
    tests/test_masks.py checks it equals the general formula bit for bit."""
    f32 = np.float32
    uu, au = maps.uu, maps.au
    if shape.shift:  # an off-centre occluder: its own u, not the cached one
        u = maps.u - f32(shape.shift)
        uu, au = u * u, np.abs(u)
    top = np.multiply(uu, f32(shape.top_curve)).astype(np.float64)
    top += shape.top_centre(np, frame)
    if shape.top_point:
        top += np.multiply(au, f32(shape.top_point))
    d = np.subtract(maps.v64, top, out=top)
    d *= frame.depth
    bottom = np.multiply(uu, f32(shape.bottom_curve))
    np.subtract(f32(shape.bottom), bottom, out=bottom)
    if shape.bottom_point:
        bottom -= np.multiply(au, f32(shape.bottom_point))
    d_bottom = np.subtract(bottom, maps.v, out=bottom)
    d_bottom *= f32(frame.depth)
    side = np.multiply(maps.below2, f32(shape.width * shape.jaw))
    np.subtract(f32(shape.width), side, out=side)
    side -= au
    side *= maps.w
    # min(top, bottom, side): the two float32 ones first (exact either way)
    np.minimum(d_bottom, side, out=side)
    return np.minimum(d, side, out=d)


def _face_maps(pts, frame, box) -> _FaceMaps:
    key = (pts.tobytes(), box)
    with _COORD_LOCK:  # renderers may run in threads (data loaders)
        hit = _COORD_CACHE.get(key)
        if hit is not None:
            _COORD_CACHE.move_to_end(key)
            return hit
    hit = _FaceMaps(frame, box)  # read-only once built: safe to share
    with _COORD_LOCK:
        _COORD_CACHE[key] = hit
        if len(_COORD_CACHE) > _COORD_CACHE_SIZE:
            _COORD_CACHE.popitem(last=False)
    return hit


def _shape(style: MaskStyle) -> geo.MaskShape:
    return geo.MaskShape(style.top, style.top_curve, style.top_point, style.bottom, style.bottom_curve,
                         style.bottom_point, style.width, style.jaw, style.shift)


def _as_style(style, rng) -> MaskStyle:
    if style is None:
        return random_style(rng)
    if isinstance(style, MaskStyle):
        return style
    if isinstance(style, dict):
        return MaskStyle.from_dict(style)
    if isinstance(style, str) and style in ALL_TYPES:
        return random_style(rng, types=[style])
    raise ValueError(f"style: expected a MaskStyle, its dict, a mask type name or None, got {style!r}")


def _noise_print(rng: np.random.Generator, u, v):
    """Smooth two-octave noise sampled at face coordinates (follows the mask, not the image)."""
    out = None
    for cells, amp in ((6, 1.0), (13, 0.5)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32) * amp
        mx = (u + 1.4) * ((cells - 1) / 2.8)
        my = (v - 0.1) * ((cells - 1) / 1.8)
        sample = cv2.remap(grid, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out = sample if out is None else out + sample
    return out


def render_mask(image, kps, style=None, rng=None):
    """Draw a mask on the face with 5 points ``kps``; returns ``(masked_bgr, region)``.

    ``image``: uint8 HxWx3 BGR (left untouched); ``kps``: 5x2 (left eye, right eye, nose tip,
    left and right mouth corner), from a detector or ``imaging.ARCFACE_KPS`` for aligned crops.
    ``style``: a ``MaskStyle`` (or its dict, or a type name); None draws one with ``rng``
    (a ``numpy.random.Generator``, a seed or None). ``region`` is a bool HxW map of the mask
    (and its loops). The same image, points and style always give the same output.
    """
    img = check_image(image, "image")
    face = _face(kps, img.shape)
    pts, frame = face.pts, face.frame
    style = _as_style(style, rng)
    shape = _shape(style)

    h, w = img.shape[:2]
    out = img.copy()
    region_u8 = np.zeros((h, w), dtype=np.uint8)
    # one box for every style (the envelope of all random styles) keeps the face cache warm
    reach = style.width + abs(style.shift) + (0.6 if style.type == "hand" else 0.0)  # a palm runs on
    envelope = geo.MaskShape(min(style.top, 0.2), 0, 0, max(style.bottom, 2.0), 0, 0, max(reach, 1.25), 0)
    box_key = (envelope.top, envelope.bottom, envelope.width)
    box = face.boxes.get(box_key, False)
    if box is False:
        box = face.boxes[box_key] = _mask_box(frame, envelope, w, h)
    if box is None:
        return out, region_u8.view(bool)
    x0, y0, x1, y1 = box
    maps = _face_maps(pts, frame, box)
    # Only the pixels the mask covers change (elsewhere the blend below leaves every pixel as it
    # was), so the mask is drawn in the rows its outline can reach, inside the envelope's box.
    sy, sx = _own_window(maps, frame, style)
    band = maps.band(sx)
    sx = band.sx  # (all columns for big faces)
    win = band.rows(sy)
    inside = _inside(win, frame, shape, style)
    a_mask = _coverage(inside)
    if _touches_edge(a_mask, sy, sx, y1 - y0, x1 - x0):  # never seen; the whole envelope box, to be safe
        sy, sx = slice(0, y1 - y0), slice(0, x1 - x0)
        win = maps.rows(sy)
        inside = _inside(win, frame, shape, style)
        a_mask = _coverage(inside)

    # the face's exposure and side light, measured on the cheeks the mask will cover
    roi = img[y0:y1, x0:x1]
    rh, rw = roi.shape[:2]
    nl, nr = maps.n_left, maps.n_right
    if maps.cheeks is not None:
        gray = cv2.cvtColor(roi[maps.cheeks], cv2.COLOR_BGR2GRAY).astype(np.float32)
        sum_l, sum_r = gray.reshape(-1) @ maps.cheek_weights
        luma_l, luma_r = float(sum_l) / nl, float(sum_r) / nr
        cheek = (luma_l * nl + luma_r * nr) / (nl + nr)
    else:
        gray = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY).astype(np.float32)
        luma_l = float((gray * maps.left).sum()) / nl if nl else float(gray.mean())
        luma_r = float((gray * maps.right).sum()) / nr if nr else float(gray.mean())
        cheek = (luma_l * nl + luma_r * nr) / (nl + nr) if nl + nr else float(gray.mean())
    # look.brightness_gain and look.side_light on plain floats (the same arithmetic, no numpy calls)
    gain = min(max((cheek / look.REFERENCE_LUMA) ** 0.85, 0.25), 1.2)
    slope = 1.4 * (luma_r - luma_l) / (luma_r + luma_l + 1.0)

    # straps first (under the mask), drawn anti-aliased by cv2 on the whole image
    if style.straps_visible:
        loops = 1.0 if style.loops else 0.0
        base = style.colors[0]
        strap_color = (225.0,) * 3 if style.type == "surgical" else [c * 0.85 + 30.0 for c in base]
        thickness = max(1, int(geo.strap_thickness(frame, loops)))
        lit_cols = []  # the left segments' colour (0, 1), then the right ones' (2, 3)
        for side in (-1.0, 1.0):
            lit = min(max(1.0 + slope * side, 0.5), 1.5)
            lit_cols.append([min(max(c * gain * lit, 0.0), 255.0) for c in strap_color])
        # the four segments in 1/16 pixels (np.rint rounds halves to even, as round() does);
        # polylines draws each as cv2.line would, in order
        segs = np.array(geo.strap_segments(frame, shape, loops)) * 16
        segs = np.rint(segs).astype(np.int32).reshape(4, 2, 2)
        for pair, col in zip((segs[:2], segs[2:]), lit_cols):
            cv2.polylines(out, list(pair), False, col, thickness, cv2.LINE_AA, 4)
        cv2.polylines(region_u8, list(segs), False, 1, thickness, cv2.LINE_8, 4)

    if style.shadow:  # on the skin (and straps) under the mask, before the mask goes on
        _contact_shadow(out, pts, frame, shape, style, envelope)
    u, v, wmap = win.u, win.v, win.w
    light = _side_light(win.u_clip, slope, gain)

    # the mask surface: base colour (or a two-colour print) x shading, plus fabric grain
    shade = _edge_band(frame, inside)
    shade *= win.surface64
    if style.pleats:
        shade *= look.pleat_folds(np, frame, shape, v)
    if style.seam:
        shade *= win.seam
    colors = style.colors
    if style.type == "hand":  # the face's own skin, folded into fingers
        shade *= look.finger_folds(np, frame, shape, v)
        colors = (_skin_colour(roi, maps, style.colors[0], gain), *style.colors[1:])
    elif style.type == "scarf":
        shade *= look.knit_ribs(np, frame, u, wmap)
    shade *= light
    pat = tex = None
    if style.pattern == "photo":  # a photographed mask stretched over the outline
        tx, ty = textures.texture_coords(np, frame, shape, u, v)
        rows, cols = textures.TEXTURE_SIZE
        map_x, map_y = (tx * (cols - 1)).astype(np.float32), (ty * (rows - 1)).astype(np.float32)
        tex = cv2.remap(textures.photo_textures()[style.texture], map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    elif style.pattern != "plain":
        cos_a, sin_a = geo.angle_vector(style.pattern_angle)
        r1, r2 = look.fabric_coords(u, v, wmap, frame.depth, cos_a, sin_a, style.pattern_scale)
        if style.pattern == "checks":
            pat = look.print_checks(np, r1, r2)
        elif style.pattern == "stripes":
            pat = look.print_stripes(np, r1, r2)
        elif style.pattern == "dots":
            pat = look.print_dots(np, r1, r2, style.pattern_scale * frame.depth)
        else:
            pat = look.print_noise(np, _noise_print(np.random.default_rng(style.seed), u, v))
    grain_scale = style.grain * (SKIN_GRAIN if style.type == "hand" else 1.0)
    grain = _grain(style.seed, rh, rw)[sy, sx] * grain_scale if grain_scale > 0 else None
    valve = None
    if style.valve:
        cx, cy = geo.valve_center(frame, shape, style.valve_side)
        radius = geo.valve_radius(frame)
        v_in = radius - np.sqrt((win.xs - cx) ** 2 + (win.ys - cy) ** 2)
        a_valve = geo.coverage(np, v_in) * a_mask
        valve = (a_valve, look.valve_shading(np, v_in, radius) * light)

    spec = look.specular_band(np, shape.centred(u), shape.width) if style.type == "object" else None
    sheen = style.sheen * look.sheen_lobe(np, u, v, luma_l, luma_r) if style.sheen else None
    # composite all three channels at once on planar (3, rows, columns) float64 maps, with the
    # per-channel arithmetic of one channel at a time (the same floats): layer = colour x shade
    # (+ grain, sheen, valve, highlight); f += (layer - f) * a_mask; clip(f + 0.5, 0, 255) as uint8
    if tex is not None:
        layer = np.multiply(tex.transpose(2, 0, 1), shade)
    elif pat is None:
        layer = np.multiply(_channels(colors[0], np.float64), shade)
    else:  # cb + (ca - cb) * pat in the print's float type, as with Python numbers
        layer = np.multiply(_channels([ca - cb for cb, ca in zip(*colors[:2])], pat.dtype), pat)
        layer += _channels(colors[0], pat.dtype)
        layer = np.multiply(layer, shade)
    if grain is not None:
        layer += grain.astype(np.float64)
    if sheen is not None:
        _blend_towards(layer, 250.0 * gain, sheen)
    if valve is not None:
        _blend_towards(layer, np.multiply(_channels(colors[2], valve[1].dtype), valve[1]), valve[0])
    if spec is not None:
        _blend_towards(layer, 250.0 * gain, spec)
    dst = out[y0:y1, x0:x1][sy, sx]
    f = dst.transpose(2, 0, 1).astype(np.float64)
    np.subtract(layer, f, out=layer)
    layer *= a_mask
    layer += f  # f + (layer - f) * a_mask in float64, then rounded to float32 as ``f +=`` does
    f = layer.astype(np.float32)
    f += 0.5
    _clip(f, np.float32(0), np.float32(255), out=f)
    # truncation as astype(np.uint8); cv2.merge interleaves the planes (numpy's strided copy
    # back into the BGR image is four times slower)
    dst[...] = cv2.merge(tuple(f.astype(np.uint8)))
    region_u8[y0:y1, x0:x1][sy, sx] |= (a_mask > 0.5).view(np.uint8)
    return out, region_u8.view(bool)


def _channels(values, dtype) -> np.ndarray:
    """Three per-channel numbers as a (3, 1, 1) array of ``dtype`` (a Python number meets a numpy
    array in the array's float type)."""
    return np.asarray(values, dtype=dtype).reshape(3, 1, 1)


def _blend_towards(layer, target, alpha):
    """``layer += (target - layer) * alpha`` in place."""
    step = np.subtract(target, layer)
    step *= alpha
    layer += step


def _coverage(inside):
    """``geometry.coverage`` in place of a fresh array: clip(inside + 0.5, 0, 1)."""
    a = np.add(inside, 0.5)
    return _clip(a, 0.0, 1.0, out=a)


def _side_light(u_clip, slope, gain):
    """``appearance.side_light(np, u, ...) * gain`` from the cached clip(u, -1, 1), on plain floats
    (Python numbers meet the float32 maps as float32)."""
    f32 = np.float32
    light = np.multiply(u_clip, f32(slope))
    light += f32(1.0)
    _clip(light, f32(0.5), f32(1.5), out=light)
    light *= f32(gain)
    return light


def _edge_band(frame, inside):
    """``appearance.edge_band`` in place of fresh arrays (the same float64 operations)."""
    band = np.divide(inside, 0.06 * frame.depth + 1.0)
    np.subtract(1.0, band, out=band)
    _clip(band, 0.0, 1.0, out=band)
    band *= 0.1
    return np.subtract(1.0, band, out=band)


def _own_window(maps, frame, style):
    """The rows and columns of ``maps`` (over the envelope box) that an outline can reach: rows
    whose v range meets [top, bottom] of the style and columns whose u range meets its reach, one
    pixel more each way (columns rounded out to ``_BAND_STEP``). The top and bottom edges only
    curve away from the face's middle (a hand's may rise at its sides: the whole box)."""
    full = slice(0, len(maps.v_lo)), maps.sx
    curves = (style.top_curve, style.top_point, style.bottom_curve, style.bottom_point)
    if style.type == "hand" or min(curves) < 0 or not maps.upright:
        return full
    pad = 0.02 + 1.0 / frame.depth
    # the rows (and columns) meeting a range are one run where the ranges rise: its ends by bisection
    start = bisect.bisect_left(maps.v_hi, style.top * frame.nose_v - pad)
    stop = bisect.bisect_right(maps.v_lo, style.bottom + pad)
    reach = style.width + 0.03 + 1.0 / min(frame.w_left, frame.w_right)
    left = bisect.bisect_left(maps.u_hi, style.shift - reach) // _BAND_STEP * _BAND_STEP
    right = min(-(-bisect.bisect_right(maps.u_lo, style.shift + reach) // _BAND_STEP) * _BAND_STEP,
                maps.sx.stop)
    if start >= stop or left >= right:
        return full
    return slice(start, stop), slice(left, right)


def _touches_edge(a_mask, sy, sx, n_rows, n_cols) -> bool:
    """Whether the coverage reaches a cut edge of its window (in a box of ``n_rows`` x ``n_cols``)."""
    return bool((sy.start > 0 and a_mask[0].any()) or (sy.stop < n_rows and a_mask[-1].any())
                or (sx.start > 0 and a_mask[:, 0].any()) or (sx.stop < n_cols and a_mask[:, -1].any()))


def _inside(maps, frame, shape, style):
    """Signed distance to the outline in pixels (positive inside), from a box's cached maps."""
    if style.type == "hand":
        return geo.hand_distance(np, frame, shape, style.valve_side, maps.u, maps.v, maps.w)
    return _outline_distance(maps, frame, shape)


def _contact_shadow(out, pts, frame, shape, style, envelope):
    """Darken the skin around the outline in place (``appearance.contact_shadow``), over the mask's
    box grown by the shadow's reach; the mask's own box (and so its grain) stays the same."""
    grown = geo.MaskShape(envelope.top, 0, 0, envelope.bottom + 0.25, 0, 0, envelope.width + 0.25, 0)
    box = _mask_box(frame, grown, out.shape[1], out.shape[0])
    if box is None:
        return
    x0, y0, x1, y1 = box
    maps = _face_maps(pts, frame, box)
    skin = look.contact_shadow(np, frame, _inside(maps, frame, shape, style), maps.v, style.shadow)
    skin = skin.astype(np.float32)
    roi = out[y0:y1, x0:x1]
    roi[:] = np.clip(roi.astype(np.float32) * skin[:, :, None] + 0.5, 0, 255).astype(np.uint8)


def _skin_colour(roi, maps, tone, gain) -> tuple[float, float, float]:
    """A hand's colour from the cheeks of this face (``appearance.skin_colour``); the style's palette
    tone itself where no cheek is in the image."""
    window = maps.left + maps.right
    n = float(window.sum())
    if n == 0:
        return tuple(float(c) for c in tone)
    cheeks = [float((roi[:, :, c].astype(np.float32) * window).sum()) / n for c in range(3)]
    return tuple(look.skin_colour(cheeks, tone, gain))


def _mask_box(frame, shape, w, h):
    """Pixel box (x0, y0, x1, y1) holding the mask outline, clipped to the image; None if empty."""
    xs, ys = [], []
    for side in (-1.0, 1.0):
        for v in (shape.top * frame.nose_v - 0.02, 1.0, shape.bottom + 0.02):
            x, y = frame.side_point(side, shape.width + 0.03, v)
            xs.append(x)
            ys.append(y)
        x, y = frame.side_point(side, 0.0, shape.bottom + 0.02)
        xs.append(x)
        ys.append(y)
    x0 = min(max(math.floor(min(xs)) - 1, 0), w)
    x1 = min(max(math.ceil(max(xs)) + 2, 0), w)
    y0 = min(max(math.floor(min(ys)) - 1, 0), h)
    y1 = min(max(math.ceil(max(ys)) + 2, 0), h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


_GRAIN_TILE = np.random.default_rng(20240607).standard_normal((512, 512)).astype(np.float32)


def _grain(seed: int, h: int, w: int) -> np.ndarray:
    """Unit-variance pixel noise for a style: a window of a fixed tile chosen by the seed."""
    if h > 384 or w > 384:  # large faces in raw photos: fresh noise of the right size
        return np.random.default_rng(seed).standard_normal((h, w), dtype=np.float32)
    oy, ox = divmod(seed % (128 * 128), 128)
    return _GRAIN_TILE[oy: oy + h, ox: ox + w]
