"""``bfm data``: build and inspect datasets (``pack`` an image folder into RecordIO, ``info``)."""

from __future__ import annotations

import click


@click.group()
def data():
    """Build and inspect datasets of aligned 112x112 face crops."""


@data.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pack(folder, out, quiet):
    """Pack FOLDER (one sub-folder per identity) into OUT/train.rec, train.idx and property.

    The result is insightface's RecordIO layout, readable by mxnet and by arcface_torch.
    Unreadable images are reported and left out.
    """
    from .recordio import pack_folder

    summary = pack_folder(folder, out, progress=not quiet)
    skipped = f", {summary['skipped']} unreadable image(s) left out" if summary["skipped"] else ""
    click.echo(
        f"wrote {summary['images']} images of {summary['classes']} identities to {summary['out']}{skipped}"
    )


@data.command()
@click.argument("path")
def info(path):
    """Describe a dataset: image folder, RecordIO (dir or .rec) or synthetic:N_IDS:IMGS_PER_ID[:SEED]."""
    import numpy as np

    from .dataset import open_dataset

    ds = open_dataset(path)
    click.echo(ds.describe())
    if len(ds):
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        median = int(np.median(counts))
        click.echo(f"images per identity: min {counts.min()}, median {median}, max {counts.max()}")
