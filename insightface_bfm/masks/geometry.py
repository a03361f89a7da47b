"""Mask geometry from insightface's 5 points, written once for numpy and torch.

Every function takes the array module ``xp`` (numpy or torch) and only uses operators and
functions both provide (``abs, sqrt, minimum, maximum, clip, where, floor``), so the per-image
renderer (numpy, no torch import) and the batched renderer (torch) share one outline, one set of
ear loops and one valve. Scalars broadcast: per-image code passes floats, the batched code
passes (B,1,1,1) tensors.

The face frame: ``v`` runs down the face, 0 on the eye line and 1 on the mouth line; ``u`` runs
across it, 0 at the nose tip and +-1 at the face contour on each side. The half widths of the two
sides come from the eye-to-nose distances along the eye line, so a turned head (yaw) gets a
narrower far side, and the frame's axes follow in-plane rotation.
"""

from __future__ import annotations

import math

# Face half-width at the cheeks per horizontal eye-to-nose distance (about 41 px / 17.6 px on the
# ArcFace template; eye corners sit at ~0.43 of the half-width).
WIDTH_PER_EYE = 2.33
# The far side never gets narrower than this fraction of the inter-ocular distance.
MIN_SIDE = 0.18


class FaceFrame:
    """The frame of one face (floats) or of a batch (tensors of shape (B,1,1,1))."""

    def __init__(self, cx, cy, ax, ay, nose_u, depth, w_left, w_right, nose_v):
        self.cx, self.cy = cx, cy  # eye-line centre
        self.ax, self.ay = ax, ay  # unit vector along the eye line (towards the image-right eye)
        self.nose_u = nose_u  # nose tip offset along the eye line from the eye centre, pixels
        self.depth = depth  # eye line -> mouth line distance, pixels
        self.w_left, self.w_right = w_left, w_right  # half widths, pixels
        self.nose_v = nose_v  # nose tip depth in v units

    def side_point(self, side, u, v):
        """Image coordinates of face point (side * u, v); ``side`` +1 image-right, -1 left (or a tensor)."""
        if _is_number(side):
            w = self.w_right if side > 0 else self.w_left
        else:
            w = self.w_right * (side > 0) + self.w_left * (side <= 0)
        along = self.nose_u + side * u * w
        down = v * self.depth
        return self.cx + along * self.ax - down * self.ay, self.cy + along * self.ay + down * self.ax


def _is_number(x) -> bool:
    return isinstance(x, (int, float))


def face_frame(xp, kps) -> FaceFrame:
    """Frame from points ``kps`` of shape (5,2) (numpy) or (B,5,2) (torch, values become (B,1,1,1))."""
    def col(i, j):
        c = kps[..., i, j]
        return c if _is_number(c) or getattr(c, "ndim", 0) == 0 else c.reshape(-1, 1, 1, 1)

    elx, ely, erx, ery = col(0, 0), col(0, 1), col(1, 0), col(1, 1)
    nx, ny = col(2, 0), col(2, 1)
    mlx, mly, mrx, mry = col(3, 0), col(3, 1), col(4, 0), col(4, 1)
    # eye and mouth directions averaged: robust to one slanted pair
    dx = (erx - elx) + (mrx - mlx)
    dy = (ery - ely) + (mry - mly)
    norm = xp.sqrt(dx * dx + dy * dy) + 1e-6
    ax, ay = dx / norm, dy / norm
    cx, cy = (elx + erx) * 0.5, (ely + ery) * 0.5
    mx, my = (mlx + mrx) * 0.5, (mly + mry) * 0.5
    depth = -(mx - cx) * ay + (my - cy) * ax  # along (-ay, ax): down the face
    iod = xp.sqrt((erx - elx) ** 2 + (ery - ely) ** 2)
    nose_u = (nx - cx) * ax + (ny - cy) * ay
    # a nose tip found above the eye line (or at the mouth) is a detector error: keep the mask's
    # top edge below the eye line whatever the points say (heads tilted back reach ~0.06)
    nose_v = xp.clip((-(nx - cx) * ay + (ny - cy) * ax) / depth, 0.05, 0.85)
    # horizontal distances from the nose to each eye and each mouth corner (mouth scaled to eye spacing)
    eye_l = nose_u - ((elx - cx) * ax + (ely - cy) * ay)
    eye_r = ((erx - cx) * ax + (ery - cy) * ay) - nose_u
    mouth_l = nose_u - ((mlx - cx) * ax + (mly - cy) * ay)
    mouth_r = ((mrx - cx) * ax + (mry - cy) * ay) - nose_u
    half_l = 0.6 * eye_l + 0.4 * mouth_l * 1.21
    half_r = 0.6 * eye_r + 0.4 * mouth_r * 1.21
    w_left = WIDTH_PER_EYE * xp.maximum(half_l, MIN_SIDE * iod)
    w_right = WIDTH_PER_EYE * xp.maximum(half_r, MIN_SIDE * iod)
    return FaceFrame(cx, cy, ax, ay, nose_u, depth, w_left, w_right, nose_v)


def face_coords(xp, frame: FaceFrame, x, y):
    """Per-pixel (u, v, w): face coordinates and the local half width in pixels."""
    rx, ry = x - frame.cx, y - frame.cy
    along = rx * frame.ax + ry * frame.ay - frame.nose_u
    down = ry * frame.ax - rx * frame.ay
    w = xp.where(along < 0, frame.w_left, frame.w_right)
    return along / w, down / frame.depth, w


class MaskShape:
    """Outline parameters (floats or (B,1,1,1) tensors); see styles.ShapeRanges for their meaning."""

    def __init__(self, top, top_curve, top_point, bottom, bottom_curve, bottom_point, width, jaw, shift=0.0):
        self.top, self.top_curve, self.top_point = top, top_curve, top_point
        self.bottom, self.bottom_curve, self.bottom_point = bottom, bottom_curve, bottom_point
        self.width, self.jaw = width, jaw
        self.shift = shift  # sideways offset in half-widths (occluders); 0 for every mask

    def centred(self, u):
        """``u`` in the outline's own frame (the face's ``u`` unless the outline is shifted)."""
        return u if _is_number(self.shift) and self.shift == 0 else u - self.shift

    def top_centre(self, xp, frame):
        # never closer to the eye line than one pixel: the anti-aliased edge stays below it
        return xp.maximum(self.top * frame.nose_v, 1.0 / frame.depth + 0.0 * frame.nose_v)

    def top_edge(self, frame, u, au, xp=None):
        top = self.top * frame.nose_v if xp is None else self.top_centre(xp, frame)
        return top + self.top_curve * u * u + self.top_point * au

    def bottom_edge(self, u, au):
        return self.bottom - self.bottom_curve * u * u - self.bottom_point * au

    def side_edge(self, xp, v):
        below = xp.maximum(v - 1.0, 0.0 * v)
        return self.width * (1.0 - self.jaw * below * below)


def outline_distance(xp, frame: FaceFrame, shape: MaskShape, u, v, w):
    """Signed distance (pixels, approximately) to the mask outline: > 0 inside."""
    u = shape.centred(u)
    au = xp.abs(u)
    d_top = (v - shape.top_edge(frame, u, au, xp)) * frame.depth
    d_bottom = (shape.bottom_edge(u, au) - v) * frame.depth
    d_side = (shape.side_edge(xp, v) - au) * w
    return xp.minimum(xp.minimum(d_top, d_bottom), d_side)


def hand_distance(xp, frame: FaceFrame, shape: MaskShape, side, u, v, w):
    """Signed distance (pixels) to a hand laid across the mouth: > 0 inside.

    The palm comes in from the ``side`` -1/+1 opposite to the fingertips and runs past the face
    contour; the four fingers end in rounded tips at ``shape.width`` (outline half-widths from the
    shifted centre). Top and bottom edges as a mask's.
    """
    ul = shape.centred(u) * side  # > 0 towards the fingertips
    au = xp.abs(ul)
    top = shape.top_edge(frame, ul, au, xp)
    d_top = (v - top) * frame.depth
    d_bottom = (shape.bottom_edge(ul, au) - v) * frame.depth
    phase = 4.0 * (v - top) / (shape.bottom - top)
    f = xp.clip(phase - xp.floor(phase), 0.0, 1.0)
    tip = shape.width - 0.22 * (1.0 - xp.sqrt(xp.clip(xp.sin(math.pi * f), 0.0, 1.0)))
    d_side = xp.minimum((tip - ul) * w, (shape.width + 0.6 + ul) * w)
    return xp.minimum(xp.minimum(d_top, d_bottom), d_side)


def coverage(xp, signed_distance):
    """Anti-aliased coverage: a 1-pixel ramp across the edge."""
    return xp.clip(signed_distance + 0.5, 0.0, 1.0)


def segment_distance2(xp, x, y, ax, ay, bx, by):
    """Squared distance from pixels to the segment a-b."""
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    t = xp.clip((px * dx + py * dy) * (1.0 / (dx * dx + dy * dy + 1e-6)), 0.0, 1.0)
    ex, ey = px - t * dx, py - t * dy
    return ex * ex + ey * ey


def strap_segments(frame: FaceFrame, shape: MaskShape, loops):
    """Four segments (ax, ay, bx, by) of ear loops (loops=1) or head straps (loops=0), both sides.

    All end points lie below the eye line (v >= 0.25), so straps never touch the eyes.
    """
    segs = []
    w_top = shape.width * 0.97
    v_top = shape.top_edge(frame, w_top, w_top) + 0.05
    v_low = 1.05
    w_low = shape.width * 0.96
    for side in (-1.0, 1.0):
        ear = frame.side_point(side, shape.width + 0.28, 0.4)
        # loops: both corners to the ear; straps: straight back, one high and one low
        hi_end = _lerp_point(frame.side_point(side, shape.width + 0.32, v_top + 0.05), ear, loops)
        lo_end = _lerp_point(frame.side_point(side, shape.width + 0.32, v_low + 0.1), ear, loops)
        segs.append((*frame.side_point(side, w_top, v_top), *hi_end))
        segs.append((*frame.side_point(side, w_low, v_low), *lo_end))
    return segs


def _lerp_point(a, b, t):
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def strap_distance(xp, frame, shape, loops, x, y):
    """Distance (pixels) to the nearest loop or strap."""
    dist2 = None
    for seg in strap_segments(frame, shape, loops):
        dd = segment_distance2(xp, x, y, *seg)
        dist2 = dd if dist2 is None else xp.minimum(dist2, dd)
    return xp.sqrt(dist2)


def strap_thickness(frame, loops):
    # ear loops are thin elastic, head straps a wider band
    return frame.depth * (0.03 + 0.025 * (1 - loops)) + 0.6


def valve_center(frame, shape, side):
    return frame.side_point(side, 0.42, 0.5 * (shape.top * frame.nose_v + shape.bottom) + 0.05)


def valve_radius(frame):
    return 0.16 * frame.depth


def cheek_window(xp, u, v):
    """1 on the cheeks the mask will cover (where the face brightness is measured), else 0."""
    au = xp.abs(u)
    return (au > 0.3) * (au < 0.85) * (v > 0.45) * (v < 1.0)


def angle_vector(degrees: float):
    r = math.radians(degrees)
    return math.cos(r), math.sin(r)
