"""insightface-bfm: masked-face recognition by Balanced Feature Matching for insightface.

"BFM" here means Balanced Feature Matching (Huang, Tsao, Chen), not the Basel Face Model
that insightface's mask renderer uses.

The public API is loaded lazily so that ``import insightface_bfm`` stays light and never
imports torch: torch lives behind the ``[train]`` extra.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "FaceAnalysis": "insightface_bfm.app",
    "compare": "insightface_bfm.matching",
    "Gallery": "insightface_bfm.matching",
    "render_mask": "insightface_bfm.masks",
    "MaskStyle": "insightface_bfm.masks",
    "open_dataset": "insightface_bfm.data",
    "BFMError": "insightface_bfm.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'insightface_bfm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
