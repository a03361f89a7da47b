"""A Table-II comparison: train several modes on one recipe, score them on held-out identities.

A recipe with ``compare: [baseline1, baseline2, bfm]`` (``recipes/quickstart.yaml``) trains
each mode in turn, with the same data, schedule and seed, into ``<output>/<mode>/``, then
prints verification accuracy per case (train/holdout.py) side by side and writes it to
``<output>/comparison.json``. The paper's claim to look for: Baseline 1 (unmasked training)
is weak on masked pairs (Case 3), Baseline 2 (mixed training) gives up some accuracy on
unmasked pairs (Case 1), BFM keeps both.

When Baseline 1 is compared too, BFM's E_F is Baseline 1's trained model, frozen (see below).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import atomic_write_text
from .recipe import Recipe

TITLES = {"baseline1": "Baseline 1", "baseline2": "Baseline 2", "bfm": "BFM"}


def run_comparison(recipe: Recipe, out: str | Path | None = None, resume: bool = False, echo=print) -> dict:
    """Train every mode of ``recipe.compare``; returns {mode: summary with "eval" and "seconds"}."""
    root = Path(out) if out is not None else recipe.output_dir
    from ..data import open_dataset
    from .checkpoint import LAST
    from .trainer import InMemoryFaces, Trainer

    # opened once for all modes: the same images, and (data.cache) drawn or decoded only once
    dataset = open_dataset(recipe.data.path)
    holdout = open_dataset(recipe.eval.holdout)
    if recipe.data.cache:
        progress = recipe.train.progress
        dataset, holdout = InMemoryFaces(dataset, progress), InMemoryFaces(holdout, progress)
    results = {}
    for mode in recipe.compare:
        sub = recipe.with_mode(mode)
        run_dir = root / mode
        if mode == "bfm" and "baseline1" in results and sub.init.full is None:
            # Under one seed BFM's E_F trains exactly as Baseline 1's model (same initial weights,
            # data, flips; eq. 2 only: tests/test_trainer.py checks it), so take that model and
            # freeze it rather than train it a second time: a third less work for BFM.
            sub.init.full, sub.init.freeze_full = str(root / "baseline1"), True
        start = time.perf_counter()
        trainer = Trainer(sub, dataset=dataset, holdout=holdout, out=run_dir,
                          resume=resume and (run_dir / LAST).exists())
        summary = trainer.fit()
        summary["seconds"] = time.perf_counter() - start
        results[mode] = summary
    table = format_table(results, recipe)
    echo(table)
    atomic_write_text(root / "comparison.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(root / "comparison.txt", table + "\n")
    return results


def format_table(results: dict, recipe: Recipe) -> str:
    e = recipe.eval
    lines = [
        f"Verification accuracy (%) on held-out identities {e.holdout}: {e.pairs} pairs per case, "
        f"{e.folds}-fold threshold",
        f"{'model':<12}{'Case 1':>10}{'Case 2':>10}{'Case 3':>10}{'C acc':>8}{'train s':>9}",
        f"{'':<12}{'unmasked':>10}{'one mask':>10}{'both':>10}",
    ]
    for mode, summary in results.items():
        ev = summary.get("eval") or {}
        cells = [f"{100 * ev[f'case{c}']['accuracy']:10.2f}" if f"case{c}" in ev else f"{'-':>10}"
                 for c in (1, 2, 3)]
        c_acc = ev.get("classifier_accuracy")
        c_cell = f"{100 * c_acc:8.1f}" if c_acc is not None else f"{'-':>8}"
        lines.append(f"{TITLES.get(mode, mode):<12}{''.join(cells)}{c_cell}{summary['seconds']:9.0f}")
    bfm = results.get("bfm", {}).get("eval")
    if bfm:
        lines.append("BFM routing: share of pairs sent to E_P per case: " + ", ".join(
            f"case {c} {100 * bfm[f'case{c}']['routed_partial']:.0f}%" for c in (1, 2, 3)))
    return "\n".join(lines)
