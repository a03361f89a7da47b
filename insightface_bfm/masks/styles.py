"""Mask styles: the small serialisable record that fully determines one rendered mask.

A style holds every random choice (type, colours, pattern, shape jitter, seed of the
textures), so a manifest of styles reproduces a masked data set exactly. The per-type
tables below (palettes, pattern odds, shape ranges) are plain data shared by the per-image
renderer (numpy) and the batched torch renderer, which is what keeps the two alike.

Colours are BGR uint8 triples, the project's image convention.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

# Mask kinds by family (how masks are made), for choosing kinds by family and for the
# leave-one-family-out test of generalisation to masks not seen in training
# (benchmarks/mask_families.py).
MASK_FAMILIES = {
    "medical": ("surgical",),  # pleated surgical masks
    "respirator": ("n95", "kn95"),  # moulded cups and folded KN95s
    "fabric": ("cloth", "dark"),  # flat cloth masks, plain or printed, and dark ones
    # surgical masks whose surface is a photograph (insightface's own mask photos, see textures.py)
    "photographed": ("photo",),
}
MASK_TYPES = tuple(t for types in MASK_FAMILIES.values() for t in types)
# Lower-face occluders that are not masks, drawn only when asked for (data.mask_types, bfm mask
# --types): a hand over the mouth (in the face's own skin colour), a scarf or bandana pulled up,
# an object held in front of the mouth (a phone, a cup; off-centre, with a specular highlight).
# Never among the defaults, so every default draw and measured number stays as it was.
OCCLUDER_FAMILY = "occluder"
OCCLUDER_TYPES = ("hand", "scarf", "object")
ALL_TYPES = MASK_TYPES + OCCLUDER_TYPES
PATTERNS = ("plain", "checks", "stripes", "dots", "noise", "photo")  # photo: MaskStyle.texture's photo


def _rgb(r, g, b):
    return (b, g, r)


# Base colours per type, as seen under even, bright light (the renderer shades them to the face).
PALETTES = {
    "surgical": (
        _rgb(125, 175, 215), _rgb(150, 200, 232), _rgb(100, 150, 200), _rgb(236, 238, 240),
        _rgb(215, 225, 235), _rgb(150, 200, 180), _rgb(120, 185, 175), _rgb(232, 185, 195),
    ),
    "n95": (
        _rgb(242, 242, 236), _rgb(232, 226, 212), _rgb(210, 210, 205), _rgb(245, 245, 245),
        _rgb(190, 200, 210),
    ),
    "kn95": (
        _rgb(243, 243, 243), _rgb(228, 228, 232), _rgb(170, 170, 175), _rgb(45, 45, 48),
        _rgb(235, 200, 205), _rgb(170, 200, 230),
    ),
    "cloth": (
        _rgb(35, 45, 80), _rgb(30, 30, 32), _rgb(120, 120, 125), _rgb(175, 40, 45), _rgb(110, 30, 45),
        _rgb(205, 185, 160), _rgb(225, 160, 175), _rgb(75, 100, 140), _rgb(85, 95, 60), _rgb(235, 235, 230),
        _rgb(60, 120, 160), _rgb(200, 150, 60), _rgb(140, 90, 150), _rgb(60, 140, 110), _rgb(160, 110, 80),
    ),
    "dark": (
        _rgb(22, 22, 24), _rgb(34, 34, 36), _rgb(52, 52, 56), _rgb(25, 30, 48), _rgb(70, 70, 74),
        _rgb(40, 35, 35),
    ),
    # the mean colours of textures.TEXTURE_NAMES, in that order (white, blue, black, green)
    "photo": (_rgb(218, 218, 218), _rgb(133, 203, 233), _rgb(58, 55, 57), _rgb(95, 169, 150)),
    # a hand takes the colour of the face it covers (measured on the cheeks); these skin tones are
    # only the fallback where no cheek is in the image
    "hand": (_rgb(224, 172, 140), _rgb(198, 134, 100), _rgb(141, 85, 56), _rgb(90, 56, 38)),
    # knitted scarves and printed bandanas
    "scarf": (
        _rgb(150, 30, 40), _rgb(30, 50, 100), _rgb(90, 90, 95), _rgb(200, 190, 170), _rgb(40, 80, 60),
        _rgb(25, 25, 28), _rgb(190, 120, 40), _rgb(120, 60, 110), _rgb(200, 40, 40), _rgb(40, 40, 120),
    ),
    # phones, cups, microphones, a sheet of paper
    "object": (
        _rgb(20, 20, 22), _rgb(60, 60, 65), _rgb(235, 235, 230), _rgb(180, 180, 185), _rgb(200, 60, 50),
        _rgb(50, 90, 170), _rgb(230, 200, 80),
    ),
}
# Second colours of the cloth prints (and of n95 valves).
ACCENTS = (
    _rgb(240, 240, 235), _rgb(25, 25, 28), _rgb(200, 40, 50), _rgb(240, 200, 60), _rgb(60, 110, 190),
    _rgb(120, 170, 90), _rgb(230, 150, 170), _rgb(150, 150, 155), _rgb(250, 130, 50), _rgb(90, 60, 140),
)
VALVE_COLORS = (
    _rgb(235, 235, 235), _rgb(120, 120, 125), _rgb(40, 40, 44), _rgb(90, 140, 200), _rgb(240, 150, 60),
)

# Odds of each pattern per type (order of PATTERNS).
PATTERN_ODDS = {
    "surgical": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "n95": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "kn95": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "cloth": (0.35, 0.15, 0.2, 0.15, 0.15, 0.0),
    "dark": (0.75, 0.0, 0.1, 0.0, 0.15, 0.0),
    "photo": (0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    "hand": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "scarf": (0.2, 0.25, 0.3, 0.1, 0.15, 0.0),  # plain, plaid, knit ribs, polka dots, bandana print
    "object": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class ShapeRanges:
    """Uniform ranges of the outline parameters of a type (see geometry.MaskShape)."""

    top: tuple[float, float]  # top edge on the bridge, fraction of the eye-line -> nose-tip depth
    top_curve: tuple[float, float]  # rise of the top edge towards the cheeks (quadratic in u)
    top_point: tuple[float, float]  # pointed top (linear in |u|): KN95 fold
    bottom: tuple[float, float]  # bottom edge under the chin, in eye-to-mouth units below the eye line
    bottom_curve: tuple[float, float]
    bottom_point: tuple[float, float]
    width: tuple[float, float]  # side extent, 1 ~ face contour at the cheeks
    jaw: tuple[float, float]  # narrowing of the sides below the mouth
    # sideways offset of the whole outline in face half-widths (occluders only: every mask is centred)
    shift: tuple[float, float] = (0.0, 0.0)


SHAPES = {
    "surgical": ShapeRanges((0.2, 0.7), (0.04, 0.1), (0.0, 0.0), (1.48, 1.85), (0.12, 0.22), (0.0, 0.0),
                            (0.97, 1.15), (0.35, 0.6)),
    "n95": ShapeRanges((0.22, 0.72), (0.2, 0.34), (0.0, 0.0), (1.45, 1.7), (0.3, 0.45), (0.0, 0.0),
                       (0.86, 1.02), (0.7, 1.0)),
    "kn95": ShapeRanges((0.2, 0.62), (0.02, 0.06), (0.14, 0.24), (1.55, 1.85), (0.05, 0.12), (0.25, 0.38),
                        (0.92, 1.08), (0.45, 0.7)),
    "cloth": ShapeRanges((0.2, 0.72), (0.08, 0.2), (0.0, 0.04), (1.48, 1.9), (0.15, 0.35), (0.0, 0.05),
                         (0.93, 1.15), (0.4, 0.9)),
    # dark includes neck gaiters and snoods: wider and lower than the face
    "dark": ShapeRanges((0.2, 0.72), (0.04, 0.2), (0.0, 0.06), (1.48, 2.0), (0.05, 0.35), (0.0, 0.08),
                        (0.93, 1.25), (0.1, 0.9)),
}
SHAPES["photo"] = SHAPES["surgical"]
SHAPES.update({
    # fingers across the mouth from one side: the nose may stay free, the chin often does
    # (the palm comes in from the side opposite the fingertips: MaskStyle.valve_side)
    "hand": ShapeRanges((0.45, 1.2), (-0.05, 0.08), (0.0, 0.0), (1.25, 1.65), (0.0, 0.15), (0.0, 0.0),
                        (0.55, 0.95), (0.0, 0.0), (-0.3, 0.3)),
    # bulky and wide, down past the chin; a bandana's pointed bottom (bottom_point) or a scarf's straight one
    "scarf": ShapeRanges((0.25, 0.85), (0.05, 0.25), (0.0, 0.05), (1.9, 2.2), (0.0, 0.3), (0.0, 0.45),
                         (1.15, 1.45), (0.0, 0.25)),
    # a compact thing in front of the mouth, often off-centre (but always over the mouth's middle)
    "object": ShapeRanges((0.6, 1.15), (0.0, 0.03), (0.0, 0.0), (1.2, 1.55), (0.0, 0.06), (0.0, 0.0),
                          (0.4, 0.75), (0.0, 0.0), (-0.3, 0.3)),
})
SHAPE_FIELDS = ("top", "top_curve", "top_point", "bottom", "bottom_curve", "bottom_point", "width", "jaw")

# Feature odds per type: (pleats, seam, valve, ear loops; else head straps)
FEATURE_ODDS = {
    "surgical": (1.0, 0.0, 0.0, 1.0),
    "n95": (0.0, 0.0, 0.45, 0.0),
    "kn95": (0.0, 1.0, 0.0, 1.0),
    "cloth": (0.0, 0.35, 0.0, 1.0),
    "dark": (0.25, 0.3, 0.0, 1.0),
    "photo": (0.0, 0.0, 0.0, 1.0),  # the photo has its own pleats
    "hand": (0.0, 0.0, 0.0, 0.0),
    "scarf": (0.0, 0.0, 0.0, 0.0),
    "object": (0.0, 0.0, 0.0, 0.0),
}


# Skin is smoother than fabric: a hand gets this share of the style's grain.
SKIN_GRAIN = 0.3
# A hand's colour is the cheeks' times (palette tone / its grey level) ** SKIN_TINT: hands vary a
# little in hue from the face they cover, not a lot.
SKIN_TINT = 0.1

# Share of masks whose loops or straps are drawn.
STRAPS_VISIBLE = 0.65

# Lighting (opt-in: random_style(lighting=True), MaskAugment(lighting=True), data.mask_lighting):
# a soft contact shadow on the skin along every outline, strength drawn in SHADOW_RANGE (the
# share of light taken at the edge), and a specular sheen on the synthetic fabrics of SHEEN_TYPES
# (non-woven surgical masks, moulded and folded respirators), strength in SHEEN_RANGE (the share of
# white light added at the highlight's centre). Cotton, knits, skin and held objects get no sheen
# (an object has its own specular band).
SHADOW_RANGE = (0.15, 0.45)
SHEEN_RANGE = (0.08, 0.3)
SHEEN_TYPES = ("surgical", "n95", "kn95", "photo")


@dataclass(frozen=True)
class MaskStyle:
    """Everything that decides one rendered mask; ``to_dict``/``from_dict`` round-trip through JSON.

    ``colors`` holds BGR triples: the base colour, the pattern's second colour and the valve's.
    ``seed`` seeds the textures (noise prints, fabric grain), so a style renders identically.
    """

    type: str = "surgical"
    colors: tuple = ((215, 175, 125), (240, 240, 235), (235, 235, 235))
    pattern: str = "plain"
    seed: int = 0
    top: float = 0.55
    top_curve: float = 0.07
    top_point: float = 0.0
    bottom: float = 1.6
    bottom_curve: float = 0.16
    bottom_point: float = 0.0
    width: float = 1.03
    jaw: float = 0.5
    pleats: bool = True
    seam: bool = False
    valve: bool = False
    # +1: the wearer's left side of the image (right of the nose), -1: other side; a hand's finger tips
    valve_side: float = 1.0
    loops: bool = True  # ear loops, else head straps
    straps_visible: bool = True  # loops/straps drawn (in many photos hair or the crop hides them)
    pattern_scale: float = 0.2  # pattern period in eye-to-mouth units
    pattern_angle: float = 0.0  # degrees
    grain: float = 4.0  # fabric grain noise, in grey levels
    texture: int = 0  # pattern "photo": index into textures.TEXTURE_NAMES
    shift: float = 0.0  # sideways offset of the outline in face half-widths (occluders)
    shadow: float = 0.0  # contact shadow on the skin along the outline (0 = none; SHADOW_RANGE)
    sheen: float = 0.0  # specular sheen of synthetic fabric (0 = none; SHEEN_RANGE)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.type not in ALL_TYPES:
            raise ValueError(f"MaskStyle.type: unknown mask type {self.type!r}; expected one of {ALL_TYPES}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"MaskStyle.pattern: unknown pattern {self.pattern!r}; expected {PATTERNS}")
        colors = tuple(tuple(int(c) for c in col) for col in self.colors)
        if len(colors) != 3 or any(len(c) != 3 or min(c) < 0 or max(c) > 255 for c in colors):
            raise ValueError(f"MaskStyle.colors: expected 3 BGR triples in 0..255, got {self.colors!r}")
        object.__setattr__(self, "colors", colors)
        if not (0.05 <= self.top <= 1.6):
            raise ValueError(f"MaskStyle.top: {self.top} is outside 0.05..1.6 (fraction eye line -> nose)")
        if not (1.1 <= self.bottom <= 2.2):
            raise ValueError(f"MaskStyle.bottom: {self.bottom} is outside 1.1..2.2 (eye-to-mouth units)")
        if not (isinstance(self.texture, int) and 0 <= self.texture < len(PALETTES["photo"])):
            raise ValueError(f"MaskStyle.texture: {self.texture!r} is not an index of a mask photo "
                             f"(0..{len(PALETTES['photo']) - 1})")
        if not (0.3 <= self.width <= 1.5):
            raise ValueError(f"MaskStyle.width: {self.width} is outside 0.3..1.5")
        if not (-0.5 <= self.shift <= 0.5):
            raise ValueError(f"MaskStyle.shift: {self.shift} is outside -0.5..0.5 (face half-widths)")
        for name in ("shadow", "sheen"):
            value = getattr(self, name)
            if not (0.0 <= value <= 0.6):
                raise ValueError(f"MaskStyle.{name}: {value} is outside 0..0.6 (a share of light)")

    def to_dict(self) -> dict:
        # dataclasses.asdict's recursive copy took a third of the masked evaluations' set-up: the
        # fields are scalars but for colors and extra, copied here
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["colors"] = [list(c) for c in self.colors]
        d["extra"] = copy.deepcopy(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MaskStyle:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"MaskStyle.from_dict: unknown keys {sorted(unknown)}")
        kw = dict(d)
        if "colors" in kw:
            kw["colors"] = tuple(tuple(c) for c in kw["colors"])
        return cls(**kw)

    def replace(self, **changes) -> MaskStyle:
        return dataclasses.replace(self, **changes)


def check_types(types) -> tuple[str, ...]:
    """Validate a selection of mask types: names of ``ALL_TYPES`` (the masks and the opt-in
    occluders) or of families (``MASK_FAMILIES``, ``"occluder"``), expanded to their types; a list
    or a comma-separated string; None means every mask type (never the occluders)."""
    if types is None:
        return MASK_TYPES
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    families = {**MASK_FAMILIES, OCCLUDER_FAMILY: OCCLUDER_TYPES}
    out = [kind for t in types for kind in families.get(t, (t,))]  # repeats keep their weight
    bad = [t for t in out if t not in ALL_TYPES]
    if bad or not out:
        raise ValueError(f"mask types {list(types)}: expected a non-empty subset of {list(ALL_TYPES)} "
                         f"or families {list(families)}")
    return tuple(out)


def family_of(mask_type: str) -> str:
    """The family (a key of ``MASK_FAMILIES``, or ``"occluder"``) of one mask type."""
    for family, types in {**MASK_FAMILIES, OCCLUDER_FAMILY: OCCLUDER_TYPES}.items():
        if mask_type in types:
            return family
    raise ValueError(f"mask type {mask_type!r}: expected one of {list(ALL_TYPES)}")


def types_without(family: str) -> tuple[str, ...]:
    """Every mask type but those of one family: the training side of a leave-one-family-out test."""
    if family not in MASK_FAMILIES:
        raise ValueError(f"mask family {family!r}: expected one of {list(MASK_FAMILIES)}")
    return tuple(t for t in MASK_TYPES if t not in MASK_FAMILIES[family])


def pattern_cdf(odds) -> list[float]:
    """Cumulative odds of PATTERNS, exactly 1.0 from the last pattern with odds on (a draw just
    under 1 must never fall through rounding onto a pattern the type does not wear)."""
    total, acc, cdf = sum(odds), 0.0, []
    last = max(i for i, p in enumerate(odds) if p > 0)
    for i, p in enumerate(odds):
        acc += p / total
        cdf.append(1.0 if i >= last else acc)
    return cdf


def pattern_index(odds, x: float) -> int:
    """Index into PATTERNS drawn by the uniform number ``x`` (as the batched renderer's searchsorted)."""
    return next(i for i, c in enumerate(pattern_cdf(odds)) if x < c or c >= 1.0)


def _pick(seq, x: float):
    return seq[min(int(x * len(seq)), len(seq) - 1)]


def _jitter_color(color, x: float, drift) -> tuple[int, int, int]:
    # a shade brighter or darker and a slight hue drift: no two masks quite the same colour
    scale = 0.88 + 0.22 * x
    return tuple(min(255, max(0, int(round(c * scale + e)))) for c, e in zip(color, drift))


# A mask pulled down under the nose: top edge at this range of multiples of the nose depth.
WORN_LOW_TOP = (1.1, 1.45)


def random_style(rng=None, types=None, worn_low: float = 0.0, lighting: bool = False) -> MaskStyle:
    """Draw a style: type uniform over ``types`` (default every mask type; the occluders only when
    named), then colours, pattern, shape and seed.

    ``rng``: a ``numpy.random.Generator``, a seed or None. ``worn_low``: share of masks worn
    under the nose (nose tip uncovered; default 0: every mask covers the nose). ``lighting``: also
    draw a contact shadow and, on synthetic fabrics, a sheen (``SHADOW_RANGE``, ``SHEEN_RANGE``;
    two more numbers, drawn last, so a draw without it is what it always was). The draw uses
    the same layout of uniform numbers as the batched renderer's ``MaskAugment.sample_styles``.
    """
    rng = np.random.default_rng(rng)
    types = check_types(types)
    r = rng.random(26).tolist()
    n = rng.normal(0.0, 5.0, 9).tolist()
    seed = int(rng.integers(2**31 - 1))
    # occluders' sideways offset: one more number, drawn only where occluders may be drawn, so the
    # stream of a selection of masks stays as it always was (the batched renderer does the same)
    r_shift = float(rng.random()) if any(t in OCCLUDER_TYPES for t in types) else 0.5
    r_light = rng.random(2).tolist() if lighting else None
    kind = _pick(types, r[0])
    palette = PALETTES[kind]
    base = _jitter_color(_pick(palette, r[1]), r[2], n[0:3])
    accent = _jitter_color(_pick(palette if kind == "dark" else ACCENTS, r[3]), r[4], n[3:6])
    valve_color = _jitter_color(_pick(VALVE_COLORS, r[5]), r[6], n[6:9])
    pattern = PATTERNS[pattern_index(PATTERN_ODDS[kind], r[7])]
    ranges = SHAPES[kind]
    shape = {}
    for i, name in enumerate(SHAPE_FIELDS):
        lo, hi = getattr(ranges, name)
        shape[name] = lo + (hi - lo) * r[8 + i]
    lo, hi = ranges.shift
    shape["shift"] = lo + (hi - lo) * r_shift
    if r[25] < worn_low:
        shape["top"] = WORN_LOW_TOP[0] + (WORN_LOW_TOP[1] - WORN_LOW_TOP[0]) * r[8]
    pleats, seam, valve, loops = (x < p for x, p in zip(r[16:20], FEATURE_ODDS[kind]))
    light = {}
    if r_light is not None:
        light["shadow"] = SHADOW_RANGE[0] + (SHADOW_RANGE[1] - SHADOW_RANGE[0]) * r_light[0]
        if kind in SHEEN_TYPES:
            light["sheen"] = SHEEN_RANGE[0] + (SHEEN_RANGE[1] - SHEEN_RANGE[0]) * r_light[1]
    photo = _pick(range(len(PALETTES["photo"])), r[1])  # the palette pick
    a = r[22]
    angle = (a * 4.0 - 1.0) * 45.0 if a < 0.5 else (0.0 if a < 0.75 else 90.0)
    return MaskStyle(
        type=kind,
        colors=(base, accent, valve_color),
        pattern=pattern,
        seed=seed,
        pleats=pleats,
        seam=seam,
        valve=valve,
        valve_side=-1.0 if r[20] < 0.5 else 1.0,
        loops=loops,
        straps_visible=r[24] < STRAPS_VISIBLE and kind not in OCCLUDER_TYPES,
        pattern_scale=0.1 + 0.2 * r[21],
        pattern_angle=angle,
        grain=1.0 + 5.0 * r[23],
        texture=photo if pattern == "photo" else 0,  # recorded only where it means something
        **shape,
        **light,
    )
