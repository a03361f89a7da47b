"""How a mask looks: procedural prints and shading, written once for numpy and torch.

Like ``geometry``, every function takes the array module ``xp`` and broadcasts over scalars or
(B,1,1,1) tensors. Prints are drawn in fabric coordinates (the face frame scaled to pixels of
the eye-to-mouth distance), so they follow the mask's rotation and the foreshortening of a
turned head. Shading multiplies the base colour: the face's own lighting, the curvature of the
mask around the face, the folds of pleats and the seam of folded respirators.
"""

from __future__ import annotations

import math

from .styles import SKIN_TINT

TWO_PI = 2.0 * math.pi
# Luminance of well-lit skin: a face this bright gets masks in their palette colour.
REFERENCE_LUMA = 150.0


def fabric_coords(u, v, w, depth, cos_a, sin_a, scale):
    """Rotated print coordinates in periods of the print (``scale`` in eye-to-mouth units)."""
    fx = u * w / depth
    r1 = (fx * cos_a + v * sin_a) / scale
    r2 = (v * cos_a - fx * sin_a) / scale
    return r1, r2


def soft_step(xp, z, sharpness=3.0):
    return xp.clip(0.5 + z * sharpness, 0.0, 1.0)


def print_checks(xp, r1, r2):
    return soft_step(xp, xp.sin(TWO_PI * r1) * xp.sin(TWO_PI * r2), 2.5)


def print_stripes(xp, r1, r2):
    return soft_step(xp, xp.sin(TWO_PI * r1) + 0.3, 2.0)


def print_dots(xp, r1, r2, pixels_per_period):
    q1 = r1 - xp.floor(r1) - 0.5
    q2 = r2 - xp.floor(r2) - 0.5
    radius = xp.sqrt(q1 * q1 + q2 * q2)
    return xp.clip((0.27 - radius) * pixels_per_period + 0.5, 0.0, 1.0)


def print_noise(xp, noise):
    """``noise``: smooth zero-mean noise sampled in face coordinates -> a two-colour blotch print."""
    return soft_step(xp, noise, 2.5)


def shading(xp, frame, shape, u, v, w, inside, pleats, seam):
    """Multiplicative shading of the mask surface (1 = flat, even light).

    ``inside``: signed distance to the outline in pixels; ``pleats``/``seam``: 0/1 flags.
    """
    s = surface(xp, frame, u, v) * edge_band(xp, frame, inside)
    if not _off(pleats):
        s = s * (1.0 + pleats * (pleat_folds(xp, frame, shape, v) - 1.0))
    if not _off(seam):
        s = s * (1.0 + seam * (centre_seam(xp, frame, u, w) - 1.0))
    return s


def _off(flag) -> bool:
    """A feature switched off with a plain number: the numpy path skips its work."""
    return isinstance(flag, (int, float)) and flag == 0


def surface(xp, frame, u, v):
    """Shape of the mask on the face, independent of the style: cached per face by the renderer."""
    # the mask turns away from the camera towards the cheeks and under the chin
    below = xp.maximum(v - 1.25, 0.0 * v)
    s = 1.0 - 0.28 * u * u - 0.35 * below
    # the nose bridge rises under the top edge: a little highlight above the nose tip
    au = xp.abs(u)
    ridge = xp.clip(1.0 - au * 3.0, 0.0, 1.0) * xp.clip(1.0 - xp.abs(v - frame.nose_v * 0.9) * 4.0, 0.0, 1.0)
    return s * (1.0 + 0.06 * ridge)


def edge_band(xp, frame, inside):
    """Bound edges: a slightly darker band along the outline."""
    return 1.0 - 0.1 * xp.clip(1.0 - inside / (0.06 * frame.depth + 1.0), 0.0, 1.0)


def pleat_folds(xp, frame, shape, v):
    """Surgical pleats: three folds between the nose wire and the chin, lit on top, shadowed below."""
    t0 = shape.top * frame.nose_v + 0.12
    t1 = shape.bottom - 0.25
    phase = 3.0 * (v - t0) / (t1 - t0)
    fold = phase - xp.floor(phase)
    in_pleats = (phase > 0) * (phase < 3)
    return 1.0 + in_pleats * (0.06 - 0.2 * fold * fold)


def centre_seam(xp, frame, u, w):
    """Centre seam of folded respirators and some cloth masks: a dark line, two differently lit halves."""
    seam_px = u * w
    line = xp.clip(1.0 - xp.abs(seam_px) / (0.02 * frame.depth + 0.7), 0.0, 1.0)
    halves = 0.05 * xp.clip(seam_px / 2.0, -1.0, 1.0)
    return 1.0 - 0.35 * line + halves


def brightness_gain(xp, cheek_luma):
    """Global gain that matches the mask to the face's exposure (dim photo -> dim mask)."""
    return xp.clip((cheek_luma / REFERENCE_LUMA) ** 0.85, 0.25, 1.2)


def side_light(xp, u, left_luma, right_luma):
    """Side lighting transferred from the face: a cheek brighter than the other stays brighter.

    Only the left/right cheek means enter, not a blurred face, so the mouth and nostrils never
    leak into the mask as dark smudges.
    """
    slope = 1.4 * (right_luma - left_luma) / (right_luma + left_luma + 1.0)
    return xp.clip(1.0 + slope * xp.clip(u, -1.0, 1.0), 0.5, 1.5)


def valve_shading(xp, valve_inside, radius):
    """A raised disc: darker rim, lighter centre, a slot ring."""
    r = xp.clip(valve_inside / (radius + 1e-6), 0.0, 1.0)  # 0 at rim, 1 at centre
    ring = xp.clip(1.0 - xp.abs(r - 0.55) * 12.0, 0.0, 1.0)
    return (0.78 + 0.3 * r) * (1.0 - 0.25 * ring)


# -- occluders (opt-in types: styles.OCCLUDER_TYPES) --------------------------------------------

def finger_folds(xp, frame, shape, v):
    """A hand across the mouth: four fingers stacked from the top edge down, each rounded (lit in
    the middle) with a dark crease between neighbours."""
    t0 = shape.top_centre(xp, frame)
    span = shape.bottom - t0
    phase = 4.0 * (v - t0) / span
    f = phase - xp.floor(phase)
    finger_px = span * frame.depth / 4.0
    crease = xp.clip(1.0 - xp.minimum(f, 1.0 - f) * finger_px / 1.2, 0.0, 1.0)
    # about 1 on average: the hand keeps the face's brightness
    return (1.02 + 0.12 * xp.sin(math.pi * f)) * (1.0 - 0.22 * crease)


def skin_colour(cheeks, tone, gain):
    """A hand's colour from the mean colour of the cheeks it covers (per channel, in any channel
    order): divided by the exposure gain the shading applies again, and tinted a little towards the
    style's palette tone (its hue, not its level; ``styles.SKIN_TINT``)."""
    level = (tone[0] + tone[1] + tone[2]) / 3.0 + 1e-6
    return [c / gain * (t / level) ** SKIN_TINT for c, t in zip(cheeks, tone)]


def knit_ribs(xp, frame, u, w):
    """Knitted scarves: fine vertical ribs across the fabric."""
    rib_px = 0.05 * frame.depth + 1.0
    return 1.0 - 0.08 * (0.5 + 0.5 * xp.sin(TWO_PI * u * w / rib_px))


def specular_band(xp, u_outline, width):
    """A held object's specular highlight: a bright vertical band on its lit side (0..0.55, the
    share of white light added). ``u_outline``: u in the object's own frame (see MaskShape.centred)."""
    band = xp.clip(1.0 - xp.abs(u_outline + 0.45 * width) / (0.15 * width + 1e-3), 0.0, 1.0)
    return 0.55 * band * band


# -- lighting (opt-in: styles.SHADOW_RANGE, SHEEN_RANGE) ---------------------------------------

def contact_shadow(xp, frame, inside, v, strength):
    """Soft contact shadow on the skin around the outline: a mask stands a little off the face and
    shades the skin next to its edge, most under its lower edge (light from above). Returns the
    multiplier of the skin (1 = untouched; exactly 1 beyond a few pixels, so the rest of the face
    keeps its pixels). ``inside``: signed distance to the outline in pixels (negative outside)."""
    reach = 0.15 * frame.depth + 1.0
    halo = xp.clip(1.0 + inside / reach, 0.0, 1.0)  # 1 at the edge, 0 at ``reach`` px outside
    under = xp.clip((v - 1.0) * 2.0, 0.0, 1.0)  # below the mouth line: the edge faces down
    # none above the eye line (where no mask reaches), fading in just under it
    eyes = xp.clip(v * 8.0, 0.0, 1.0)
    return 1.0 - strength * halo * halo * (0.7 + 0.3 * under) * eyes


def sheen_lobe(xp, u, v, left_luma, right_luma):
    """Where synthetic fabric catches the light (0..1): a broad highlight over the bulge between
    the nose and the mouth, moved towards the brighter cheek (the same side light as
    ``side_light``; even light keeps it on the middle)."""
    toward = xp.clip(7.0 * (right_luma - left_luma) / (right_luma + left_luma + 1.0), -1.0, 1.0)
    du = (u - 0.35 * toward) / 0.22
    dv = (v - 0.8) / 0.35
    return xp.exp(-0.5 * (du * du + dv * dv))
