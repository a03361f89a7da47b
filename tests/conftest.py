"""Shared fixtures. Real data and models come from ../shared, used in place, read-only."""

import http.server
import importlib.util
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # pytest-xdist absent: the suite runs in one process
    LoadFileScheduling = None

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts) -> Path:
    """Path into ../shared; skips the calling test with a reason where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (real data and models) is not laid beside this clone")
    return path


@pytest.fixture
def shared():
    return shared_path


def pytest_configure(config):
    # Two workers on two cores: a subprocess (a doc block's bfm-train, torchrun, a CLI run) that
    # ran torch on two OpenMP threads would fight the other worker, and its spinning threads cost
    # CPU time (two training doc pages: 62 s -> 50 s CPU here). The workers' own torch runs on one
    # thread already (the test modules' torch.set_num_threads(1)).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_benchmark(script: Path, args: list[str]) -> None:
    """``python SCRIPT ARGS`` in this process: SCRIPT's ``main(ARGS)`` must return 0. A fresh interpreter
    would import torch and insightface again (seconds of each smoke run); the ``sys.path`` entries
    and environment variables that the script sets are taken back afterwards."""
    path, environ = list(sys.path), dict(os.environ)
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        assert module.main(args) == 0, f"{script.name} {' '.join(args)} returned non-zero"
    finally:
        sys.path[:] = path
        for name in set(os.environ) - set(environ):
            del os.environ[name]
        os.environ.update(environ)


# -- a local HTTP server on 127.0.0.1 (Range requests, cut transfers, errors) for download tests --

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = {}
        self.drop_after = {}  # path -> bytes sent before the connection is dropped (first request only)
        self.fail_first = set()  # paths answering 503 once
        self.ignore_range = False
        self.log = []

    def url(self, path):
        return f"http://127.0.0.1:{self.server_port}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if self.path in srv.fail_first:
            srv.fail_first.discard(self.path)
            self.send_error(503)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = srv.drop_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# -- two workers (pytest-xdist, pyproject's `--dist loadfile`) ------------------------------------
# A file goes whole to one worker (its module fixtures are built once, its order kept), except that
# each page of tests/test_docs.py is a unit of its own. The costliest units go out first and a worker
# takes its next unit only on its last test, so that one worker does not end long after the other.
# Rough serial seconds of the costliest units on the 2-core box, for that order only (an unlisted
# unit counts 0; a stale figure costs some balance, never a test).
UNIT_SECONDS = {
    "tests/test_mxnet_fixture.py": 55,
    "tests/test_docs.py::test_page_blocks_run_as_written[docs/guides/app.md]": 37,
    "tests/test_mask_families.py": 32,
    "tests/test_docs.py::test_page_blocks_run_as_written[docs/guides/training.md]": 30,
    "tests/test_docs.py::test_page_blocks_run_as_written[docs/guides/packs.md]": 26,
    "tests/test_eval_cli.py": 26,
    "tests/test_recognition.py": 25,
    "tests/test_serve.py": 25,
    "tests/test_classifier_training.py": 20,
    "tests/test_docs.py::test_page_blocks_run_as_written[docs/guides/evaluation.md]": 20,
    "tests/test_app.py": 18,
    "tests/test_real_faces.py": 17,
    "tests/test_runlock.py": 16,
    "tests/test_trainer.py": 16,
    "tests/test_distributed.py": 15,
    "tests/test_build.py": 15,
    "tests/test_pack_lifecycle.py": 14,
    "tests/test_docs.py::test_page_blocks_run_as_written[README.md]": 14,
    "tests/test_import_onnx.py": 11,
    "tests/test_partial_fc.py": 10,
    "tests/test_verification.py": 25,
    "tests/test_docs.py::test_page_blocks_run_as_written[docs/guides/open-set.md]": 10,
}

if LoadFileScheduling is not None:
    class CostFirstScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/test_docs.py::test_page_blocks_run_as_written["):
                return nodeid  # a doc page: its own unit (each sets up its own sandbox)
            return super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            costliest = max(self.workqueue, key=lambda unit: UNIT_SECONDS.get(unit, 0))  # ties: file order
            self.workqueue.move_to_end(costliest, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node) -> None:
            # as xdist's, but a worker asks for more when one test is left (xdist: two): a worker
            # holds back its last test until it knows the next one, so it never waits idle
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") == "loadfile":
            return CostFirstScheduling(config, log)
        return None
