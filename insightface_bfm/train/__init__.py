"""Training of Balanced Feature Matching (torch; the ``[train]`` extra).

    recipe.py      the YAML schema, validated at the door (``load_recipe``, ``Recipe``)
    model.py       ``BFMModel`` (C, E_F, E_P, heads) and where each loss term is computed;
                   ``load_checkpoint``
    trainer.py     the loop: data -> masks on the device -> losses -> SGD; ``Trainer``
    distributed.py torchrun: process group from the environment, the global batch sampler
    checkpoint.py  atomic checkpoints (safetensors + state.pt) and RNG capture
    holdout.py     verification per case on held-out identities
    head_init.py   ``init.head: centres``: ArcFace heads started at the identities' mean embeddings
    quickstart.py  several modes on one recipe, compared as the paper's Table II
    cli.py         ``bfm-train``

Names are loaded lazily so that ``import insightface_bfm.train.recipe`` (used to validate a
recipe before anything heavy) does not import torch.
"""

from ..lazy import lazy_names

_EXPORTS = {
    "Recipe": ".recipe",
    "load_recipe": ".recipe",
    "BFMModel": ".model",
    "load_checkpoint": ".model",
    "Trainer": ".trainer",
    "evaluate_holdout": ".holdout",
    "evaluate_holdout_per_mask_set": ".holdout",
    "run_comparison": ".quickstart",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
