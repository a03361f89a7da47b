"""The mask classifier C's own training options: ``optim.classifier_steps`` and ``optim.classifier_ema``.

Both are deviations from the paper (off in its recipes). C (Table I) is trained from scratch
while the extractors are fine-tuned: on a short budget it is still learning when E_P is done, and
at a constant learning rate its last weights are a random point of a bouncing path: trained alone
on LFW crops, its specificity moved by half a point between checkpoints 300 steps apart.

- ``classifier_steps`` K: each batch gives C K SGD steps. The first is eq. 7's joint step. Each
  further step (``Trainer.classifier_step``) is eq. 1 alone, on a fresh mask draw of the same
  faces, from a mask stream of its own, so that E_P's masks stay those of a run without it. C's
  parameters are its own, so E_F, E_P and the heads are untouched by these steps (SGD skips
  parameters without a gradient) and train exactly as without them, unless ``optim.clip_grad``
  is set (the joint step clips one norm over all gradients, C's included) or ``train.amp`` is
  fp16 (the loss scale is shared). ``data.classifier_worn_low`` w draws a share w of the further
  steps' masks worn low, under the nose (``Trainer.classifier_mask_augment``); E_P's masks keep
  ``data.mask_worn_low``.
- ``classifier_ema`` d: the weights that are saved, evaluated and exported are an exponential
  moving average of C's weights over its steps (BatchNorm statistics included):
  avg <- d * avg + (1 - d) * C. C itself trains on undisturbed. A checkpoint keeps both, so a
  resumed run continues the same average.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

PREFIX = "classifier."  # C's keys in model.safetensors (model.PARTS)


class ClassifierAverage:
    """The moving average of C's weights (``optim.classifier_ema``) beside the training C."""

    def __init__(self, classifier: nn.Module, decay: float):
        self.classifier = classifier
        self.average = AveragedModel(classifier, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged C (a MaskClassifier)."""
        return self.average.module

    def update(self) -> None:
        """After every optimizer step that moved C."""
        self.average.update_parameters(self.classifier)
        # integer buffers (BatchNorm's num_batches_tracked) are counts, not averaged: the latest
        for mine, theirs in zip(self.average.module.buffers(), self.classifier.buffers()):
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def averaged_weights(self) -> dict:
        """C's state dict to save in place of the training C's (keys without the prefix)."""
        return {k: v.detach().clone() for k, v in self.average.module.state_dict().items()}

    # -- checkpoints: model.safetensors holds the average (what is exported); the training C and the
    # count of averaged steps go in the checkpoint's state
    def state(self) -> dict:
        return {"training_weights": {k: v.detach().clone() for k, v in self.classifier.state_dict().items()},
                "n_averaged": self.average.n_averaged.detach().clone()}

    def restore(self, averaged: dict, state: dict | None) -> None:
        """``averaged``: C's weights as saved (the average); ``state``: what ``state()`` gave, or
        None for a checkpoint written without the average (C trains on from the saved weights and
        the average starts anew: its first update takes C as it is then)."""
        self.average.module.load_state_dict(averaged)
        if state is None:
            self.average.n_averaged.zero_()
            return
        self.classifier.load_state_dict(state["training_weights"])
        self.average.n_averaged.copy_(state["n_averaged"])

    @contextlib.contextmanager
    def in_place(self, model: nn.Module):
        """Within: ``model.classifier`` is the average (evaluation while training)."""
        model.classifier = self.average.module
        self.average.module.train(model.training)
        try:
            yield
        finally:
            model.classifier = self.classifier

    def install(self) -> None:
        """At the end of training: the training C takes the average's weights, so that the model
        in memory is the one saved."""
        with torch.no_grad():
            self.classifier.load_state_dict(self.average.module.state_dict())
