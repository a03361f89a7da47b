"""``bfm serve``: Balanced Feature Matching over HTTP, for apps in any language.

A thin FastAPI layer over ``recognition`` and ``matching`` (what ``bfm analyze``, ``bfm compare``
and ``bfm gallery`` run), answering in the JSON shapes those commands print:

- ``POST /v1/analyze``, ``POST /v1/compare``: photos in, faces and the pair rule's answer out;
- ``/v1/galleries/{name}/...``: enrol, search, list, remove, on the gallery ``.npz`` files that
  ``bfm gallery`` reads and writes (``--gallery-dir``), one writer at a time, atomic saves;
- ``GET /healthz``, ``GET /metrics`` (Prometheus), OpenAPI at ``/docs``.

The networks are loaded once per worker and shared by its requests (ONNX Runtime sessions are
thread-safe for ``run``); the analysis runs in threads, off the event loop. Needs the
``[serve]`` extra (FastAPI, uvicorn, python-multipart, prometheus-client); torch-free.
"""

from ..lazy import lazy_names

_EXPORTS = {
    "ServeSettings": ".settings",
    "create_app": ".app",
    "run_server": ".server",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
