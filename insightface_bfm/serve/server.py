"""Running the service: uvicorn on a socket we bind ourselves, drained on SIGTERM, exit status 0.

Binding first turns a port in use into one line (``BFMError``) instead of a log and exit 1.
uvicorn stops accepting on SIGTERM/SIGINT, lets the requests in flight finish (up to
``--drain-timeout`` seconds) and returns; its stock server then re-raises the signal, which would
end the process with status -15, so ``DrainingServer`` does not: a drained stop is a clean exit.
With ``--workers N`` uvicorn's supervisor runs N processes on the one socket, each loading the pack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading

import uvicorn
from uvicorn.supervisors import Multiprocess

from ..errors import BFMError
from .settings import SETTINGS_ENV, ServeSettings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BFMError(f"{host}:{port}: cannot listen there ({e.strerror or e})") from None
    sock.listen(2048)  # connections made before uvicorn starts wait in the queue instead of being refused
    sock.set_inheritable(True)
    return sock


def run_server(settings: ServeSettings, *, on_ready=None) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and return. ``on_ready(url)`` once listening."""
    from .app import create_app

    settings.check()
    common = {"log_level": "info", "access_log": settings.access_log,
              "timeout_graceful_shutdown": settings.drain_timeout, "lifespan": "off"}
    if settings.workers == 1:
        app = create_app(settings)  # the pack is loaded and checked before the port is taken
        config = uvicorn.Config(app, host=settings.host, port=settings.port, **common)
    else:
        from ..zoo.packs import load_pack
        from ..zoo.registry import ensure_pack

        load_pack(ensure_pack(settings.pack, settings.root), settings.root)  # fail here, not in N workers
        os.environ[SETTINGS_ENV] = settings.to_json()
        config = uvicorn.Config("insightface_bfm.serve.app:app_from_environment", factory=True,
                                host=settings.host, port=settings.port, workers=settings.workers, **common)
    sock = listen(settings.host, settings.port)
    server = DrainingServer(config)
    if on_ready is not None:
        host, port = sock.getsockname()[:2]
        on_ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
    try:
        if settings.workers == 1:
            server.run(sockets=[sock])
        else:
            # the supervisor drains its workers on SIGTERM and returns: this process exits 0
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
