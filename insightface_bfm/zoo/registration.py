"""Teach insightface's model router about our mask classifier.

insightface 2.1's ``ModelRouter.get_model`` routes by shape: any graph with a square input
of side >= 112 (multiple of 16) becomes an ``ArcFaceONNX`` recogniser. Our classifier C has
the input [N,3,112,112] of a recogniser, so ``insightface.model_zoo.get_model("mask_classifier.onnx")``
would return a "recogniser" emitting 2-D "embeddings", and a legacy model folder holding it
would let it overwrite a face's embedding.

The patch (one wrapper around ``ModelRouter.get_model``) lets insightface route as always and
then, only when the result is an ``ArcFaceONNX`` whose graph is our classifier (metadata
``role=mask_classifier``, or no role and a single 2-wide output), returns a
``MaskClassifierONNX`` over the same session instead. Everything else (SCRFD, recognisers,
landmarks, attributes, swappers, manifest-V2 tasks) is returned untouched. It is:

- minimal: no insightface code is copied or replaced, and no extra file read or session;
- idempotent: ``register()`` twice installs one wrapper;
- reversible: ``unregister()`` restores the original method.

Tested against insightface >=2.1,<2.2 (``SUPPORTED_INSIGHTFACE``); on another version
``register()`` still installs the wrapper when ``ModelRouter.get_model`` exists, and logs
a warning.
"""

from __future__ import annotations

import functools
import logging
import threading

logger = logging.getLogger(__name__)

SUPPORTED_INSIGHTFACE = ((2, 1), (2, 2))  # [lower, upper)
_MARK = "__bfm_original__"
_lock = threading.Lock()


def _router():
    from insightface.model_zoo.model_zoo import ModelRouter

    return ModelRouter


def _insightface_version() -> tuple[int, ...]:
    import insightface

    parts = []
    for piece in str(getattr(insightface, "__version__", "0")).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def is_registered() -> bool:
    return hasattr(_router().get_model, _MARK)


def register() -> bool:
    """Install the routing wrapper; returns False when it was already installed."""
    router = _router()
    with _lock:
        if hasattr(router.get_model, _MARK):
            return False
        version = _insightface_version()
        low, high = SUPPORTED_INSIGHTFACE
        if not (low <= version < high):
            logger.warning(
                "insightface %s is outside the range insightface-bfm is tested with (>=2.1,<2.2); "
                "mask-classifier routing may not apply",
                ".".join(map(str, version)),
            )
        original = router.get_model

        @functools.wraps(original)
        def get_model(self, **kwargs):
            model = original(self, **kwargs)
            return _reroute(self.onnx_file, model)

        setattr(get_model, _MARK, original)
        router.get_model = get_model
        return True


def unregister() -> bool:
    """Restore insightface's own ``ModelRouter.get_model``; False when nothing was installed."""
    router = _router()
    with _lock:
        current = router.get_model
        original = getattr(current, _MARK, None)
        if original is None:
            return False
        router.get_model = original
        return True


def _reroute(onnx_file, model):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    from ..runtime import MaskClassifierONNX, looks_like_mask_classifier

    if isinstance(model, ArcFaceONNX) and looks_like_mask_classifier(model.session):
        from ..errors import PackError

        try:
            classifier = MaskClassifierONNX(model_file=onnx_file, session=model.session)
        except PackError as e:  # not the shape we export: leave insightface's answer alone
            logger.warning("%s looks like a mask classifier but cannot be used as one: %s", onnx_file, e)
            return model
        logger.debug("routing %s to MaskClassifierONNX", onnx_file)
        return classifier
    return model
