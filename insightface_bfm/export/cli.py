"""``bfm export CHECKPOINT OUT_DIR``: a thin wrapper of ``export_checkpoint``."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs torch check of each file.")
def export(checkpoint, out_dir, opset, no_verify):
    """Export CHECKPOINT (checkpoint dir, run dir or model.safetensors) to ONNX files in OUT_DIR.

    Writes mask_classifier.onnx, full.onnx and partial.onnx (baselines: full.onnx only):
    input [batch,3,112,112] RGB normalised (x-127.5)/127.5, as insightface's ArcFaceONNX feeds it.
    """
    from ..errors import require_training

    require_training("bfm export")
    from .to_onnx import export_checkpoint, read_metadata

    written = export_checkpoint(checkpoint, out_dir, opset=opset, verify=not no_verify)
    for role, path in written.items():
        size = read_metadata(path).get("embedding_size", "?")
        click.echo(f"{role:>15}: {path} (output {size})")


@click.group("convert")
def convert():
    """Convert models of other frameworks to insightface recognition ONNX files."""


@convert.command("mxnet")
@click.argument("checkpoint", metavar="PREFIX[,EPOCH]")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--output", help="Node whose output is the embedding (default: the symbol's head, else fc1).")
def mxnet(checkpoint, out, output):
    """Convert the MXNet checkpoint PREFIX-symbol.json + PREFIX-EPOCH.params to OUT (.onnx), without mxnet.

    EPOCH defaults to the highest one present. OUT takes [batch,3,112,112] RGB normalised
    (x-127.5)/127.5, as insightface's ArcFaceONNX feeds it (an in-graph normalisation is folded in).
    """
    from .from_mxnet import checkpoint_files, import_mxnet
    from .metadata import read_metadata

    symbol, params = checkpoint_files(checkpoint)
    path = import_mxnet(checkpoint, out, output=output)
    meta = read_metadata(path)
    click.echo(f"{symbol} + {params} -> {path} (output {meta['mxnet_output']}, "
               f"embedding {meta['embedding_size']})")
