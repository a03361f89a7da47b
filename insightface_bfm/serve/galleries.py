"""The service's galleries: ``NAME.npz`` files under ``--gallery-dir``, the format ``bfm gallery``
reads and writes, so either side reads what the other wrote.

Writes (enrol, remove) are serialised per gallery: a thread lock inside this process, then the
gallery's run lock (``runlock.output_lock``, waited for) against other processes: another worker
of ``--workers N`` or a ``bfm gallery enrol`` on the same file. Every save is atomic (a temporary
file, then a rename), so a reader never sees a half-written file. Searches read the file as it is
now; the loaded gallery is kept while the file is unchanged (same inode, size, mtime).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ..errors import BFMError, NotFoundError
from ..matching import Gallery
from ..recognition.gallery import enrol_pictures, list_gallery, remove_identities, searchable_gallery

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SUFFIX = ".npz"


class GalleryStore:
    def __init__(self, directory, app, *, lock_wait: float = 30.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.lock_wait = lock_wait
        self._guard = threading.Lock()
        self._writers: dict[str, threading.Lock] = {}
        self._loaded: dict[str, tuple[tuple, Gallery]] = {}

    def path(self, name: str) -> Path:
        if not NAME.match(name or "") or name.endswith(SUFFIX):
            raise BFMError(f"gallery name {name!r}: use letters, digits, '.', '_' and '-' (up to 100, "
                           f"no {SUFFIX})")
        return self.directory / f"{name}{SUFFIX}"

    def _writer(self, name: str) -> threading.Lock:
        with self._guard:
            return self._writers.setdefault(name, threading.Lock())

    def existing(self, name: str) -> Path:
        path = self.path(name)
        if not path.is_file():
            raise NotFoundError(f"gallery {name!r} not found; enrol someone into it first")
        return path

    def searchable(self, name: str, k: int) -> Gallery:
        """The gallery as it is on disk now, checked against the pack, arranged for concurrent searches."""
        path = self.existing(name)
        stat = path.stat()
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._guard:
            cached = self._loaded.get(name)
        if cached is not None and cached[0] == key:
            if k < 1:
                raise BFMError(f"k must be >= 1, got {k}")
            return cached[1]
        gallery = searchable_gallery(self.app, path, k)
        gallery.grouped_rows()  # arrange the rows now: searches then only read them
        with self._guard:
            self._loaded[name] = (key, gallery)
        return gallery

    def enrol(self, name: str, identity: str, images, *, aligned: bool = False) -> dict:
        path = self.path(name)
        with self._writer(name):
            result = enrol_pictures(self.app, path, identity, images, aligned=aligned, wait=self.lock_wait)
        return {"gallery": name, **result}

    def remove(self, name: str, identity: str) -> dict:
        path = self.existing(name)
        with self._writer(name):
            try:
                removed = remove_identities(path, [identity], wait=self.lock_wait)
            except NotFoundError:
                raise NotFoundError(f"gallery {name!r}: no identity {identity!r}") from None
        return {"gallery": name, "identity": identity, "removed": removed[identity]}

    def describe(self, name: str) -> dict:
        info = list_gallery(self.existing(name))
        info["gallery"] = name
        return info
