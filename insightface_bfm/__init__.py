"""insightface-bfm: masked-face recognition by Balanced Feature Matching for insightface.

"BFM" here means Balanced Feature Matching (Huang, Tsao, Chen), not the Basel Face Model
that insightface's mask renderer uses.

The public API is loaded lazily so that ``import insightface_bfm`` stays light and never
imports torch: torch lives behind the ``[train]`` extra.

Importing the package registers the mask-classifier model type in insightface's model router
(``zoo.registration``): at once when insightface's model zoo is already imported, else the moment
it is (an import hook), so ``bfm --help`` does not pay for importing insightface.
"""

import sys
from importlib.abc import MetaPathFinder

from .lazy import lazy_names

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


__getattr__, _dir = lazy_names(__name__, _EXPORTS)


def __dir__():
    return __all__


_ROUTER_MODULE = "insightface.model_zoo.model_zoo"


class _RegisterOnImport(MetaPathFinder):
    """Finds nothing itself: wraps the loading of insightface's model-zoo module so that our
    router patch is installed right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _ROUTER_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            _register_now()

        loader.exec_module = exec_module
        return spec


def _register_now():
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterOnImport)]:
        sys.meta_path.remove(finder)
    from .zoo.registration import register

    register()


if _ROUTER_MODULE in sys.modules:
    _register_now()
elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterOnImport())

