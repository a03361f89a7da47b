"""Downloads for the model zoo: resumable, checksummed, atomic, and safe to unpack.

``download_file`` fetches one URL into ``DEST.part`` (resuming it with an HTTP Range request
when a previous attempt was cut off), retries network failures and 5xx answers with
exponential back-off, checks the sha256, and only then renames the file to ``DEST``. A
file already at ``DEST`` (a finished earlier download, or one put there by hand) is checked
and used without touching the network.

``extract_zip`` refuses archives with absolute paths, ``..`` components, drive letters or
symbolic links (zip-slip) before writing anything, and unpacks into a temporary folder
that is renamed into place.

``install`` ties them to a registry entry: ``ROOT/models/NAME/`` plus a receipt
(``.bfm-receipt.json``) of the sha256 of every installed file, which ``bfm models verify``
checks later.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import zipfile
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from ..atomic import atomic_write_text
from ..errors import ChecksumError, DownloadError, PackError

logger = logging.getLogger(__name__)

RECEIPT = ".bfm-receipt.json"
DOWNLOADS_DIR = ".downloads"
CHUNK = 1 << 20
_NO_RETRY = {400, 401, 403, 404, 410}


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in chunks (the checksum of downloads, registries and packs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# path -> [size, mtime_ns, sha256] while ``remembered_hashes`` is active (``bfm models list``)
_REMEMBERED: ContextVar[dict | None] = ContextVar("bfm_remembered_hashes", default=None)


def checked_sha256(path) -> str:
    """``sha256_file``; inside ``remembered_hashes``, the hash remembered for a file of the same size
    and modification time instead of reading it again."""
    cache = _REMEMBERED.get()
    if cache is None:
        return sha256_file(path)
    st = os.stat(path)
    key, stamp = str(Path(path).resolve()), [st.st_size, st.st_mtime_ns]
    hit = cache.get(key)
    if isinstance(hit, list) and hit[:2] == stamp:
        return hit[2]
    digest = sha256_file(path)
    cache[key] = [*stamp, digest]
    return digest


@contextlib.contextmanager
def remembered_hashes(cache_file):
    """Reuse and update the file hashes kept in ``cache_file`` (keyed on size and mtime) for the
    checks inside: listing many packs then reads only what changed. ``bfm models verify`` and
    loading a pack always hash every byte; this is for the overview."""
    cache_file = Path(cache_file)
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    token = _REMEMBERED.set(cache if isinstance(cache, dict) else {})
    try:
        yield
    finally:
        kept = _REMEMBERED.get()
        _REMEMBERED.reset(token)
        with contextlib.suppress(OSError):
            atomic_write_text(cache_file, json.dumps({k: v for k, v in kept.items() if Path(k).is_file()}))


def _by_hand(url: str, dest: Path, sha256: str | None) -> str:
    check = f" (sha256 {sha256})" if sha256 else ""
    return f"download {url} by hand, put it at {dest}{check} and run the command again"


def _disk_full(path: Path, needed: int | None) -> DownloadError:
    extra = f" ({needed} more bytes needed)" if needed else ""
    return DownloadError(
        f"{path}: no space left on the device{extra}; free some space and run the command again "
        "(the download resumes where it stopped)"
    )


def download_file(
    url: str,
    dest,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
    session=None,
    chunk: int = CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, retried, sha256-checked when ``sha256`` is given)."""
    import requests
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256:
            return dest
        logger.warning("%s does not match its sha256; downloading it again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    last_error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is not None:
            free = shutil.disk_usage(dest.parent).free
            if free < size - offset:
                raise _disk_full(part, size - offset - free)
        if size is not None and offset == size:
            break  # complete from an earlier attempt: go and verify
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = http.get(url, headers=headers, stream=True, timeout=timeout)
        except requests.RequestException as e:
            last_error = f"{type(e).__name__}: {e}"
            logger.info(
                "download %s failed (%s); attempt %d of %d", url, last_error, attempt + 1, retries + 1
            )
            continue
        with response:
            status = response.status_code
            if status in _NO_RETRY:
                raise DownloadError(
                    f"{url}: HTTP {status} ({response.reason}); {_by_hand(url, dest, sha256)}"
                )
            if status == 416 and offset:
                # Nothing left past our offset: the .part is complete (the checksum decides) or too long.
                break
            if status >= 400:
                last_error = f"HTTP {status} ({response.reason})"
                continue
            if status == 206:
                start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(offset):
                    last_error = f"server resumed at byte {start!r}, expected {offset}"
                    part.unlink(missing_ok=True)
                    continue
                mode = "ab"
            else:  # 200: the server ignored Range; start over
                offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else size
            written = 0
            try:
                with (
                    open(part, mode) as f,
                    tqdm(
                        total=total,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    for block in response.iter_content(chunk):
                        f.write(block)
                        written += len(block)
                        bar.update(len(block))
            # requests errors are OSErrors too: this clause must come first
            except requests.RequestException as e:
                last_error = f"connection lost after {offset + written} bytes ({type(e).__name__})"
                logger.info("download %s interrupted: %s; resuming", url, last_error)
                continue
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise _disk_full(part, None) from None
                raise DownloadError(f"{part}: cannot write ({e.strerror or e})") from None
            if length and length.isdigit() and written < int(length):
                last_error = f"connection closed after {offset + written} of {total} bytes"
                continue
            break
    else:
        raise DownloadError(
            f"{url}: failed after {retries + 1} attempts ({last_error}); {_by_hand(url, dest, sha256)}"
        )
    if not part.exists():
        raise DownloadError(f"{url}: nothing was downloaded; {_by_hand(url, dest, sha256)}")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ChecksumError(
                f"{url}: sha256 {actual} differs from the expected {sha256}; the partial file was "
                "removed, run the command again (if it repeats, the registry or the server is wrong)"
            )
    os.replace(part, dest)
    return dest


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\\" in name or "\x00" in name:
        return "backslash or NUL in the name"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "absolute path"
    if any(part == ".." for part in path.parts):
        return "'..' component"
    if path.parts and ":" in path.parts[0]:
        return "drive letter"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def extract_zip(archive, dest, *, strip_top: str | None = None) -> list[str]:
    """Unpack ``archive`` into the new directory ``dest`` after checking every entry.

    ``strip_top``: when every entry lives under this one top folder (insightface's
    antelopev2.zip holds ``antelopev2/...``), drop it. Returns the relative file names.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_reason(info)
            if reason:
                raise DownloadError(
                    f"{archive}: unsafe entry {info.filename!r} ({reason}); nothing was extracted"
                )
        files = [i for i in infos if not i.is_dir()]
        prefix = ""
        if strip_top and files and all(i.filename.startswith(strip_top.rstrip("/") + "/") for i in files):
            prefix = strip_top.rstrip("/") + "/"
        needed = sum(i.file_size for i in files)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(dest.parent).free < needed:
            raise _disk_full(dest, needed)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        names = []
        try:
            for info in files:
                rel = info.filename[len(prefix) :]
                target = (tmp / rel).resolve()
                if not str(target).startswith(str(tmp.resolve()) + os.sep):
                    raise DownloadError(f"{archive}: entry {info.filename!r} escapes the target folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                names.append(rel)
            if dest.exists():
                raise DownloadError(f"{dest}: already exists; remove it first")
            os.replace(tmp, dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise _disk_full(dest, needed) from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return names


def refuse_installed(name: str, root) -> None:
    """Raise ``PackError`` when NAME is already installed under ROOT/models (a download would
    replace it only with ``force``); called before any registry is read, so nothing is fetched."""
    target = Path(root) / "models" / name
    if target.exists():
        raise PackError(
            f"{target}: already installed; `bfm models verify {name} --root {root}` checks it, "
            "--force replaces it"
        )


def install(
    entry,
    root,
    *,
    sha256_overrides: dict | None = None,
    allow_unverified: bool = False,
    force: bool = False,
    progress: bool = True,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> Path:
    """Download and unpack a registry entry into ``ROOT/models/NAME`` with a receipt.

    A file whose sha256 the registry does not publish needs ``sha256_overrides[file]`` (from
    a source you trust) or ``allow_unverified`` (recorded as unverified in the receipt).
    """
    models = Path(root) / "models"
    target = models / entry.name
    if not force:
        refuse_installed(entry.name, root)
    overrides = dict(sha256_overrides or {})
    plan = []
    for spec in entry.files:
        expected = overrides.get(spec.name, spec.sha256)
        if expected is None and not allow_unverified:
            raise DownloadError(
                f"{entry.name}: the registry publishes no sha256 for {spec.name}; pass --sha256 "
                f"{spec.name}=HASH from a source you trust, or --allow-unverified (it will be recorded "
                "as unverified and `bfm models verify` will say so)"
            )
        plan.append((spec, expected))
    downloads = models / DOWNLOADS_DIR
    fetched = []
    for spec, expected in plan:
        path = download_file(
            spec.url,
            downloads / spec.name,
            sha256=expected,
            size=spec.size,
            progress=progress,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
        )
        fetched.append((spec, expected, path))
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=models))
    try:
        sources = {}
        for spec, expected, path in fetched:
            actual = sha256_file(path)
            sources[spec.name] = {"url": spec.url, "sha256": actual, "verified": expected is not None}
            if spec.extract:
                unpacked = staging / ".unpack"
                extract_zip(path, unpacked, strip_top=entry.name)
                for item in unpacked.iterdir():
                    os.replace(item, staging / item.name)
                unpacked.rmdir()
            else:
                shutil.copyfile(path, staging / spec.name)
        staged = [p for p in sorted(staging.rglob("*")) if p.is_file()]
        files = {str(p.relative_to(staging)): sha256_file(p) for p in staged}
        receipt = {"name": entry.name, "kind": entry.kind, "sources": sources, "files": files}
        atomic_write_text(staging / RECEIPT, json.dumps(receipt, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for _spec, _expected, path in fetched:
        path.unlink(missing_ok=True)
    return target
