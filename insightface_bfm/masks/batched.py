"""Batched torch mask renderer for aligned crops: ``MaskAugment``.

The trainer makes (x, masked x) pairs on the fly with it, on the GPU when there is one. It draws
a style per sample from the same tables as ``random_style`` and evaluates the same geometry and
appearance formulas as the per-image renderer (``geometry``, ``appearance`` are written for both
numpy and torch), on a coordinate grid with per-sample parameters: no Python loop over samples.
Outputs look like ``render_mask``'s but are not pixel-identical (different noise generators).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..imaging import ARCFACE_KPS
from . import appearance as look
from . import geometry as geo
from . import textures
from .styles import (
    ACCENTS,
    ALL_TYPES,
    FEATURE_ODDS,
    MASK_TYPES,
    OCCLUDER_TYPES,
    PALETTES,
    PATTERN_ODDS,
    PATTERNS,
    SHADOW_RANGE,
    SHAPE_FIELDS,
    SHAPES,
    SHEEN_RANGE,
    SHEEN_TYPES,
    SKIN_GRAIN,
    STRAPS_VISIBLE,
    VALVE_COLORS,
    WORN_LOW_TOP,
    check_types,
    pattern_cdf,
)

PHOTO = PATTERNS.index("photo")
# Samples rendered at a time on a CPU: a few samples' temporaries stay in the caches, where the
# batch's would not. Every sample is drawn on its own; a multiple of 16 keeps each sample's
# numbers on the same SIMD path (vector or scalar tail) as in one pass over the batch.
CPU_CHUNK = 32


def _table(groups):
    """Ragged colour lists -> flat RGB table, offsets, counts (so a per-sample index picks a row)."""
    flat, offsets, counts = [], [], []
    for g in groups:
        offsets.append(len(flat))
        counts.append(len(g))
        flat.extend([c[2], c[1], c[0]] for c in g)  # BGR -> RGB: tensors here are RGB
    return (torch.tensor(flat, dtype=torch.float32), torch.tensor(offsets, dtype=torch.long),
            torch.tensor(counts, dtype=torch.long))


def _bcast(t):
    return t.reshape(-1, 1, 1, 1)


class MaskAugment(nn.Module):
    """Put a random synthetic mask on each aligned crop of a batch.

    ``forward(images, generator=None, kps=None)``: ``images`` float (B,3,H,W) RGB in [-1, 1]
    (H = W = 112 for ArcFace crops) on any device; ``kps`` optional (B,5,2) points in pixels,
    default the ArcFace template with a small random similarity jitter and per-point noise.
    Returns ``(masked, region)``: masked images like ``images`` and region (B,1,H,W) in [0, 1]
    (mask coverage, anti-aliased). With probability ``1 - p`` a sample passes through unmasked
    (its region is 0). ``generator`` (a ``torch.Generator``) makes the draw reproducible.
    ``lighting``: contact shadows and the sheen of synthetic fabrics (``random_style``'s), drawn
    after every other number of the batch.
    """

    def __init__(self, types=None, p: float = 1.0, kps_jitter: float = 1.0, worn_low: float = 0.0,
                 colours: str = "own", lighting: bool = False):
        super().__init__()
        self.types = check_types(types)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MaskAugment: p={p} is not a probability")
        self.p = float(p)
        if kps_jitter < 0:
            raise ValueError(f"MaskAugment: kps_jitter={kps_jitter} must be >= 0")
        if not 0.0 <= worn_low <= 1.0:
            raise ValueError(f"MaskAugment: worn_low={worn_low} is not a probability")
        if colours not in ("own", "any"):
            raise ValueError(f"MaskAugment: colours={colours!r} must be 'own' or 'any'")
        # "own": each type's own palette (surgical blue/white/green/pink, ...); "any": the colours
        # of every type for every shape (black surgical masks, printed-colour KN95s exist), so that
        # colour is not a cue of one family
        self.colours = colours
        self.kps_jitter = float(kps_jitter)
        self.worn_low = float(worn_low)  # share of masks pulled under the nose (see random_style)
        # contact shadows and the sheen of synthetic fabrics (see random_style's lighting)
        self.lighting = bool(lighting)
        # tables over every type (the masks first, so their indices are MASK_TYPES'); occluders are
        # drawn only when asked for, and only then does a batch draw their sideways offsets
        type_ids = [ALL_TYPES.index(t) for t in self.types]
        self.register_buffer("type_ids", torch.tensor(type_ids, dtype=torch.long), persistent=False)
        self.occluders = any(t in OCCLUDER_TYPES for t in self.types)
        for name, groups in (
            ("palette", [PALETTES[t] for t in ALL_TYPES]),
            ("accent", [PALETTES[t] if t == "dark" else ACCENTS for t in ALL_TYPES]),
            ("valve", [VALVE_COLORS for _ in ALL_TYPES]),
        ):
            flat, offsets, counts = _table(groups)
            self.register_buffer(f"{name}_rgb", flat, persistent=False)
            self.register_buffer(f"{name}_offsets", offsets, persistent=False)
            self.register_buffer(f"{name}_counts", counts, persistent=False)
        lo = [[getattr(SHAPES[t], f)[0] for f in SHAPE_FIELDS] for t in ALL_TYPES]
        hi = [[getattr(SHAPES[t], f)[1] for f in SHAPE_FIELDS] for t in ALL_TYPES]
        self.register_buffer("shape_lo", torch.tensor(lo, dtype=torch.float32), persistent=False)
        self.register_buffer("shape_hi", torch.tensor(hi, dtype=torch.float32), persistent=False)
        shifts = torch.tensor([SHAPES[t].shift for t in ALL_TYPES])
        self.register_buffer("shift_range", shifts, persistent=False)
        cdf = torch.tensor([pattern_cdf(PATTERN_ODDS[t]) for t in ALL_TYPES], dtype=torch.float32)
        self.register_buffer("pattern_cdf", cdf, persistent=False)
        # the mask photos, RGB 0..255, read only when a drawn type can wear them
        wears_photo = any(PATTERN_ODDS[t][PHOTO] > 0 for t in self.types)
        photos = (torch.from_numpy(textures.photo_textures()[..., ::-1].copy()).permute(0, 3, 1, 2)
                  if wears_photo else torch.zeros((0, 3, *textures.TEXTURE_SIZE)))
        self.register_buffer("photos", photos.contiguous(), persistent=False)
        sheen_on = [float(t in SHEEN_TYPES) for t in ALL_TYPES]
        self.register_buffer("sheen_types", torch.tensor(sheen_on), persistent=False)
        self.register_buffer("feature_odds", torch.tensor([FEATURE_ODDS[t] for t in ALL_TYPES]),
                             persistent=False)
        self.register_buffer("template", torch.from_numpy(np.asarray(ARCFACE_KPS, dtype=np.float32)),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"types={list(self.types)}, p={self.p}" + (", lighting=True" if self.lighting else "")

    # -- drawing --------------------------------------------------------------------------------
    def _rand(self, shape, generator, device):
        gdev = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gdev).to(device)

    def _randn(self, shape, generator, device):
        gdev = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gdev).to(device)

    def _pick(self, name, type_idx, r):
        offsets, counts = getattr(self, f"{name}_offsets"), getattr(self, f"{name}_counts")
        n = counts[type_idx]
        idx = offsets[type_idx] + torch.minimum((r * n).long(), n - 1)
        return getattr(self, f"{name}_rgb")[idx]

    def _jitter(self, rgb, r_scale, drift):
        return (rgb * (0.88 + 0.22 * r_scale)[:, None] + 5.0 * drift).clamp(0, 255)

    def default_kps(self, batch: int, generator=None, device=None):
        """ArcFace template with a small similarity jitter (rotation, scale, shift) and point noise."""
        device = device or self.template.device
        r = self._rand((batch, 4), generator, device) * 2 - 1
        noise = self._randn((batch, 5, 2), generator, device)
        j = self.kps_jitter
        angle = r[:, 0] * math.radians(4.0) * j
        scale = 1.0 + 0.04 * r[:, 1] * j
        c, s = torch.cos(angle) * scale, torch.sin(angle) * scale
        centre = self.template.to(device).mean(0)
        rel = self.template.to(device)[None] - centre
        x = c[:, None] * rel[..., 0] - s[:, None] * rel[..., 1]
        y = s[:, None] * rel[..., 0] + c[:, None] * rel[..., 1]
        shift = 1.5 * j * r[:, 2:4]
        pts = torch.stack([x, y], -1) + centre + shift[:, None, :] + 0.7 * j * noise
        return pts

    def sample_styles(self, batch: int, generator=None, device=None) -> dict:
        """Per-sample style parameters as tensors (the batched twin of ``random_style``)."""
        device = device or self.template.device
        r = self._rand((batch, 26), generator, device)
        drift = self._randn((batch, 3, 3), generator, device)
        t_local = torch.clamp((r[:, 0] * len(self.types)).long(), max=len(self.types) - 1)
        t = self.type_ids.to(device)[t_local]
        tc = t
        if self.colours == "any":  # an extra draw only then: the default stream stays as it was
            u = self._rand((batch,), generator, device)
            tc = torch.clamp((u * len(MASK_TYPES)).long(), max=len(MASK_TYPES) - 1)
        base = self._jitter(self._pick("palette", tc, r[:, 1]), r[:, 2], drift[:, 0])
        accent = self._jitter(self._pick("accent", tc, r[:, 3]), r[:, 4], drift[:, 1])
        valve = self._jitter(self._pick("valve", t, r[:, 5]), r[:, 6], drift[:, 2])
        pattern = torch.searchsorted(self.pattern_cdf[t], r[:, 7:8].contiguous()).squeeze(1)
        pattern = pattern.clamp(max=len(PATTERNS) - 1)
        lo, hi = self.shape_lo[t], self.shape_hi[t]
        shape = lo + (hi - lo) * r[:, 8:16]
        if self.worn_low > 0:
            low = WORN_LOW_TOP[0] + (WORN_LOW_TOP[1] - WORN_LOW_TOP[0]) * r[:, 8]
            shape[:, 0] = torch.where(r[:, 25] < self.worn_low, low, shape[:, 0])
        feats = (r[:, 16:20] < self.feature_odds[t]).float()
        pleats, seam, valve_on, loops = feats.unbind(1)
        extra = {}
        if self.occluders:  # one more number per sample, as random_style draws it
            lo_s, hi_s = self.shift_range[t].unbind(1)
            extra["shift"] = lo_s + (hi_s - lo_s) * self._rand((batch,), generator, device)
        return {
            **extra,
            "type": t, "base": base, "accent": accent, "valve_rgb": valve, "pattern": pattern,
            "shape": shape, "pleats": pleats, "seam": seam, "valve": valve_on, "loops": loops,
            "valve_side": torch.where(r[:, 20] < 0.5, -1.0, 1.0),
            "pattern_scale": 0.1 + 0.2 * r[:, 21],
            "pattern_angle": torch.where(r[:, 22] < 0.5, (r[:, 22] * 4 - 1) * 45.0,
                                         torch.where(r[:, 22] < 0.75, 0.0, 90.0)),
            "grain": 1.0 + 5.0 * r[:, 23],
            "straps_visible": ((r[:, 24] < STRAPS_VISIBLE) & (t < len(MASK_TYPES))).float(),
            "texture": torch.clamp((r[:, 1] * len(PALETTES["photo"])).long(), max=len(PALETTES["photo"]) - 1),
        }

    def sample_lighting(self, types, generator=None, device=None) -> dict:
        """Contact shadow and sheen strengths per sample (``random_style``'s lighting): a shadow for
        every sample, a sheen for the synthetic fabrics (``SHEEN_TYPES``) only."""
        r = self._rand((types.shape[0], 2), generator, device or types.device)
        shadow = SHADOW_RANGE[0] + (SHADOW_RANGE[1] - SHADOW_RANGE[0]) * r[:, 0]
        sheen = (SHEEN_RANGE[0] + (SHEEN_RANGE[1] - SHEEN_RANGE[0]) * r[:, 1]) * self.sheen_types[types]
        return {"shadow": shadow, "sheen": sheen}

    # -- rendering ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator=None, kps: torch.Tensor | None = None):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MaskAugment: expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        device = images.device
        if kps is None:
            kps = self.default_kps(b, generator, device)
            if (h, w) != (112, 112):  # crops of another size: the template scales with them
                kps = kps * kps.new_tensor([w / 112.0, h / 112.0])
        elif kps.shape != (b, 5, 2):
            raise ValueError(f"MaskAugment: kps must have shape ({b},5,2), got {tuple(kps.shape)}")
        style = self.sample_styles(b, generator, device)
        apply = (self._rand((b,), generator, device) < self.p).float()
        noise_lo = self._randn((b, 1, 6, 6), generator, device)
        noise_hi = self._randn((b, 1, 13, 13), generator, device) * 0.5
        seeds = self._rand((b,), generator, device) * 97.0
        if self.lighting:  # drawn last: every other number of the batch is what it is without lighting
            style.update(self.sample_lighting(style["type"], generator, device))
        return self.render(images, kps.to(device=device, dtype=torch.float32), style, apply,
                           (noise_lo, noise_hi), seeds)

    def render(self, images, kps, style, apply, noise, seeds):
        """Draw the given per-sample styles; only rows below the highest eye line are computed."""
        b, _, h, w = images.shape
        y0 = _first_row(kps, h, w)
        if y0 >= h:
            return images, torch.zeros_like(images[:, :1])
        part = images[:, :, y0:]
        kps = kps - kps.new_tensor([0.0, float(y0)])
        # (chunks only where they align with any SIMD width: a transcendental function's vector path
        # and its scalar tail can differ in the last bit, so a sample must not change paths)
        step = CPU_CHUNK if images.device.type == "cpu" and w % 16 == 0 else b
        if step >= b and y0 == 0:
            return self._render_rows(part, kps, style, apply, noise, seeds)
        # the rows above pass through; the drawn rows are written into place, a few samples at a
        # time on a CPU (their temporaries stay in the caches, where the batch's would not)
        masked = torch.empty_like(images)
        masked[:, :, :y0] = images[:, :, :y0]
        region = images.new_zeros((b, 1, h, w))
        for i in range(0, b, step):
            masked[i:i + step, :, y0:], region[i:i + step, :, y0:] = self._render_rows(
                part[i:i + step], kps[i:i + step], _slice(style, i, step), apply[i:i + step],
                [n[i:i + step] for n in noise], seeds[i:i + step])
        return masked, region

    def _render_rows(self, images, kps, style, apply, noise, seeds):
        b, _, h, w = images.shape
        device = images.device
        frame = geo.face_frame(torch, kps)
        shift = _bcast(style["shift"]) if "shift" in style else 0.0
        shape = geo.MaskShape(*[_bcast(c) for c in style["shape"].unbind(1)], shift)
        xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, 1, w)
        ys = torch.arange(h, device=device, dtype=torch.float32).view(1, 1, h, 1)
        u, v, wmap = geo.face_coords(torch, frame, xs, ys)
        # occluders: (B,1,1,1) flags, None where no sample of the batch is one; styles drawn without
        # occluders (no "shift") skip the check: no device sync on the default path
        hand = scarf = thing = None
        if "shift" in style:
            hand, scarf, thing = (_flag(style["type"], kind) for kind in OCCLUDER_TYPES)

        inside = _outline_distance(frame, shape, u, v, wmap)
        if hand is not None:
            hand_d = geo.hand_distance(torch, frame, shape, _bcast(style["valve_side"]), u, v, wmap)
            inside = torch.where(hand > 0, hand_d, inside)
        a_mask = geo.coverage(torch, inside)
        # Each optional part below (straps, prints, photos, pleats, seams, valves) is computed for
        # the samples that have it only: for the others its term is an exact 0 (or factor 1), so
        # leaving them out changes no pixel and saves most of the work on a CPU.
        loops = _bcast(style["loops"])
        visible = style["straps_visible"]
        a_strap = torch.zeros_like(a_mask)
        if visible.device.type != "cpu" or bool((visible > 0).any()):
            rows = _rows_of(visible)
            frame_s, shape_s, loops_s = _take_frame(frame, rows), _take_shape(shape, rows), _take(loops, rows)
            a_s = _strap_distance(frame_s, shape_s, loops_s, xs, ys)
            # clamp(thickness / 2 - distance + 0.5, 0, 1) * (1 - a_mask) * visible
            a_s.neg_().add_(geo.strap_thickness(frame_s, loops_s) * 0.5).add_(0.5).clamp_(0.0, 1.0)
            a_s.mul_(1.0 - _take(a_mask, rows)).mul_(_bcast(_take(visible, rows)))
            if rows is None:
                a_strap = a_s
            else:
                a_strap[rows] = a_s

        # the face's exposure and side light, measured on the cheeks the mask will cover
        pix = images.float() * 127.5
        pix += 127.5
        gray = 0.299 * pix[:, 0:1]
        gray += 0.587 * pix[:, 1:2]
        gray += 0.114 * pix[:, 2:3]
        window = geo.cheek_window(torch, u, v)
        left = (window & (u < 0)).float()  # window * (u < 0) and window - left, as 0/1 floats
        right = (window & (u >= 0)).float()
        window = window.float()
        mean = gray.mean((2, 3), keepdim=True)

        def window_mean(m):
            n = m.sum((2, 3), keepdim=True)
            return torch.where(n > 0, (gray * m).sum((2, 3), keepdim=True) / n.clamp(min=1.0), mean), n

        luma_l, nl = window_mean(left)
        luma_r, nr = window_mean(right)
        cheek = torch.where(nl + nr > 0, (luma_l * nl + luma_r * nr) / (nl + nr).clamp(min=1.0), mean)
        gain = look.brightness_gain(torch, cheek)
        light = _side_light(u, luma_l, luma_r).mul_(gain)

        # prints: each is computed only when some sample of the batch wears it
        base = style["base"][:, :, None, None]
        if hand is not None:  # a hand: the colour of the cheeks it covers, tinted as random_style's
            n = window.sum((2, 3), keepdim=True)
            cheeks = (pix * window).sum((2, 3), keepdim=True) / n.clamp(min=1.0)
            skin = torch.cat(look.skin_colour(cheeks.split(1, 1), base.split(1, 1), gain), 1)
            skin = torch.where(n > 0, skin, base)
            base = torch.where(hand > 0, skin, base)
        accent = style["accent"][:, :, None, None]
        pattern = style["pattern"]
        used = set(torch.unique(pattern).tolist())
        prints_used = used - {0, PHOTO}
        pat = None
        if prints_used:  # each print on the samples that wear it (0 elsewhere, as a one-hot sum)
            angle = torch.deg2rad(style["pattern_angle"])
            scale = _bcast(style["pattern_scale"])
            cos_a, sin_a = _bcast(torch.cos(angle)), _bcast(torch.sin(angle))
            pat = torch.zeros_like(u)
            for k in sorted(prints_used):
                rows = torch.nonzero(pattern == k).squeeze(1)
                u_k, v_k, depth_k, scale_k = u[rows], v[rows], frame.depth[rows], scale[rows]
                r1, r2 = look.fabric_coords(u_k, v_k, wmap[rows], depth_k, cos_a[rows], sin_a[rows], scale_k)
                if k == 1:
                    pat[rows] = look.print_checks(torch, r1, r2)
                elif k == 2:
                    pat[rows] = look.print_stripes(torch, r1, r2)
                elif k == 3:
                    pat[rows] = look.print_dots(torch, r1, r2, scale_k * depth_k)
                else:
                    pat[rows] = look.print_noise(torch, self._noise([n[rows] for n in noise], u_k, v_k))
        color = base if pat is None else ((accent - base) * pat).add_(base)  # base + (accent - base) * pat
        if PHOTO in used:  # photographed masks: the photo over the outline, sampled for their rows only
            rows = torch.nonzero(pattern == PHOTO).squeeze(1)
            tx, ty = textures.texture_coords(torch, _take_frame(frame, rows), _take_shape(shape, rows),
                                             u[rows], v[rows])
            grid = torch.stack([tx * 2.0 - 1.0, ty * 2.0 - 1.0], -1)[:, 0]
            photo = F.grid_sample(self.photos[style["texture"][rows]], grid, mode="bilinear",
                                  padding_mode="border", align_corners=True)
            color = color.expand(-1, -1, *photo.shape[2:]).clone()
            color[rows] = photo

        shade = _surface(frame, u, v).mul_(_edge_band(frame, inside))
        for key in ("pleats", "seam"):
            flags = style[key]
            if not bool(flags.any()):
                continue
            rows = _rows_of(flags)
            frame_s = _take_frame(frame, rows)
            if key == "pleats":
                fold = look.pleat_folds(torch, frame_s, _take_shape(shape, rows), _take(v, rows))
            else:
                fold = look.centre_seam(torch, frame_s, _take(u, rows), _take(wmap, rows))
            factor = 1.0 + _bcast(_take(flags, rows)) * (fold - 1.0)
            if rows is None:
                shade = shade * factor
            else:
                shade[rows] = shade[rows] * factor
        grain_scale = _bcast(style["grain"])
        if hand is not None:
            shade = shade * (1.0 + hand * (look.finger_folds(torch, frame, shape, v) - 1.0))
            grain_scale = grain_scale * (1.0 - (1.0 - SKIN_GRAIN) * hand)
        if scarf is not None:
            shade = shade * (1.0 + scarf * (look.knit_ribs(torch, frame, u, wmap) - 1.0))
        layer = color * shade.mul_(light)  # color * (shade * light)
        # per-pixel fabric grain from a coordinate hash: device-side, no generator state needed
        # (in place from here on: every B x H x W temporary costs a fresh allocation, and on a CPU
        # its page faults cost as much as the arithmetic)
        grain = (xs * 12.9898 + ys * 78.233) + _bcast(seeds)
        grain.sin_().mul_(43758.5453)
        grain.sub_(torch.floor(grain)).sub_(0.5).mul_(3.46).mul_(grain_scale)
        layer += grain
        if "sheen" in style:  # styles drawn with lighting
            sheen = _bcast(style["sheen"]) * look.sheen_lobe(torch, u, v, luma_l, luma_r)
            layer = layer + (250.0 * gain - layer) * sheen

        if bool(style["valve"].any()):
            rows = _rows_of(style["valve"])
            frame_s = _take_frame(frame, rows)
            side = _bcast(_take(style["valve_side"], rows))
            cx, cy = geo.valve_center(frame_s, _take_shape(shape, rows), side)
            radius = geo.valve_radius(frame_s)
            v_in = radius - torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            a_valve = geo.coverage(torch, v_in) * _take(a_mask, rows) * _bcast(_take(style["valve"], rows))
            rgb = _take(style["valve_rgb"], rows)[:, :, None, None]
            valve = rgb * (look.valve_shading(torch, v_in, radius) * _take(light, rows))
            if rows is None:
                layer = layer + (valve - layer) * a_valve
            else:
                part = layer[rows]
                layer[rows] = part + (valve - part) * a_valve
        if thing is not None:
            spec = thing * look.specular_band(torch, shape.centred(u), shape.width)
            layer = layer + (250.0 * gain - layer) * spec

        surgical = _bcast((style["type"] == MASK_TYPES.index("surgical")).float())
        strap_rgb = (base * 0.85 + 30.0) * (1.0 - surgical) + 225.0 * surgical
        straps = strap_rgb * light

        keep = _bcast(apply)
        every = bool((apply > 0).all())  # p = 1 (the default): multiplying by keep changes nothing
        if not every:
            a_mask = a_mask * keep
            a_strap = a_strap * keep
        f = straps.sub_(pix).mul_(a_strap).add_(pix)  # pix + (straps - pix) * a_strap
        if "shadow" in style:
            f *= look.contact_shadow(torch, frame, inside, v, _bcast(style["shadow"]) * keep)
        f += layer.sub_(f).mul_(a_mask)  # f + (layer - f) * a_mask
        # add the change rather than re-normalise: untouched pixels stay bit-identical
        change = f.clamp_(0, 255).sub_(pix).div_(127.5)
        masked = change.add_(images.float()).clamp_(-1, 1).to(images.dtype)
        if not every:
            masked = torch.where(keep > 0, masked, images)
        region = torch.maximum(a_mask, a_strap)
        return masked, region.to(images.dtype)

    @staticmethod
    def _noise(noise, u, v):
        """Smooth two-octave noise sampled at face coordinates (as the per-image renderer's)."""
        grid = torch.cat([u / 1.4, (v - 0.1) / 0.9 - 1.0], 1).permute(0, 2, 3, 1)
        return sum(F.grid_sample(n, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
                   for n in noise)


# In-place twins of geometry's and appearance's formulas for the batch-sized maps: the same
# operations in the same order (so the same floats: tests/test_mask_batched.py checks them bit for
# bit), without a fresh B x H x W tensor per operation; on a CPU, the page faults of those fresh
# tensors cost about as much as the arithmetic.

def _outline_distance(frame, shape, u, v, w):
    """``geometry.outline_distance``."""
    u = shape.centred(u)
    au = u.abs()
    top = (shape.top_curve * u).mul_(u).add_(shape.top_centre(torch, frame)).add_(shape.top_point * au)
    d = top.neg_().add_(v).mul_(frame.depth)  # (v - top) * depth
    bottom = (shape.bottom_curve * u).mul_(u).neg_().add_(shape.bottom).sub_(shape.bottom_point * au)
    torch.minimum(d, bottom.sub_(v).mul_(frame.depth), out=d)
    # side edge: width * (1 - jaw * below * below), below = max(v - 1, 0)
    below = (v - 1.0).clamp_min_(0.0)
    side = (shape.jaw * below).mul_(below).neg_().add_(1.0).mul_(shape.width)
    return torch.minimum(d, side.sub_(au).mul_(w), out=d)


def _side_light(u, left_luma, right_luma):
    """``appearance.side_light``."""
    slope = 1.4 * (right_luma - left_luma) / (right_luma + left_luma + 1.0)
    return u.clamp(-1.0, 1.0).mul_(slope).add_(1.0).clamp_(0.5, 1.5)


def _surface(frame, u, v):
    """``appearance.surface``."""
    s = (0.28 * u).mul_(u).neg_().add_(1.0).sub_((v - 1.25).clamp_min_(0.0).mul_(0.35))
    ridge = (u.abs().mul_(3.0)).neg_().add_(1.0).clamp_(0.0, 1.0)
    ridge.mul_((v - frame.nose_v * 0.9).abs_().mul_(4.0).neg_().add_(1.0).clamp_(0.0, 1.0))
    return s.mul_(ridge.mul_(0.06).add_(1.0))


def _edge_band(frame, inside):
    """``appearance.edge_band``."""
    band = (inside / (0.06 * frame.depth + 1.0)).neg_().add_(1.0).clamp_(0.0, 1.0)
    return band.mul_(0.1).neg_().add_(1.0)


def _strap_distance(frame, shape, loops, x, y):
    """``geometry.strap_distance`` (``segment_distance2`` per segment)."""
    dist2 = None
    for ax, ay, bx, by in geo.strap_segments(frame, shape, loops):
        dx, dy = bx - ax, by - ay
        px, py = x - ax, y - ay
        t = (px * dx + py * dy).mul_(1.0 / (dx * dx + dy * dy + 1e-6)).clamp_(0.0, 1.0)
        ex = (t * dx).neg_().add_(px)
        ey = t.mul_(dy).neg_().add_(py)
        dd = ex.mul_(ex).add_(ey.mul_(ey))
        dist2 = dd if dist2 is None else torch.minimum(dist2, dd, out=dist2)
    return dist2.sqrt_()


def _slice(style, start, length):
    """Samples ``start`` to ``start + length`` of a dict of per-sample tensors."""
    return {k: v[start:start + length] for k, v in style.items()}


def _rows_of(flags):
    """Indices of the samples whose (B,) flag is on; None when every sample's is, or off the CPU
    (a GPU computes the whole batch faster than it finds the subset: no device sync)."""
    if flags.device.type != "cpu":
        return None
    on = flags > 0
    if bool(on.all()):
        return None
    return torch.nonzero(on).squeeze(1)


def _take(t, rows):
    """Samples ``rows`` of a per-sample tensor (a plain number, or anything with no batch, as is)."""
    if rows is None or not torch.is_tensor(t) or t.ndim == 0 or t.shape[0] == 1:
        return t
    return t[rows]


def _take_frame(frame, rows):
    return geo.FaceFrame(*(_take(getattr(frame, k), rows) for k in (
        "cx", "cy", "ax", "ay", "nose_u", "depth", "w_left", "w_right", "nose_v")))


def _take_shape(shape, rows):
    return geo.MaskShape(*(_take(getattr(shape, k), rows) for k in (
        "top", "top_curve", "top_point", "bottom", "bottom_curve", "bottom_point", "width", "jaw", "shift")))


def _flag(types, kind):
    """(B,1,1,1) float flag of the samples of one type; None when the batch has none."""
    on = types == ALL_TYPES.index(kind)
    return _bcast(on.float()) if bool(on.any()) else None


def _first_row(kps, h: int, w: int) -> int:
    """First image row that can be drawn on: above the eye line nothing is (all v >= 0)."""
    el, er = kps[:, 0], kps[:, 1]
    dx, dy = er[:, 0] - el[:, 0], er[:, 1] - el[:, 1]
    if not bool((dx > 2.0 * dy.abs()).all()):  # strongly rolled or flipped faces: all rows
        return 0
    slope = dy / dx
    at0 = el[:, 1] - el[:, 0] * slope
    top = torch.minimum(at0, at0 + (w - 1) * slope).min()
    return int(max(0.0, math.floor(float(top)) - 1))
