"""``bfm models publish``: a pack folder -> the zip and the registry entry that serve it.

The zip holds the pack's files under one top folder ``NAME/`` (what ``download.install`` strips),
written in a fixed order with fixed timestamps, so publishing the same pack twice gives the same
bytes and sha256. The entry (``OUT/NAME.yaml``) is what ``registry.parse_registry`` reads:
``kind: bfm``, the file's url (``--url-base`` + zip name), sha256 and size, the licence, the
metrics of the pack's held-out table and its recipe (from the manifest's ``bfm.build`` when
``bfm models build`` made it). ``OUT/index.yaml`` lists every entry in OUT, so the folder served
over http(s) is a registry: ``--registry URL_BASE/index.yaml``.

What is published names no folder of the publishing machine: in the entry's recipe and in the
zipped manifest's ``bfm.build``, an absolute path (also after ``onnx:`` / ``mxnet:``) becomes
``<local>/NAME``, its last part (``train.recipe.portable_paths``), for the user to point at their
own copy. The ONNX files' embedded recipes were cut the same way when they were exported.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import yaml

from ..atomic import atomic_open, atomic_write_text
from ..errors import PackError
from ..train.recipe import portable_paths
from .download import sha256_file
from .packs import LICENSE_FILE, MANIFEST, load_pack
from .registry import INDEX, _read_yaml, load_registry, parse_registry

_EPOCH = (1980, 1, 1, 0, 0, 0)


def pack_zip(pack, archive: Path) -> None:
    """A loaded (so verified) pack's manifest and listed files as ``NAME/<file>`` entries, reproducibly.
    The manifest goes in with its build record made ``portable_paths`` (the files' checksums unchanged)."""
    name = pack.name
    files = sorted({*pack.files, MANIFEST})
    manifest = None  # None: the manifest file goes in as it is
    build = pack.manifest["bfm"].get("build")
    published = portable_paths(build)
    if published != build:
        manifest = dict(pack.manifest, bfm=dict(pack.manifest["bfm"], build=published))
    with atomic_open(archive, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for fname in files:
            info = zipfile.ZipInfo(f"{name}/{fname}", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as dst:
                if fname == MANIFEST and manifest is not None:
                    dst.write((json.dumps(manifest, indent=2) + "\n").encode())
                    continue
                with open(pack.path / fname, "rb") as src:
                    while block := src.read(1 << 20):
                        dst.write(block)


def _licence_line(pack_dir: Path) -> str:
    try:
        text = (pack_dir / LICENSE_FILE).read_text(encoding="utf-8")
    except OSError:
        raise PackError(f"{pack_dir / LICENSE_FILE}: missing or unreadable; a published pack states its "
                        "licence (add the file, or pass --licence)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    text = [ln for ln in lines if ln and not set(ln) <= set("=-")]
    return (text[0] if text else "see MODEL.LICENSE") + " (MODEL.LICENSE in the pack)"


def _metrics(build: dict | None) -> dict:
    if not build:
        return {}
    out = {"heldout_accuracy": {}}
    for model, cases in build.get("heldout", {}).items():
        out["heldout_accuracy"][model] = {c: round(v["accuracy"], 4) for c, v in cases.items()}
    th = build.get("threshold") or {}
    out["threshold_distance"] = th.get("distance")
    out["heldout_identities"] = (build.get("faces") or {}).get("held_out")
    out["pairs_per_case"] = th.get("pairs_per_case")
    return out


def publish_pack(pack_dir, url_base: str, out, *, licence: str | None = None) -> dict:
    """Write ``OUT/NAME.zip``, ``OUT/NAME.yaml`` (its entry) and ``OUT/index.yaml`` (all entries)."""
    pack_dir = Path(os.path.expanduser(str(pack_dir))).resolve()
    if not str(url_base).startswith(("https://", "http://")):
        raise PackError(f"--url-base {url_base!r}: must be an http(s) URL (where OUT's files will be served)")
    pack = load_pack(pack_dir)  # every checksum verified before anything is published
    name = pack.name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{name}.zip"
    pack_zip(pack, archive)
    digest, size = sha256_file(archive), archive.stat().st_size
    build = pack.manifest["bfm"].get("build")
    entry = {
        "name": name,
        "kind": "bfm",
        "description": f"BFM pack {name} v{pack.version} (insightface-bfm: masked-face recognition by "
        f"Balanced Feature Matching; {pack.embedding_size}-D embeddings)",
        "provides": ["detector", "mask_classifier", "recognition", "recognition_partial"]
        if pack.detector is not None else ["mask_classifier", "recognition", "recognition_partial"],
        "licence": licence or _licence_line(pack_dir),
        "files": [{"name": archive.name, "url": f"{str(url_base).rstrip('/')}/{archive.name}",
                   "sha256": digest, "size": size, "extract": True}],
        "metrics": _metrics(build),
        "recipe": portable_paths((build or {}).get("recipe")),
    }
    parse_registry(entry, f"{name} entry")  # the registry's own checks, before anything is written
    entry_file = out / f"{name}.yaml"
    atomic_write_text(entry_file, yaml.safe_dump(entry, sort_keys=False, width=100))
    entries = [_read_yaml(p) for p in sorted(out.glob("*.yaml")) if p.name != INDEX]
    atomic_write_text(out / INDEX, "# written by bfm models publish\n"
                      + yaml.safe_dump({"entries": entries}, sort_keys=False, width=100))
    load_registry(out)  # the folder reads back as a registry
    return {"archive": str(archive), "sha256": digest, "size": size, "entry": str(entry_file),
            "index": str(out / INDEX), "name": name}
