"""The door of every request (ASGI middleware): the API key, the upload limit, the metrics.

- With a key set, every path but ``/healthz`` and the OpenAPI pages needs ``Authorization: Bearer
  KEY`` or ``X-API-Key: KEY`` (compared in constant time); else 401, before the body is read.
- The body is read here, up to ``max_bytes``: a larger one (by its Content-Length, or counted as it
  streams in) is answered 413 without reaching the endpoint. What fits is handed on.
- Each request is counted and timed under its route's template (``/v1/galleries/{name}/search``,
  never the raw path, so that the metrics' labels stay few).
"""

from __future__ import annotations

import hmac
import json
import time

from starlette.routing import Match

OPEN_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
ERROR_KIND_HEADER = b"x-bfm-error-kind"
# a body past the limit is read on (and dropped) up to this much more, so that the client, still
# sending, reads the 413 instead of a reset connection; past it the connection is closed
DRAIN_BYTES = 64 * 1024 * 1024


def error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": " ".join(str(message).split()), "kind": kind}).encode("utf-8")


async def send_error(send, status: int, message: str, kind: str, extra_headers=()):
    body = error_body(message, kind)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (ERROR_KIND_HEADER, kind.encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Gate:
    def __init__(self, app, *, api_key: str | None, max_bytes: int, metrics, routes):
        self.app = app
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.routes = routes  # the FastAPI app's routes, for the endpoint label

    def endpoint_of(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "other"

    def authorised(self, scope) -> bool:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return True
        given = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        return given is not None and hmac.compare_digest(given, self.api_key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = self.endpoint_of(scope)
        answer = {"status": 500, "kind": None}

        async def watched_send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name == ERROR_KIND_HEADER:
                        answer["kind"] = value.decode()
            await send(message)

        counted = endpoint != "/metrics"  # a scrape is not traffic
        if counted:
            self.metrics.in_flight.inc()
        try:
            if not self.authorised(scope):
                await send_error(watched_send, 401, "missing or wrong API key (send Authorization: Bearer "
                                 "KEY or X-API-Key: KEY)", "unauthorized",
                                 [(b"www-authenticate", b"Bearer")])
                return
            body = await self.read_body(scope, receive)
            if body is None:
                await send_error(watched_send, 413, f"upload larger than the service's limit of "
                                 f"{self.max_bytes / 2**20:g} MB (--max-upload-mb)", "too_large",
                                 [(b"connection", b"close")])
                return
            await self.app(scope, replay(body, receive), watched_send)
        except Exception:
            answer["kind"] = answer["kind"] or "internal"
            raise
        finally:
            if counted:
                self.metrics.in_flight.dec()
                self.metrics.observe(endpoint, scope["method"], answer["status"],
                                     time.perf_counter() - started, answer["kind"])

    async def read_body(self, scope, receive) -> bytes | None:
        """The whole request body, or None when it is over the limit (read on and dropped)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await drain(receive, DRAIN_BYTES)
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await drain(receive, DRAIN_BYTES)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def drain(receive, limit: int) -> None:
    read = 0
    while read < limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def replay(body: bytes, receive):
    """A ``receive`` that hands the app the body already read, then waits as the original does."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
