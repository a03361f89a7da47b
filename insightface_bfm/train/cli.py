"""``bfm train`` / ``bfm-train``: parse, validate the recipe, call the trainer."""

from __future__ import annotations

import json

import click


@click.command("train")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: the recipe's train.output, else runs/<recipe name>).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set optim.lr=0.01 (repeatable; value read as YAML).")
def train(recipe, resume, out, overrides):
    """Train C, E_F and E_P (or a baseline) as RECIPE.yaml describes.

    A recipe with `compare: [baseline1, baseline2, bfm]` trains each mode and prints the
    Table-II comparison on held-out identities (recipes/quickstart.yaml).
    """
    from ..errors import require_training

    require_training(click.get_current_context().command_path)
    # Validate before importing torch: a bad key fails in a fraction of a second.
    from .recipe import load_recipe

    r = load_recipe(recipe, overrides)
    if r.compare:
        from .quickstart import run_comparison

        run_comparison(r, out=out, resume=resume, echo=click.echo)
        return
    from .trainer import Trainer

    summary = Trainer(r, resume=resume, out=out).fit()
    if summary.get("eval"):
        click.echo(json.dumps(summary["eval"], indent=2))
    click.echo(f"done: {summary['steps']} steps, checkpoints in {summary['run_dir']}/checkpoints")
