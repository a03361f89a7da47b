"""Synthetic face masks: styles, geometry from 5 points, a per-image and a batched renderer.

``render_mask`` (numpy + cv2) is the per-image renderer; the torch ``MaskAugment`` lives in
``insightface_bfm.masks.batched`` and is imported only by whoever needs it, so importing this
package never imports torch.
"""

from .render import check_kps, render_mask
from .styles import (
    ALL_TYPES,
    MASK_FAMILIES,
    MASK_TYPES,
    OCCLUDER_FAMILY,
    OCCLUDER_TYPES,
    PATTERNS,
    MaskStyle,
    check_types,
    family_of,
    random_style,
    types_without,
)

__all__ = ["ALL_TYPES", "MASK_FAMILIES", "MASK_TYPES", "OCCLUDER_FAMILY", "OCCLUDER_TYPES", "PATTERNS",
           "MaskStyle", "check_kps", "check_types", "family_of", "random_style", "render_mask",
           "types_without"]
