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

``load_registry(None)`` reads the bundled file; ``load_registry(PATH)`` reads a registry
file (``entries: [...]``), a single entry file, or a folder of entry files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..errors import ChecksumError, PackError
from .download import RECEIPT, sha256_file
from .packs import MANIFEST, load_pack

KINDS = ("insightface", "bfm")
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
    recipe: str | None = None
    notes: str = ""

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
    where = f"{where}: {name}"
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
    """name -> Entry from the bundled registry, a registry/entry YAML file, or a folder of them."""
    if path is None:
        text = resources.files("insightface_bfm.zoo").joinpath("registry.yaml").read_text(encoding="utf-8")
        return parse_registry(yaml.safe_load(text), "built-in registry")
    path = Path(path).expanduser()
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
    receipt = _read_receipt(target)
    if receipt is None:
        raise PackError(
            f"{target}: no {RECEIPT}, so there is nothing to check the files against (installed by hand or "
            f"by insightface); reinstall with `bfm models download {entry.name} --force`, or put the "
            f"archive in {Path(root) / 'models' / '.downloads'} and run that command"
        )
    for rel, expected in receipt.get("files", {}).items():
        path = target / rel
        if not path.is_file():
            raise PackError(f"{path}: missing (listed in {RECEIPT})")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(f"{path}: sha256 {actual} differs from {expected} recorded at download")
    unverified = [n for n, s in receipt.get("sources", {}).items() if not s.get("verified")]
    if unverified and not allow_unverified:
        raise ChecksumError(
            f"{entry.name}: {', '.join(unverified)} was downloaded without a published sha256, so its origin "
            "is unverified; check its sha256 (recorded in the receipt) against a trusted source, then use "
            "--allow-unverified"
        )
    if (target / MANIFEST).is_file() and entry.kind == "bfm":
        load_pack(target)
    return {
        "name": entry.name,
        "path": str(target),
        "files": len(receipt.get("files", {})),
        "unverified": unverified,
    }


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
