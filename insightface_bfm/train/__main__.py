"""``python -m insightface_bfm.train RECIPE.yaml ...``: ``bfm-train`` for launchers that take a module,
e.g. ``torchrun --nproc_per_node 8 -m insightface_bfm.train recipes/paper_casia_r50.yaml``."""

from ..cli import train_main

if __name__ == "__main__":
    train_main()
