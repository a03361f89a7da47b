"""What one ``bfm serve`` is told: the pack, where to listen, the key, the limits; checked at the door.

Plain Python (no FastAPI import), so that ``bfm serve --help`` and the checks run without the
``[serve]`` extra, and JSON-serialisable, so that ``--workers N`` can hand it to each worker process.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..errors import BFMError, MissingExtraError, first_missing_module

SERVE_EXTRA = 'pip install "insightface-bfm[serve]"'
SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")
SETTINGS_ENV = "BFM_SERVE_SETTINGS"  # how the settings reach the worker processes of --workers N


@dataclass
class ServeSettings:
    pack: str = "bfm"
    root: str | None = None
    det_size: int = 640
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None  # requests analysed at once per worker; None: the CPU count
    api_key: str | None = None
    gallery_dir: str = "galleries"
    max_upload_mb: float = 10.0
    drain_timeout: float = 30.0
    access_log: bool = False
    providers: list | None = None

    def check(self) -> ServeSettings:
        """Raise ``BFMError`` naming the first bad setting."""
        if self.det_size < 32 or self.det_size % 32:
            raise BFMError(f"--det-size {self.det_size}: expected a multiple of 32 (e.g. 640)")
        if not 0 <= self.port <= 65535:
            raise BFMError(f"--port {self.port}: expected 0..65535")
        if self.workers < 1:
            raise BFMError(f"--workers {self.workers}: expected at least 1")
        if self.threads is not None and self.threads < 1:
            raise BFMError(f"--threads {self.threads}: expected at least 1")
        if not self.max_upload_mb > 0:
            raise BFMError(f"--max-upload-mb {self.max_upload_mb}: expected a positive size")
        if self.drain_timeout < 0:
            raise BFMError(f"--drain-timeout {self.drain_timeout}: expected seconds >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise BFMError("--api-key: empty key (unset it, or give a key)")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def inference_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


def require_serving(command: str = "bfm serve") -> None:
    """Fail with one line naming the ``[serve]`` extra when one of its packages is absent."""
    module = first_missing_module(SERVE_MODULES)
    if module is not None:
        name = "python-multipart" if module == "multipart" else module.replace("_", "-")
        raise MissingExtraError(f"{command} needs the serve extra ({name} is not installed): {SERVE_EXTRA}")
