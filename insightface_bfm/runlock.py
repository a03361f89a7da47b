"""One run at a time per output: a lock on the destination, and SIGTERM ended like Ctrl-C.

Long commands that write into a folder or file (``bfm mask``, ``bfm align``, ``bfm gallery
enrol``) hold ``output_lock(target, command)`` while they run. The lock is an OS advisory lock
(``flock``) on a small file beside the output (``DST/.bfm.lock`` for a folder,
``.NAME.bfm.lock`` next to a file) that also records who holds it; a second run into the same
output fails at once with one line naming the holder. The holder removes the file when it ends;
the OS drops the lock however the holder exits, so even a killed run (SIGKILL) leaves no stale
lock, only the small file, which the next run takes over.

While the lock is held, SIGTERM (``kill PID``, a job scheduler's stop) raises
``KeyboardInterrupt`` in the main thread, as Ctrl-C does: the ``finally`` blocks that flush
manifests and remove temporary files (``atomic.atomic_open``) run instead of the process
vanishing mid-write.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from .errors import InUseError

LOCK_NAME = ".bfm.lock"


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C so that cleanup code runs."""


def lock_path_for(target, folder: bool = True) -> Path:
    """Where the lock of ``target`` lives: inside a folder, or beside a file."""
    target = Path(target)
    return target / LOCK_NAME if folder else target.parent / f".{target.name}{LOCK_NAME}"


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, since {when})"


@contextlib.contextmanager
def output_lock(target, command: str, *, folder: bool = True, wait: float = 0.0):
    """Hold the lock of ``target`` (a folder, created if needed, or with ``folder=False`` a file).

    Raises ``BFMError`` naming the holder when another run holds it (after trying for ``wait``
    seconds: a service's short writes queue behind each other instead of failing).
    """
    path = lock_path_for(target, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    fd = _acquire(path)
    while fd is None and time.monotonic() < deadline:
        time.sleep(0.02)
        fd = _acquire(path)
    if fd is None:
        raise InUseError(f"{target}: in use by {_describe(path)}; wait for that run to end or stop it")
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        with sigterm_as_interrupt():
            yield path
    finally:
        # unlink while still holding the lock, then release: the folder is left as it was
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path) -> int | None:
    """An open, locked descriptor of ``path``, or None when another process holds it.

    A holder unlinks the file before releasing it; a run that opened the old file meanwhile
    finds its descriptor no longer matches the path and opens it afresh.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
