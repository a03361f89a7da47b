"""The ``bfm`` command group and the ``bfm-train`` script.

A thin layer: each subcommand lives beside the library code it calls and is imported only
when it runs, so ``bfm --help`` is fast and the inference commands never import torch.
Errors the user can fix (``BFMError``) print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from importlib import import_module

import click

from .errors import TRAIN_MODULES, BFMError, missing_training

# subcommand -> "module:attribute" of its click command
COMMANDS = {
    "train": ("insightface_bfm.train.cli:train", "Train or fine-tune C, E_F and E_P from a recipe."),
    "data": ("insightface_bfm.data.cli:data", "Build and inspect datasets (RecordIO packing)."),
    "mask": ("insightface_bfm.masks.cli:mask", "Put synthetic masks on a folder or RecordIO of faces."),
    "align": ("insightface_bfm.evaluation.cli:align", "Detect and align raw photos to 112x112 crops."),
    "eval": ("insightface_bfm.evaluation.cli:evaluate", "Verification accuracy per matching case."),
    "export": ("insightface_bfm.export.cli:export", "Export a checkpoint to three ONNX files."),
    "convert": ("insightface_bfm.export.cli:convert", "Convert a legacy MXNet checkpoint to ONNX."),
    "pack": ("insightface_bfm.zoo.cli:pack", "Build a BFM pack from an export and a detector."),
    "models": ("insightface_bfm.zoo.cli:models", "Build, publish, list, download, verify and remove packs."),
    "analyze": ("insightface_bfm.recognition.cli:analyze",
                "Every face in photos or a video: masked or not, route, tracks."),
    "compare": ("insightface_bfm.recognition.cli:compare", "Same person? Two photos by the pair rule."),
    "gallery": ("insightface_bfm.recognition.cli:gallery", "Enrol people, search photos, list, remove."),
    "serve": ("insightface_bfm.serve.cli:serve", "Serve analyse, compare and galleries over HTTP."),
}


def _load(name: str) -> click.Command:
    target, _ = COMMANDS[name]
    module, attr = target.split(":")
    return getattr(import_module(module), attr)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        ctx.meta["bfm_command"] = [name]  # for the one-line message of a missing [train] extra
        return _load(name)

    def format_commands(self, ctx, formatter):
        # Short help from the table, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (BFMError, ModuleNotFoundError) as e:
            click.echo(f"Error: {_user_error(e, _command_line(ctx))}", err=True)
            ctx.exit(2)


def _user_error(e: Exception, command: str) -> BFMError:
    """The one-line error of a command: a ``BFMError`` as it is; a missing torch/safetensors (an
    inference-only install reaching training code) as the ``[train]`` message; anything else re-raised."""
    if isinstance(e, BFMError):
        return e
    module = (getattr(e, "name", None) or "").split(".")[0]
    if module not in TRAIN_MODULES:
        raise e
    return missing_training(command, module)


def _command_line(ctx) -> str:
    return " ".join(["bfm", *ctx.meta.get("bfm_command", [])])


@click.group(cls=LazyGroup)
@click.version_option(package_name="insightface-bfm")
def main():
    """Balanced Feature Matching (masked-face recognition) for insightface."""


def train_main(argv=None):
    """``bfm-train RECIPE.yaml ...``: the same as ``bfm train``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _load("train").main(args=args, prog_name="bfm-train")
    except (BFMError, ModuleNotFoundError) as e:
        click.echo(f"Error: {_user_error(e, 'bfm-train')}", err=True)
        sys.exit(2)
