"""Checkpoints: written atomically, read back safely.

Layout (CONTRACT)::

    <run_dir>/checkpoints/step_0001234/
        model.safetensors   weights, keys prefixed classifier. full. partial. head_full. head_partial.
        state.pt            optimizer, step/epoch/batch position, RNG states (plain tensors and numbers)
        recipe.yaml         the validated recipe the run was started with
    <run_dir>/last          the name of the newest complete checkpoint

A checkpoint is assembled in a temporary directory and renamed into place, then ``last`` is
rewritten atomically: a run killed at any moment leaves either the old or the new checkpoint,
never half of one. ``state.pt`` holds only tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary pickle).
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from ..atomic import atomic_write_bytes, atomic_write_text, make_temp_dir
from ..errors import BFMError

CHECKPOINTS = "checkpoints"
LAST = "last"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(run_dir, step: int, model_state: dict, state: dict, recipe_yaml: str,
                    keep: int = 3) -> Path:
    """Write ``<run_dir>/checkpoints/step_XXXXXXX`` atomically and point ``last`` at it."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = make_temp_dir(final)
    try:
        # safetensors refuses shared or non-contiguous storage: give it plain copies.
        weights = {k: v.detach().contiguous().cpu().clone() for k, v in model_state.items()}
        atomic_write_bytes(tmp / "model.safetensors", save(weights))
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(tmp / "state.pt", buf.getvalue())
        atomic_write_text(tmp / "recipe.yaml", recipe_yaml)
        if final.exists():  # a re-save of the same step (e.g. end of epoch == save_every)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(Path(run_dir) / LAST, final.name + "\n")
    _prune(root, keep, final.name)
    return final


def _prune(root: Path, keep: int, newest: str) -> None:
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in done[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path) -> Path:
    """A checkpoint dir from a checkpoint dir, a run dir or its ``last`` pointer, or a model.safetensors."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_file() and path.name == LAST:  # RUN_DIR/last itself: the pointer file
        path = path.parent
    if (path / LAST).is_file():
        name = (path / LAST).read_text().strip()
        path = path / CHECKPOINTS / name
    if not (path / "model.safetensors").is_file():
        raise BFMError(f"{path}: not a checkpoint (no model.safetensors, and no '{LAST}' pointer)")
    return path


def load_weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(path) / "model.safetensors"))


def load_state(path) -> dict:
    ckpt = resolve_checkpoint(path)
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BFMError(f"{ckpt}: no state.pt (weights only; cannot resume from it)") from None


# -- RNG states as plain tensors (loadable with weights_only=True) ----------------------------

def capture_rng() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
