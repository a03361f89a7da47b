"""The FastAPI application of ``bfm serve``: routes that parse, validate and call the library.

Every answer is JSON in the shape the matching command prints (``bfm analyze --json``, ``bfm
compare --json``, ``bfm gallery search --json`` / ``list --json``); every error is one line,
``{"error": "...", "kind": "..."}``, with its status: 400 bad input (not an image, a bad name or
parameter), 401 no or wrong key, 404 no such gallery or identity, 409 a gallery another program
is writing, 413 upload too large, 422 no face where one is needed or a missing field, 500 a bug.
"""

from __future__ import annotations

import logging
import os
import time

import anyio
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BFMError, ImageError, InUseError, NoFaceError, NotFoundError
from ..imaging import decode_image, encode_image
from ..recognition.analyze import face_record, image_faces, open_app
from ..recognition.compare import compare_pictures
from ..recognition.gallery import search_faces
from .galleries import GalleryStore
from .gate import ERROR_KIND_HEADER, Gate, error_body
from .metrics import ServiceMetrics
from .settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger("insightface_bfm.serve")


def error_response(status: int, message: str, kind: str) -> Response:
    return Response(error_body(message, kind), status_code=status, media_type="application/json",
                    headers={ERROR_KIND_HEADER.decode(): kind})


def classify(e: Exception) -> tuple[int, str]:
    """(HTTP status, error kind) of an exception raised by the library."""
    if isinstance(e, NoFaceError):
        return 422, "no_face"
    if isinstance(e, NotFoundError):
        return 404, "not_found"
    if isinstance(e, InUseError):
        return 409, "in_use"
    if isinstance(e, (BFMError, ImageError)):
        return 400, "bad_input"
    return 500, "internal"


class Service:
    """The loaded pack and galleries; each method is one request's work, run in a worker thread."""

    def __init__(self, settings: ServeSettings, analysis=None):
        self.settings = settings
        self.app = analysis if analysis is not None else open_app(
            settings.pack, settings.root, settings.det_size, providers=settings.providers)
        self.galleries = GalleryStore(settings.gallery_dir, self.app)
        self.metrics = ServiceMetrics()
        self.started = time.time()
        self._limiter = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made inside the event loop, on first use
            self._limiter = anyio.CapacityLimiter(self.settings.inference_threads)
        return self._limiter

    async def run(self, work, *args, **kwargs):
        """``work(*args, **kwargs)`` in a worker thread; a library error becomes its one-line answer."""
        try:
            return await anyio.to_thread.run_sync(lambda: work(*args, **kwargs), limiter=self.limiter)
        except Exception as e:  # noqa: BLE001 - every error becomes an answer, bugs logged as 500
            status, kind = classify(e)
            if status == 500:
                log.exception("request failed")
                return error_response(500, f"internal error: {type(e).__name__}: {e}", kind)
            return error_response(status, str(e), kind)

    def faces_of(self, data: bytes, name: str, *, aligned: bool, main_only: bool = False, embed="routed"):
        img = decode_image(data, name)
        faces = image_faces(self.app, img, name, aligned=aligned, main_only=main_only, embed=embed)
        self.metrics.count_faces(faces)
        return img, faces

    def analyze(self, data, name, *, aligned, embedding, draw):
        img, faces = self.faces_of(data, name, aligned=aligned)
        if draw:
            picture = self.app.draw_on(img, faces)
            return Response(encode_image(picture, ".jpg"), media_type="image/jpeg")
        return {"image": name, "faces": [face_record(f, embedding=embedding, kps=True) for f in faces]}

    def compare(self, a, b, name_a, name_b, *, threshold, aligned):
        img_a, img_b = decode_image(a, name_a), decode_image(b, name_b)
        record = compare_pictures(self.app, img_a, img_b, name_a, name_b, threshold=threshold,
                                  aligned=aligned)
        self.metrics.count_faces([record["face_a"], record["face_b"]])
        return record

    def search(self, gallery_name, data, name, *, k, threshold, aligned, draw):
        gallery = self.galleries.searchable(gallery_name, k)
        # the pack's open-set thresholds, set for this gallery's size (its 1:1 one, with a warning,
        # for a pack without them)
        thresholds = self.app.search_thresholds(threshold, gallery_size=len(gallery))
        img, faces = self.faces_of(data, name, aligned=aligned)
        records, labels = search_faces(self.app, gallery, faces, k=k, thresholds=thresholds)
        if draw:
            picture = self.app.draw_on(img, faces, labels)
            return Response(encode_image(picture, ".jpg"), media_type="image/jpeg")
        return {"image": name, "gallery": gallery_name, "faces": records}

    def enrol(self, gallery_name, identity, images, *, aligned):
        return self.galleries.enrol(gallery_name, identity, images, aligned=aligned)

    def health(self) -> dict:
        pack = self.app.pack
        return {
            "status": "ok",
            "version": __version__,
            "pack": pack.name,
            "pack_version": pack.version,
            "pack_path": str(pack.path),
            # load_pack checked every file, and each session was built from bytes checked as read
            "sha256_verified": True,
            "files": dict(pack.files),
            "embedding_size": pack.embedding_size,
            "providers": list(self.app.full.session.get_providers()),
            "workers": self.settings.workers,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
        }


def create_app(settings: ServeSettings | None = None, analysis=None) -> FastAPI:
    """The service as an ASGI app; loads the pack now (a bad pack fails here, before listening).

    ``analysis``: an already prepared ``FaceAnalysis`` to serve instead of loading ``settings.pack``.
    """
    settings = (settings or ServeSettings()).check()
    service = Service(settings, analysis)
    api = FastAPI(
        title="insightface-bfm",
        version=__version__,
        description="Masked-face recognition by Balanced Feature Matching: C routes each face to E_F or E_P.",
    )
    api.state.service = service

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        kind = {404: "not_found", 405: "bad_input"}.get(exc.status_code, "bad_input")
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind)

    @api.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, f"{request.method} {request.url.path}: " + "; ".join(problems), "invalid")

    @api.get("/healthz", summary="Pack, version, checksums, providers")
    async def healthz():
        return service.health()

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        return Response(service.metrics.text(), media_type=service.metrics.content_type)

    @api.post("/v1/analyze", summary="Every face of a photo: box, keypoints, masked, route")
    async def analyze(
        image: UploadFile = File(..., description="The photo (JPEG, PNG, ...)."),
        aligned: bool = Query(False, description="The photo is a 112x112 aligned crop: no detection."),
        embedding: bool = Query(False, description="Add each face's normalised embedding."),
        draw: bool = Query(False, description="Answer with the labelled picture (JPEG) instead."),
    ):
        data = await image.read()
        return await service.run(service.analyze, data, image.filename or "image", aligned=aligned,
                                 embedding=embedding, draw=draw)

    @api.post("/v1/compare", summary="Same person? The main faces of two photos by the pair rule")
    async def compare(
        image_a: UploadFile = File(...),
        image_b: UploadFile = File(...),
        threshold: float | None = Query(None, description="Squared L2 distance (default: the pack's)."),
        aligned: bool = Query(False, description="Both photos are 112x112 aligned crops."),
    ):
        a, b = await image_a.read(), await image_b.read()
        return await service.run(service.compare, a, b, image_a.filename or "image_a",
                                 image_b.filename or "image_b", threshold=threshold, aligned=aligned)

    @api.post("/v1/galleries/{name}/identities", summary="Enrol a person (the main face of each image)")
    async def enrol(
        name: str,
        identity: str = Form(..., description="The person's name."),
        images: list[UploadFile] = File(..., description="One or more photos of the person."),
        aligned: bool = Query(False, description="The photos are 112x112 aligned crops."),
    ):
        uploads = [(f.filename or f"image{i}", await f.read()) for i, f in enumerate(images)]
        return await service.run(service.enrol, name, identity, uploads, aligned=aligned)

    @api.post("/v1/galleries/{name}/search", summary="Who is it? Top-k entries for every face of a photo")
    async def search(
        name: str,
        image: UploadFile = File(...),
        k: int = Query(5, description="Matches per face."),
        threshold: float | None = Query(None, description="Squared L2 distance above which a face is "
                                                          "'unknown' (default: the pack's open-set "
                                                          "thresholds for this gallery's size)."),
        aligned: bool = Query(False, description="The photo is a 112x112 aligned crop."),
        draw: bool = Query(False, description="Answer with the labelled picture (JPEG) instead."),
    ):
        data = await image.read()
        return await service.run(service.search, name, data, image.filename or "image", k=k,
                                 threshold=threshold, aligned=aligned, draw=draw)

    @api.get("/v1/galleries/{name}", summary="Identities of a gallery and their entries")
    async def describe(name: str):
        return await service.run(service.galleries.describe, name)

    @api.delete("/v1/galleries/{name}/identities/{identity}", summary="Remove every entry of a person")
    async def remove(name: str, identity: str):
        return await service.run(service.galleries.remove, name, identity)

    api.add_middleware(Gate, api_key=settings.api_key, max_bytes=settings.max_upload_bytes,
                       metrics=service.metrics, routes=api.router.routes)
    return api


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``bfm serve --workers N`` (settings from the environment)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise BFMError(f"${SETTINGS_ENV} is not set: start the service with `bfm serve`")
    return create_app(ServeSettings.from_json(text))
