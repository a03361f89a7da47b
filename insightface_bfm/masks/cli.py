"""``bfm mask SRC DST``: put synthetic masks on a folder or RecordIO of faces (parsing only)."""

from __future__ import annotations

import click

from .styles import MASK_FAMILIES, MASK_TYPES, OCCLUDER_FAMILY, OCCLUDER_TYPES


@click.command("mask")
@click.argument("src")
@click.argument("dst", type=click.Path())
@click.option("--raw", is_flag=True,
              help="SRC holds raw photos: find faces with --detector and mask every one of them.")
@click.option("--detector", type=click.Path(exists=True),
              help="Detector for --raw: an insightface SCRFD ONNX file or a pack folder holding one.")
@click.option("--det-size", default=640, show_default=True, help="Detector input size (square).")
@click.option("--det-thresh", default=0.5, show_default=True, help="Detector score threshold.")
@click.option("--types", default=",".join(MASK_TYPES), show_default=True,
              help=f"Comma-separated mask types (or families: {', '.join(MASK_FAMILIES)}) to draw from; "
                   f"the lower-face occluders {', '.join(OCCLUDER_TYPES)} (family {OCCLUDER_FAMILY}) "
                   "only when named.")
@click.option("--seed", default=0, show_default=True, help="Seed: with the image name it fixes each style.")
@click.option("--worn-low", default=0.0, show_default=True,
              help="Share of masks worn pulled down under the nose (nose tip left bare).")
@click.option("--lighting", is_flag=True,
              help="Also draw a soft contact shadow along each mask's edge and a specular sheen "
                   "on synthetic fabrics (surgical, N95, KN95, photo).")
@click.option("--format", "fmt", type=click.Choice(["auto", "folder", "rec"]), default="auto",
              show_default=True, help="Output kind; auto = the same kind as SRC.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def mask(src, dst, raw, detector, det_size, det_thresh, types, seed, worn_low, lighting, fmt, quiet):
    """Write a masked copy of SRC (aligned crops by default) to DST, with DST/mask_manifest.jsonl.

    SRC: an image folder, one image file, - (image paths on stdin), a RecordIO folder or a .rec.
    Resumable: rerun the same command and finished images are skipped. One run at a time per DST.
    """
    from .masked_sets import load_detector, mask_dataset
    from .styles import check_types

    try:
        types = check_types(types)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--types") from None
    if raw and not detector:
        raise click.UsageError("--raw needs --detector (an SCRFD ONNX file or a pack folder)")
    if detector and not raw:
        raise click.UsageError("--detector is for raw photos: add --raw")
    det = load_detector(detector, det_size, det_thresh) if raw else None
    if not 0.0 <= worn_low <= 1.0:
        raise click.BadParameter(f"{worn_low} is not a share in [0, 1]", param_hint="--worn-low")
    summary = mask_dataset(src, dst, types=types, seed=seed, detector=det, fmt=fmt, worn_low=worn_low,
                           lighting=lighting, progress=not quiet)
    click.echo(str(summary))
    for name, why in summary.misses[:10]:
        click.echo(f"  missed {name}: {why}", err=True)
