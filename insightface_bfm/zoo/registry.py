"""The model-zoo registry: which packs exist, where their files are, and what is installed.

An entry (one ``model_zoo/NAME.yaml`` in the repository; all of them are bundled as
``insightface_bfm/zoo/registry.yaml``)::

    name: buffalo_l
    kind: insightface            # insightface (detector / E_F source) or bfm (a BFM pack)
    description: ...
    provides: [detector, recognition]
    licence: ...
    files:
      - name: buffalo_l.zip
        url: https://...
        sha256: null             # null = not published: download needs --sha256 or --allow-unverified
        size: null               # bytes, when known (enables the free-space check)
        extract: true            # unpack the zip into ROOT/models/NAME
    metrics: {...}               # as published by the source
    recipe: null                 # the training recipe of a bfm pack

``load_registry(None)`` reads the bundled file; ``load_registry(SOURCE)`` reads a registry
file (``entries: [...]``), a single entry file, a folder (its ``index.yaml``, else every entry
file in it) or an http(s) URL of a registry file (an index, e.g. one ``bfm models publish``
wrote). ``load_registries(SOURCES)`` merges several: the user's (``--registry``, else
``$INSIGHTFACE_BFM_REGISTRY``, comma-separated) before the bundled one, the first to name an
entry winning, so a company can host its own packs (and override a bundled entry).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..errors import ChecksumError, PackError
from .download import RECEIPT, checked_sha256, remembered_hashes
from .packs import MANIFEST, load_pack

KINDS = ("insightface", "bfm")
REGISTRY_ENV = "INSIGHTFACE_BFM_REGISTRY"
INDEX = "index.yaml"
# file hashes remembered by size and mtime for `bfm models list` (download.remembered_hashes)
HASHES = ".bfm-hashes.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileSpec:
    name: str
    url: str
    sha256: str | None
    size: int | None
    extract: bool


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    description: str
    licence: str
    files: tuple
    provides: tuple = ()
    metrics: dict = field(default_factory=dict)
    recipe: str | dict | None = None
    notes: str = ""
    source: str = field(default="built-in registry", compare=False)  # the registry it was read from

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)

    @property
    def verifiable(self) -> bool:
        """True when the registry publishes a sha256 for every file."""
        return all(f.sha256 for f in self.files)


def _entry(raw, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise PackError(f"{where}: an entry must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PackError(f"{where}: entry name {name!r} is missing or invalid")
    source, where = where, f"{where}: {name}"  # the registry it came from; messages name the entry too
    kind = raw.get("kind")
    if kind not in KINDS:
        raise PackError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise PackError(f"{where}: files must be a non-empty list")
    specs = []
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or "/" in f["name"]:
            raise PackError(f"{where}: each file needs a plain 'name'")
        url = f.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise PackError(f"{where}: {f['name']}: url must be http(s)")
        sha = f.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
            raise PackError(f"{where}: {f['name']}: sha256 must be 64 lowercase hex digits or null")
        size = f.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise PackError(f"{where}: {f['name']}: size must be a positive integer or null")
        extract = f.get("extract", f["name"].endswith(".zip"))
        specs.append(FileSpec(f["name"], url, sha, size, bool(extract)))
    if kind == "bfm" and not all(s.sha256 for s in specs):
        raise PackError(f"{where}: a bfm pack entry must publish the sha256 of every file")
    return Entry(
        name=name,
        kind=kind,
        description=str(raw.get("description", "")),
        licence=str(raw.get("licence", "")),
        files=tuple(specs),
        provides=tuple(raw.get("provides") or ()),
        metrics=dict(raw.get("metrics") or {}),
        recipe=raw.get("recipe"),
        notes=str(raw.get("notes", "")),
        source=source,
    )


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PackError(f"{path}: unreadable registry ({e})") from None


def parse_registry(raw, where: str) -> dict[str, Entry]:
    items = raw.get("entries") if isinstance(raw, dict) and "entries" in raw else [raw]
    if not isinstance(items, list):
        raise PackError(f"{where}: 'entries' must be a list")
    out = {}
    for item in items:
        entry = _entry(item, where)
        if entry.name in out:
            raise PackError(f"{where}: entry {entry.name!r} appears twice")
        out[entry.name] = entry
    return out


def load_registry(path=None) -> dict[str, Entry]:
    """name -> Entry from the bundled registry, a registry/entry YAML file, a folder of them or an
    http(s) URL of a registry file."""
    if path is None:
        text = resources.files("insightface_bfm.zoo").joinpath("registry.yaml").read_text(encoding="utf-8")
        return parse_registry(yaml.safe_load(text), "built-in registry")
    if str(path).startswith(("http://", "https://")):
        return parse_registry(_fetch_index(str(path)), str(path))
    path = Path(path).expanduser()
    if path.is_dir() and (path / INDEX).is_file():
        return parse_registry(_read_yaml(path / INDEX), str(path / INDEX))
    if path.is_dir():
        out = {}
        for item in sorted(path.glob("*.yaml")):
            for name, entry in parse_registry(_read_yaml(item), str(item)).items():
                if name in out:
                    raise PackError(f"{item}: entry {name!r} is also defined in another file")
                out[name] = entry
        return out
    if not path.is_file():
        raise PackError(f"{path}: registry file not found")
    return parse_registry(_read_yaml(path), str(path))


def _fetch_index(url: str, timeout: float = 30.0):
    import requests

    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as e:
        raise PackError(f"registry {url}: unreachable ({type(e).__name__})") from None
    if response.status_code != 200:
        raise PackError(f"registry {url}: HTTP {response.status_code} ({response.reason})")
    try:
        return yaml.safe_load(response.text)
    except yaml.YAMLError as e:
        raise PackError(f"registry {url}: not a YAML/JSON registry ({e})") from None


def registry_sources(sources=None) -> list[str]:
    """The user's registries: ``sources`` (``--registry``, repeatable), else ``$INSIGHTFACE_BFM_REGISTRY``
    (comma-separated files, folders or URLs); the bundled registry comes after them."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        sources = [s.strip() for s in os.environ.get(REGISTRY_ENV, "").split(",") if s.strip()]
    return [str(s) for s in sources]


def load_registries(sources=None) -> dict[str, Entry]:
    """The user's registries merged before the bundled one (the first to name an entry wins)."""
    merged: dict[str, Entry] = {}
    for source in [*registry_sources(sources), None]:
        for name, entry in load_registry(source).items():
            merged.setdefault(name, entry)
    return merged


def get_entry(registry: dict, name: str) -> Entry:
    try:
        return registry[name]
    except KeyError:
        raise PackError(
            f"{name!r} is not in the registry; known: {', '.join(sorted(registry)) or 'none'}"
        ) from None


def installed_status(entry: Entry, root) -> str:
    """'not installed', 'installed (no receipt)', 'installed, unverified source', or 'installed'."""
    target = Path(root) / "models" / entry.name
    if not target.is_dir():
        return "not installed"
    receipt = _read_receipt(target)
    if receipt is None:
        return "installed (no receipt)"
    if not all(s.get("verified") for s in receipt.get("sources", {}).values()):
        return "installed, unverified source"
    return "installed"


def _read_receipt(target: Path):
    path = target / RECEIPT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PackError(f"{path}: unreadable receipt ({e})") from None


def verify_installed(entry: Entry, root, *, allow_unverified: bool = False) -> dict:
    """Check an installed entry file by file against its receipt (and a BFM pack's manifest).

    Fails when a file is missing or altered, and, unless ``allow_unverified``, when a source
    file was downloaded without a published sha256.
    """
    target = Path(root) / "models" / entry.name
    if not target.is_dir():
        raise PackError(f"{entry.name}: not installed at {target}; run `bfm models download {entry.name}`")
    return _verify_receipt(target, entry.name, entry.kind, root, allow_unverified)


class NoChecksumsError(PackError):
    """An installed folder with neither a receipt nor manifest checksums: nothing to verify against."""


class UnverifiedSourceError(ChecksumError):
    """A pack downloaded without a published sha256 (its origin is unverified)."""


def _verify_receipt(target: Path, name: str, kind: str, root, allow_unverified: bool) -> dict:
    receipt = _read_receipt(target)
    if receipt is None:
        raise NoChecksumsError(
            f"{target}: no {RECEIPT}, so there is nothing to check the files against (installed by hand or "
            f"by insightface); reinstall with `bfm models download {name} --force`, or put the "
            f"archive in {Path(root) / 'models' / '.downloads'} and run that command"
        )
    for rel, expected in receipt.get("files", {}).items():
        path = target / rel
        if not path.is_file():
            raise PackError(f"{path}: missing (listed in {RECEIPT})")
        actual = checked_sha256(path)
        if actual != expected:
            raise ChecksumError(f"{path}: sha256 {actual} differs from {expected} recorded at download")
    unverified = [n for n, s in receipt.get("sources", {}).items() if not s.get("verified")]
    if unverified and not allow_unverified:
        raise UnverifiedSourceError(
            f"{name}: {', '.join(unverified)} was downloaded without a published sha256, so its origin "
            "is unverified; check its sha256 (recorded in the receipt) against a trusted source, then use "
            "--allow-unverified"
        )
    if (target / MANIFEST).is_file() and kind == "bfm":
        load_pack(target)
    return {
        "name": name,
        "path": str(target),
        "files": len(receipt.get("files", {})),
        "unverified": unverified,
    }


def _manifest(target: Path) -> dict | None:
    try:
        raw = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def verify_folder(name: str, root, registry: dict | None = None, *, allow_unverified: bool = False) -> dict:
    """``bfm models verify NAME`` for any installed pack: a downloaded one against its receipt, one
    built or copied here (no receipt) against the sha256 its manifest lists (a BFM pack's
    ``bfm.files``, a manifest V2's task files)."""
    if not _NAME.fullmatch(str(name)):
        raise PackError(f"{name!r}: not a pack name")
    target = Path(root) / "models" / name
    if not target.is_dir():
        hint = f"`bfm models download {name}`" if registry and name in registry else \
            f"`bfm models build {name} ...` or `bfm models download {name} --registry URL`"
        raise PackError(f"{name}: not installed at {target}; get it with {hint}")
    raw = _manifest(target)
    kind = "bfm" if raw and isinstance(raw.get("bfm"), dict) else "insightface"
    if (target / RECEIPT).is_file():
        return _verify_receipt(target, name, kind, root, allow_unverified)
    if kind == "bfm":
        pack = load_pack(target)
        return {"name": name, "path": str(target), "files": len(pack.files), "unverified": []}
    tasks = (raw or {}).get("tasks") or {}
    listed = {t["file"]: t["sha256"] for t in tasks.values()
              if isinstance(t, dict) and isinstance(t.get("file"), str) and t.get("sha256")}
    if not listed:
        raise NoChecksumsError(f"{target}: no {RECEIPT} and no checksums in a manifest, so there is "
                               "nothing to check the files against (installed by hand or by insightface)")
    for fname, expected in listed.items():
        path = target / fname
        if not path.is_file():
            raise PackError(f"{path}: missing (listed in {MANIFEST})")
        actual = checked_sha256(path)
        if actual != expected:
            raise ChecksumError(f"{path}: sha256 {actual} differs from {expected} in {MANIFEST} "
                                "(file altered)")
    return {"name": name, "path": str(target), "files": len(listed), "unverified": []}


def installed_packs(root, registry: dict) -> list[dict]:
    """Every pack folder under ``ROOT/models``: name, kind, version, source (registry: downloaded with
    a receipt; local: built or copied here) and whether its files check out (``verify_folder``).
    Hashes are remembered in ``ROOT/models/.bfm-hashes.json`` by size and mtime, so a second listing
    reads only changed files (``bfm models verify`` re-reads every byte)."""
    models = Path(root) / "models"
    if not models.is_dir():
        return []
    with remembered_hashes(models / HASHES):
        folders = sorted(p for p in models.glob("*") if p.is_dir() and not p.name.startswith("."))
        return [_installed_pack(target, root, registry) for target in folders]


def _installed_pack(target: Path, root, registry: dict) -> dict:
    raw = _manifest(target) or {}
    bfm = raw.get("bfm") if isinstance(raw.get("bfm"), dict) else None
    try:
        verify_folder(target.name, root, registry)
        state = "verified"
    except UnverifiedSourceError:
        state = "UNVERIFIED source"
    except ChecksumError:
        state = "ALTERED"
    except NoChecksumsError:
        state = "no checksums"
    except PackError:  # a listed file missing, an unreadable manifest or receipt
        state = "BROKEN"
    return {
        "name": target.name,
        "kind": "bfm" if bfm else "insightface",
        "version": str(bfm.get("version", "")) if bfm else "",
        "source": "registry" if (target / RECEIPT).is_file() else "local",
        "state": state,
        "path": str(target),
    }


def ensure_pack(name, root=None, *, registry=None, download: bool = True, progress: bool = True) -> Path:
    """The folder of pack ``name`` (a directory, or a name under ROOT/models); a name that is not
    installed but is a ``kind: bfm`` entry of a registry (``load_registries``) is downloaded first
    (resumable, sha256-checked, installed atomically), as insightface's FaceAnalysis does for its
    packs. ``download=False`` refuses instead."""
    from .download import install
    from .packs import how_to_get, resolve_pack_dir, resolve_root

    try:
        return resolve_pack_dir(name, root)
    except PackError:
        if not _NAME.fullmatch(str(name)):
            raise
    root = resolve_root(root)
    entry = load_registries(registry).get(str(name))
    if entry is None or entry.kind != "bfm":
        what = "no registry lists it as a BFM pack" if entry is None else f"{entry.source} lists it as an " \
            f"insightface pack, not a BFM pack"
        raise PackError(f"pack {name!r} is not installed under {root / 'models'} and {what}; "
                        f"{how_to_get(name, root)}")
    if not download:
        raise PackError(f"pack {name!r} is not installed under {root / 'models'} (download=False); "
                        f"{entry.source} has it: `bfm models download {name}` or download=True")
    return install(entry, root, progress=progress)


def remove_installed(name: str, root) -> Path:
    """Delete ``ROOT/models/NAME`` (interrupted downloads stay in ``ROOT/models/.downloads``)."""
    import shutil

    if not _NAME.fullmatch(name):
        raise PackError(f"{name!r}: not a pack name")
    target = Path(root) / "models" / name
    if not target.is_dir():
        raise PackError(f"{name}: not installed at {target}")
    shutil.rmtree(target)
    return target


BUNDLED = Path(__file__).with_name("registry.yaml")


def bundle(src_dir="model_zoo", out=BUNDLED) -> Path:
    """Write the bundled registry from a folder of entry files (the repository's ``model_zoo/``).

    ``python -c "from insightface_bfm.zoo.registry import bundle; bundle()"`` after editing an entry.
    """
    from ..atomic import atomic_write_text

    entries = [_read_yaml(p) for p in sorted(Path(src_dir).glob("*.yaml"))]
    load_registry(src_dir)  # validate before writing
    header = "# Generated from model_zoo/*.yaml by insightface_bfm.zoo.registry.bundle(); edit those.\n"
    atomic_write_text(out, header + yaml.safe_dump({"entries": entries}, sort_keys=False, width=100))
    return Path(out)
