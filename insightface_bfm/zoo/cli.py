"""``bfm pack`` and ``bfm models``: thin click layers over packs.py, registry.py and download.py."""

from __future__ import annotations

import click

from ..errors import require_training
from .packs import ROOT_ENV, resolve_root

_root_option = click.option(
    "--root",
    type=click.Path(file_okay=False),
    envvar=ROOT_ENV,
    default=None,
    help=f"insightface root holding models/ (default: ${ROOT_ENV} or ~/.insightface).",
)
_registry_option = click.option(
    "--registry",
    "registry",
    multiple=True,
    help="A registry: YAML file, folder of entry files or http(s) URL of an index (repeatable; "
    "default $INSIGHTFACE_BFM_REGISTRY, comma-separated); searched before the built-in registry.",
)


@click.command("pack")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option(
    "--detector", type=click.Path(exists=True, dir_okay=False), help="SCRFD detector ONNX to include."
)
@click.option("--det-pack", help="Copy the detector of an installed insightface pack (e.g. buffalo_l).")
@click.option("--name", help="model_id of the pack (default: the name of OUT).")
@_root_option
@click.option("--mask-threshold", type=float, default=0.5, show_default=True, help="P(masked) threshold.")
@click.option(
    "--distance-threshold",
    type=float,
    default=None,
    help="Verification threshold: squared L2 between normalised embeddings (2 - 2 cos).",
)
@click.option(
    "--partial-distance-threshold",
    type=float,
    default=None,
    help="E_P's own verification threshold (squared L2); default: --distance-threshold for both.",
)
@click.option("--pack-version", "version", default="1", show_default=True, help="The pack's own version.")
@click.option(
    "--license", "license_file", type=click.Path(exists=True, dir_okay=False), help="MODEL.LICENSE text."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def pack(
    export_dir,
    out,
    detector,
    det_pack,
    name,
    root,
    mask_threshold,
    distance_threshold,
    partial_distance_threshold,
    version,
    license_file,
    overwrite,
):
    """Build a BFM pack in OUT from EXPORT_DIR (mask_classifier.onnx, full.onnx, partial.onnx).

    OUT is a folder; put it under ROOT/models/NAME to load it as FaceAnalysis(name=NAME).
    """
    from .packs import build_pack

    if detector is None and det_pack is None:
        raise click.UsageError("give --detector PATH.onnx or --det-pack NAME (a pack needs a face detector)")
    result = build_pack(
        export_dir,
        out,
        detector=detector,
        det_pack=det_pack,
        name=name,
        root=root,
        mask_threshold=mask_threshold,
        verification_distance=distance_threshold,
        verification_distance_partial=partial_distance_threshold,
        version=version,
        license_file=license_file,
        overwrite=overwrite,
    )
    click.echo(f"pack {result.name} written to {result.path} ({len(result.files)} files, sha256 verified)")


@click.group("models")
def models():
    """Build, publish, list, download, verify and remove packs."""


def _registry(sources):
    from .registry import load_registries

    return load_registries(list(sources) or None)


def _mb(size):
    return "?" if size is None else f"{size / 1e6:.0f} MB"


@models.command("list")
@_root_option
@_registry_option
def list_models(root, registry):
    """Registry entries and their state, then every pack installed under ROOT/models."""
    from .registry import installed_packs, installed_status

    root = resolve_root(root)
    entries = _registry(registry)
    click.echo("registry entries:")
    for entry in entries.values():
        checksum = "sha256 published" if entry.verifiable else "sha256 unknown"
        click.echo(
            f"  {entry.name:<14} {entry.kind:<12} {_mb(entry.size):>8}  {checksum:<17} "
            f"{installed_status(entry, root):<28} {entry.licence}"
        )
    installed = installed_packs(root, entries)
    click.echo(f"installed under {root / 'models'}:" + ("" if installed else " none"))
    for p in installed:
        version = f"v{p['version']}" if p["version"] else "-"
        click.echo(f"  {p['name']:<14} {p['kind']:<12} {version:<8} {p['source']:<9} {p['state']}")


def _parse_sha(values):
    out = {}
    for value in values:
        name, sep, digest = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r}: expected FILE=SHA256", param_hint="--sha256")
        out[name] = digest.strip().lower()
    return out


@models.command("download")
@click.argument("name")
@_root_option
@_registry_option
@click.option(
    "--sha256", "sha256", multiple=True, help="FILE=HASH for a file the registry has no sha256 for."
)
@click.option("--allow-unverified", is_flag=True, help="Accept files without a published sha256.")
@click.option("--force", is_flag=True, help="Replace an installed copy.")
@click.option("--retries", type=int, default=4, show_default=True,
              help="Retries after a failed or cut transfer (each resumes where the last one stopped).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def download(name, root, registry, sha256, allow_unverified, force, retries, quiet):
    """Download NAME into ROOT/models/NAME (resumable; re-run after an interruption)."""
    from .download import install, refuse_installed
    from .registry import get_entry

    root = resolve_root(root)
    if not force:
        refuse_installed(name, root)  # before the registry: an installed pack needs no network
    entry = get_entry(_registry(registry), name)
    target = install(
        entry,
        root,
        sha256_overrides=_parse_sha(sha256),
        allow_unverified=allow_unverified,
        force=force,
        progress=not quiet,
        retries=retries,
    )
    click.echo(f"{name} installed at {target}")


@models.command("verify")
@click.argument("name")
@_root_option
@_registry_option
@click.option(
    "--allow-unverified", is_flag=True, help="Accept sources downloaded without a published sha256."
)
def verify(name, root, registry, allow_unverified):
    """Check every installed file of NAME: against the sha256 recorded at download, or, for a pack
    built or copied here, against its manifest."""
    from .registry import verify_folder

    report = verify_folder(name, resolve_root(root), _registry(registry), allow_unverified=allow_unverified)
    note = f"; unverified source: {', '.join(report['unverified'])}" if report["unverified"] else ""
    click.echo(f"{name}: {report['files']} files OK at {report['path']}{note}")


@models.command("build")
@click.argument("name")
@click.option("--faces", required=True, type=click.Path(exists=True, file_okay=False),
              help="Face photos, one sub-folder per identity (raw photos are aligned first).")
@click.option("--base", required=True,
              help="Pretrained recogniser: an ONNX file, an arcface_torch .pth, mxnet:PREFIX,EPOCH (a legacy "
                   "MXNet checkpoint) or an installed pack name.")
@click.option("--detector", required=True, help="SCRFD detector: an ONNX file or an installed pack name.")
@click.option("--people", type=click.Path(exists=True, dir_okay=False),
              help="Keep only these identities (one name per line, or LFW's people-list format).")
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False),
              help="Training recipe (default: the shipped recipes/build_pack.yaml).")
@_root_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--holdout", "holdout_share", type=float, default=0.05, show_default=True,
              help="Share of the identities held out for the threshold and the held-out table.")
@click.option("--pairs", "holdout_pairs", type=click.IntRange(min=20), default=1000, show_default=True,
              help="Held-out pairs per case (half same identity).")
@click.option("--fpir", "search_fpir", type=float, default=0.01, show_default=True,
              help="Target false-positive identification rate of the open-set thresholds chosen on the "
                   "held-out identities.")
@click.option("--low-memory", is_flag=True,
              help="Do not keep the decoded training faces in memory (data.cache=false): less memory, "
                   "slower epochs.")
@click.option("--fresh", is_flag=True, help="Discard an unfinished build of NAME instead of continuing it.")
@click.option("--force", is_flag=True, help="Replace an installed pack NAME.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build(name, faces, base, detector, people, recipe, root, overrides, holdout_share, holdout_pairs,
          search_fpir, low_memory, fresh, force, quiet):
    """Train a BFM pack NAME from face photos and a pretrained recogniser; install it in ROOT/models.

    Needs the [train] extra. Prints the held-out table; rerun the same command to continue after an
    interruption.
    """
    require_training("bfm models build")
    from .build import build_pack_from_faces

    build_pack_from_faces(name, faces, base, detector, people=people, recipe=recipe, root=root,
                          overrides=overrides, holdout_share=holdout_share, holdout_pairs=holdout_pairs,
                          search_fpir=search_fpir, low_memory=low_memory, fresh=fresh, force=force,
                          progress=not quiet, echo=click.echo)


@models.command("calibrate")
@click.argument("pack")
@click.option("--faces", required=True, type=click.Path(exists=True, file_okay=False),
              help="Aligned 112x112 faces of people the pack was never trained on, one sub-folder per "
                   "identity.")
@click.option("--people", type=click.Path(exists=True, dir_okay=False),
              help="Use only these identities (one name per line, or LFW's people-list format).")
@click.option("--fpir", type=float, default=0.01, show_default=True,
              help="Target false-positive identification rate: share of never-enrolled people named.")
@click.option("--gallery-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Gallery size the stored thresholds are for (a search sets them for its own gallery's "
                   "size from the stored curve).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of the masks.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Keep embeddings here, so a rerun skips the network.")
@_root_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def calibrate(pack, faces, people, fpir, gallery_size, seed, cache_dir, root, quiet):
    """Choose PACK's open-set (1:N search) thresholds at --fpir on --faces and store them in its manifest.

    Every face, bare and masked, meets a bare face of every other identity (the impostor meetings
    of a search); E_F's and E_P's meetings get a threshold each, so that a stranger is named with
    probability --fpir in a gallery of --gallery-size. Then half of the identities are enrolled and
    searched with their other faces and by the other half, and the rates reached are printed. No
    retraining: the weights are untouched.
    """
    from ..evaluation.open_set import calibrate_pack, format_search
    from .build import read_people

    names = read_people(people) if people is not None else None
    search = calibrate_pack(pack, faces, people=names, fpir=fpir, gallery_size=gallery_size, seed=seed,
                            cache_dir=cache_dir, progress=not quiet, root=root)
    click.echo(format_search(search))


@models.command("publish")
@click.argument("pack_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--url-base", required=True, help="Where OUT's files will be served, e.g. https://host/packs/.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the zip and entry.")
@click.option("--licence", default=None, help="Licence line of the entry (default: from MODEL.LICENSE).")
def publish(pack_dir, url_base, out, licence):
    """Write PACK_DIR as OUT/NAME.zip and its registry entry (OUT/NAME.yaml, OUT/index.yaml).

    Upload OUT's files to --url-base; users then run `bfm models download NAME --registry
    URL_BASE/index.yaml` or FaceAnalysis(name=NAME) with $INSIGHTFACE_BFM_REGISTRY set to it.
    """
    from .publish import publish_pack

    result = publish_pack(pack_dir, url_base, out, licence=licence)
    click.echo(f"{result['archive']} ({result['size']} bytes, sha256 {result['sha256']})")
    click.echo(f"registry entry {result['entry']}; index {result['index']}")


@models.command("remove")
@click.argument("name")
@_root_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remove(name, root, yes):
    """Delete ROOT/models/NAME."""
    from .registry import remove_installed

    target = resolve_root(root) / "models" / name
    if not yes:
        click.confirm(f"delete {target}?", abort=True)
    remove_installed(name, resolve_root(root))
    click.echo(f"removed {target}")
