"""The service's Prometheus metrics, in a registry of its own (one per app, so that two apps in
one process, as in tests, do not collide).

- ``bfm_requests_total{endpoint,method,status}`` and ``bfm_request_seconds{endpoint}`` (histogram);
- ``bfm_requests_in_flight``;
- ``bfm_faces_total{masked}`` and ``bfm_masked_share`` (masked faces / faces, since start);
- ``bfm_errors_total{kind}`` (bad_input, no_face, invalid, unauthorized, not_found, in_use,
  too_large, internal).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("bfm_requests", "HTTP requests answered.", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("bfm_request_seconds", "Time from request to response.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        r = self.registry
        self.in_flight = Gauge("bfm_requests_in_flight", "Requests being answered now.", registry=r)
        self.faces = Counter("bfm_faces", "Faces analysed, by C's verdict.", ["masked"], registry=r)
        self.errors = Counter("bfm_errors", "Error answers, by kind.", ["kind"], registry=r)
        share = Gauge("bfm_masked_share", "Share of analysed faces that C called masked.", registry=r)
        self._counts = [0, 0]  # faces, masked
        self._lock = threading.Lock()
        share.set_function(self._masked_share)

    def _masked_share(self) -> float:
        with self._lock:
            faces, masked = self._counts
        return masked / faces if faces else 0.0

    def count_faces(self, faces) -> None:
        masked = sum(bool(f.get("masked")) for f in faces)
        with self._lock:
            self._counts[0] += len(faces)
            self._counts[1] += masked
        if masked:
            self.faces.labels(masked="true").inc(masked)
        if len(faces) - masked:
            self.faces.labels(masked="false").inc(len(faces) - masked)

    def observe(self, endpoint: str, method: str, status: int, seconds: float, error_kind: str | None):
        self.requests.labels(endpoint=endpoint, method=method, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)
        if error_kind:
            self.errors.labels(kind=error_kind).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
