"""The training loop of ``bfm-train``: one process (CPU or one GPU) or many under torchrun.

Where things happen, in the order a batch meets them:

1. data enters      ``open_dataset(recipe.data.path)``; DataLoader workers decode images and
                    ``collate_faces`` stacks them as uint8 (B,112,112,3) BGR, dropping and
                    counting corrupt samples; ``GlobalBatchSampler`` fixes the order.
2. on the device    ``Trainer.prepare_batch``: uint8 -> normalised RGB float (``to_network_tensor``),
                    random flip, then the masks are drawn (``MaskAugment``, on the batch's device
                    with the trainer's own generators): the pair (x, masked x).
3. loss terms       ``BFMModel.forward`` (train/model.py) -> one function of
                    ``insightface_bfm.losses`` per equation; ``losses.total_loss`` weights them (eq. 7).
4. update           ``Trainer.optimize``: backward (AMP-scaled for fp16), optional clipping, SGD
                    with the learning rate of ``learning_rate(step)`` (warm-up + step schedule).
5. records          ``<run_dir>/metrics.jsonl``, a tqdm bar with each term and images/s, optional
                    TensorBoard, checkpoints (train/checkpoint.py), evaluation on held-out
                    identities (train/holdout.py).

Resuming restores weights, optimizer, step, the position in the epoch, the Python / NumPy / torch
RNGs and the flip and mask generators, so the continued loss sequence equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import losses
from ..atomic import atomic_write_text
from ..errors import BFMError
from . import checkpoint as ckpt
from .augment import PhotoVariation
from .classifier_training import PREFIX as CLASSIFIER_PREFIX
from .classifier_training import ClassifierAverage
from .distributed import GlobalBatchSampler, World, barrier, init_from_env
from .model import BFMModel, initialise
from .recipe import Recipe

log = logging.getLogger("insightface_bfm.train")


# -- 1. data enters ------------------------------------------------------------------------------

def collate_faces(samples):
    """DataLoader collate: drop the ``None`` of corrupt samples (counted), stack the rest.

    Returns (uint8 tensor (B,112,112,3) BGR, int64 labels (B,), number of samples dropped).
    Images stay uint8 here: 4x less to pin and copy than floats; the device converts them.
    """
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return None, None, skipped
    images = torch.from_numpy(np.stack([img for img, _ in good]))
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, skipped


# -- 2. on the device ------------------------------------------------------------------------------

class InMemoryFaces:
    """A dataset decoded once into one uint8 array (``data.cache``): for small sets such as the
    quickstart's generated faces, whose drawing would otherwise be repeated every epoch."""

    def __init__(self, dataset, progress: bool = True):
        from tqdm.auto import tqdm

        keep, images = [], []
        bar = tqdm(range(len(dataset)), desc="caching images", unit="img", leave=False, disable=not progress)
        for i in bar:
            sample = dataset[i]
            if sample is not None:
                keep.append(i)
                images.append(sample[0])
        if not images:
            raise BFMError(f"{dataset.describe()}: no readable image to cache")
        self.images = np.stack(images)
        self.labels = np.asarray(dataset.labels)[keep]
        self.num_classes = dataset.num_classes
        self.skipped = len(dataset) - len(keep)
        self._describe = dataset.describe()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])

    def describe(self) -> str:
        return f"{self._describe} (cached in memory)"


def to_network_tensor(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) BGR -> float32 (B,3,H,W) RGB, (x - 127.5) / 127.5.

    The torch twin of ``insightface_bfm.imaging.to_network_input``, run on the batch's device so
    a GPU receives uint8 and converts it itself.
    """
    x = images.permute(0, 3, 1, 2).flip(1).float()
    # contiguous NCHW: the permuted view would be channels-last by accident (see Trainer.channels_last)
    return ((x - 127.5) / 127.5).contiguous()


def keep_freed_cpu_memory() -> None:
    """Ask glibc to keep freed blocks instead of unmapping them (CPU training only).

    Every step frees and reallocates activation buffers of megabytes; glibc serves those with
    mmap/munmap, so each step faults fresh zeroed pages in from the kernel. On a small CPU that
    costs about a third of the training time in system time; raising the thresholds removes it,
    at the price of a process that keeps its peak memory.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks below 1 GiB come from the heap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: do not give the heap's top back eagerly
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass


def resolve_device(spec: str, world: World | None = None) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BFMError(f"train.device is {spec!r} but torch sees no CUDA device")
        if spec == "cuda":
            return torch.device("cuda", world.local_rank if world else 0)
    return torch.device(spec)


def learning_rate(step: int, steps_per_epoch: int, optim) -> float:
    """Linear warm-up over ``warmup_epochs``, then lr * gamma ** (milestones passed) (paper: /10 at
    30, 60, 90). A pure function of the step: resuming needs no scheduler state."""
    warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
    if step < warmup_steps:
        return optim.lr * (step + 1) / warmup_steps
    epoch = step // steps_per_epoch
    return optim.lr * optim.gamma ** sum(epoch >= m for m in optim.milestones)


class Trainer:
    """Builds everything a recipe describes; ``fit()`` trains, checkpoints and evaluates.

    ``dataset`` may be given (tests); else it is opened from ``recipe.data.path``.
    ``resume``: False, True (the run dir's ``last`` checkpoint) or a checkpoint path.
    """

    def __init__(self, recipe: Recipe, dataset=None, resume=False, out: str | Path | None = None,
                 holdout=None):
        if out is not None:
            # the recipe the run records (recipe.yaml, checkpoints, exports) names where it went
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, output=str(out)))
        self.recipe = recipe
        self.run_dir = recipe.output_dir
        device_spec = recipe.train.device
        wants_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
        self.world = init_from_env("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(device_spec, self.world)
        if self.device.type == "cpu":
            keep_freed_cpu_memory()
        self._seed_everything(recipe.train.seed)

        from ..data import open_dataset

        self.dataset = dataset if dataset is not None else open_dataset(recipe.data.path)
        if recipe.data.cache and not isinstance(self.dataset, InMemoryFaces):
            self.dataset = InMemoryFaces(self.dataset, progress=recipe.train.progress)
        self.holdout = holdout if holdout is not None else recipe.eval.holdout
        self.global_batch = recipe.optim.batch_size
        self.sampler = GlobalBatchSampler(len(self.dataset), self.global_batch, self.world, recipe.train.seed)
        self.steps_per_epoch = len(self.dataset) // self.global_batch
        self.total_steps = self.steps_per_epoch * recipe.optim.epochs
        if recipe.train.max_steps is not None:
            self.total_steps = min(self.total_steps, recipe.train.max_steps)

        # -- networks
        self.model = BFMModel(recipe, self.dataset.num_classes)
        self.loaded = initialise(self.model, recipe.init)
        self.model.to(self.device)
        # channels_last on CUDA (train.channels_last); on the CPU only when asked by
        # train.channels_last_cpu: torch 2.13's oneDNN backward crashes (SIGSEGV) on some narrow
        # convolutions in that layout, but MobileFaceNet's depthwise ones run ~4x faster in it
        self.channels_last = ((recipe.train.channels_last and self.device.type == "cuda")
                              or (recipe.train.channels_last_cpu and self.device.type == "cpu"))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if recipe.init.head == "centres" and not resume:  # a resumed run has its heads in the checkpoint
            from .head_init import start_heads_at_centres

            self.loaded += start_heads_at_centres(self.model, self.dataset, recipe.init, self.device,
                                                  channels_last=self.channels_last,
                                                  progress=recipe.train.progress)
        if recipe.train.onnxruntime_frozen_layers and self.device.type == "cpu":
            from .frozen_prefix import attach

            self.loaded += attach(self.model, torch.get_num_threads())
        if recipe.train.sync_bn and self.world.distributed:
            if self.device.type != "cuda":
                raise BFMError("train.sync_bn needs CUDA (torch has no CPU SyncBatchNorm)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.train()
        self.step_model = self._wrap(self.model)

        # -- flips and masks, drawn on the batch's device with generators of our own (saved in
        # checkpoints). A stream per use: every mode then sees the same flips, and the modes that
        # draw masks the same masks, so a comparison with one seed differs only by the method.
        from ..masks.batched import MaskAugment

        d = recipe.data

        def mask_augment(worn_low):
            return MaskAugment(types=d.mask_types, p=d.mask_prob, kps_jitter=d.mask_kps_jitter,
                               worn_low=worn_low, colours=d.mask_colours,
                               lighting=d.mask_lighting).to(self.device)

        self.mask_augment = mask_augment(d.mask_worn_low)
        aug = recipe.data.classifier_photo_aug if recipe.mode == "bfm" and recipe.model.classifier else 0.0
        self.photo_variation = PhotoVariation(aug) if aug > 0 else None
        # C's own options (classifier_training.py): further steps of C alone per batch, on masks
        # of a stream of their own (E_P's masks stay those of a run without them), and an average
        # of its weights
        trains_c = recipe.mode == "bfm" and recipe.model.classifier
        self.classifier_steps = recipe.optim.classifier_steps if trains_c else 1
        self.classifier_average = (ClassifierAverage(self.model.classifier, recipe.optim.classifier_ema)
                                   if trains_c and recipe.optim.classifier_ema > 0 else None)
        self.classifier_mask_augment = (mask_augment(d.classifier_worn_low)
                                        if self.classifier_steps > 1 and d.classifier_worn_low is not None
                                        else self.mask_augment)
        streams = ("flip", "mask", "photo") + (("classifier_mask",) if self.classifier_steps > 1 else ())
        self.generators = {}
        for stream in streams:
            self.generators[stream] = torch.Generator(device=self.device)
            self.generators[stream].manual_seed(self._stream_seed(stream))

        # -- optimizer: SGD on the trainable parameters, fused kernels where torch has them
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = recipe.optim
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                         **({"fused": True} if self.device.type == "cuda" else {}))
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.train.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.loss_weights = {k: getattr(recipe.loss, k) for k in losses.TERMS}

        # -- position
        self.step, self.epoch, self.batch_in_epoch, self.skipped = 0, 0, 0, 0
        self._saved_step = None
        if resume:
            self.load(self.run_dir if resume is True else resume)

    # -- construction helpers ----------------------------------------------------------------------
    def _seed_everything(self, seed: int) -> None:
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    STREAM_OFFSETS = {"flip": 0, "mask": 1, "photo": 2, "classifier_mask": 3}

    def _stream_seed(self, stream: str, step: int = 0) -> int:
        # Per rank and stream. "flip" and "mask" keep a stride of 2 per rank, the seeds every
        # measured run used; the later streams ("photo", C's "classifier_mask") would replay the
        # next rank's "flip" / "mask" at that stride, so under torchrun their ranks sit far apart.
        # On one process every stream keeps the seed all measured runs used.
        seed, rank, offset = self.recipe.train.seed, self.world.rank, self.STREAM_OFFSETS[stream]
        if offset >= 2 and self.world.world_size > 1:
            return seed * 2000 + 1_000_000_007 * (rank + 1) + offset + 7919 * step
        return (seed * 1000 + rank) * 2 + offset + 7919 * step

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            from ..nets import PartialFC

            # Partial FC centres are sharded (different on every rank): DDP must leave them alone.
            sharded = [f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, PartialFC)
                       for p, _ in m.named_parameters()]
            if sharded:
                DDP._set_params_and_buffers_to_ignore_for_model(model, sharded)
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DDP(model, device_ids=ids)
        if self.recipe.train.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _loader(self) -> DataLoader:
        workers = self.recipe.data.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_faces,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # its own generator: creating the iterator must not consume the global torch RNG,
            # or a resumed run would draw different dropout / masks than an uninterrupted one
            generator=torch.Generator().manual_seed(self.recipe.train.seed),
        )

    # -- 2. the pair (x, masked x) -------------------------------------------------------------------
    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor):
        """uint8 BGR batch (on any device) -> (x, masked x, labels) on the training device."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        x = to_network_tensor(images)
        if self.recipe.data.flip:
            flip = torch.rand(len(x), device=self.device, generator=self.generators["flip"]) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        # masks drawn here, on the device of the batch (MaskAugment is a batched torch renderer);
        # baseline 1 never looks at masked faces, so it does not pay for drawing them
        if self.recipe.mode == "baseline1":
            x_masked = x
        else:
            x_masked, _ = self.mask_augment(x, generator=self.generators["mask"])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            x_masked = x_masked.contiguous(memory_format=torch.channels_last)
        return x, x_masked, labels

    # -- 3 + 4. one optimizer step ---------------------------------------------------------------------
    def optimize(self, x: torch.Tensor, x_masked: torch.Tensor, labels: torch.Tensor) -> dict:
        """Forward, eq. 7, backward, step. Returns the detached terms and ``loss`` (tensors: no sync)."""
        lr = learning_rate(self.step, self.steps_per_epoch, self.recipe.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            if self.photo_variation is None:
                terms = self.step_model(x, x_masked, labels)
            else:
                views = self.photo_variation(torch.cat([x, x_masked]), generator=self.generators["photo"])
                terms = self.step_model(x, x_masked, labels, views)
        total = losses.total_loss(terms, self.loss_weights)
        self._backward(total)
        self._clip_and_step(self.optimizer.param_groups[0]["params"])
        if self.classifier_steps > 1:  # eq. 1 of C's further steps, their mean (as "mask": unweighted)
            further = [self.classifier_step(x) for _ in range(self.classifier_steps - 1)]
            terms["mask_extra"] = torch.stack(further).mean()
        self.step += 1
        out = {k: v.detach() for k, v in terms.items()}
        out["loss"] = total.detach()
        return out

    def classifier_step(self, x: torch.Tensor) -> torch.Tensor:
        """One further SGD step of C alone (eq. 1, weighted as in eq. 7) on a fresh mask draw of the
        faces ``x`` (``optim.classifier_steps``, see classifier_training.py). Only C has gradients,
        so only C moves (SGD skips parameters without one). Returns eq. 1, unweighted."""
        classifier = self.model.classifier
        x_masked, _ = self.classifier_mask_augment(x, generator=self.generators["classifier_mask"])
        views = torch.cat([x, x_masked])
        if self.photo_variation is not None:
            views = self.photo_variation(views, generator=self.generators["photo"])
        with self._autocast():
            logits, logits_masked = classifier(views).chunk(2)
            loss = losses.mask_loss(logits, logits_masked, self.model.pair_reduction)
        self._backward(self.loss_weights["mask"] * loss)
        # C is called outside DDP here: average its gradients by hand. (Its BatchNorm statistics
        # move on each rank's half; DDP puts rank 0's back at the next joint step, and rank 0
        # saves the average.)
        if self.world.distributed:
            for p in classifier.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(self.world.world_size)
        self._clip_and_step(list(classifier.parameters()))
        return loss.detach()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # None, not 0: SGD then skips what has no gradient
        self.scaler.scale(loss).backward()

    def _clip_and_step(self, clipped: list) -> None:
        """Optional clipping of the ``clipped`` parameters' gradients, the SGD step, C's average."""
        if self.recipe.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(clipped, self.recipe.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.classifier_average is not None:
            self.classifier_average.update()

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or ``max_steps``), checkpointing and evaluating on the way."""
        r, main = self.recipe, self.world.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "recipe.yaml", r.to_yaml())
            self._say(f"{r.mode}: {self.dataset.describe()}; {self.steps_per_epoch} steps/epoch of "
                      f"{self.global_batch} pairs, {self.total_steps} steps on {self.device}"
                      f"{f' x {self.world.world_size} processes' if self.world.distributed else ''}"
                      f" -> {self.run_dir}")
            for line in self.loaded:
                self._say(f"initialised {line}")
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.step, r.train.tensorboard) if main else None
        loader = self._loader() if self.step < self.total_steps else None
        last_eval = None
        while self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch)
            bar = self._progress_bar()
            window = Window()
            wait_start = time.perf_counter()
            for images, labels, skipped in loader:
                window.data_wait += time.perf_counter() - wait_start
                self.skipped += skipped
                if images is None:
                    self.batch_in_epoch += 1
                    wait_start = time.perf_counter()
                    continue
                images, labels = _pad_to(images, labels, self.sampler.local_batch)
                x, x_masked, labels = self.prepare_batch(images, labels)
                window.add(self.optimize(x, x_masked, labels), len(labels) * self.world.world_size)
                self.batch_in_epoch += 1
                if bar is not None:
                    bar.update(1)
                if self.step % r.train.log_every == 0 or self.step == self.total_steps:
                    record = window.flush(self.step, self.epoch, self.optimizer.param_groups[0]["lr"],
                                          self.skipped)
                    if metrics is not None:
                        metrics.write(record)
                    if bar is not None:
                        bar.set_postfix_str(_postfix(record))
                if r.train.save_every and self.step % r.train.save_every == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
                wait_start = time.perf_counter()
            if bar is not None:
                bar.close()
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                every = r.eval.every_epochs
                if every and self.epoch % every == 0 and self.step < self.total_steps:
                    last_eval = self.evaluate(metrics)
            self.save()
        if self.classifier_average is not None:
            self.classifier_average.install()  # the model in memory is the one saved
        summary = {"mode": r.mode, "steps": self.step, "epochs": self.epoch, "run_dir": str(self.run_dir),
                   "skipped_samples": self.skipped}
        if self.holdout is not None:
            last_eval = self.evaluate(metrics)
        if last_eval is not None:
            summary["eval"] = last_eval
        if metrics is not None:
            metrics.close()
        if main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def evaluate(self, metrics=None) -> dict | None:
        """Verification per case on ``eval.holdout`` (rank 0; the others wait)."""
        result = None
        if self.world.is_main and self.holdout is not None:
            from .holdout import evaluate_holdout

            self.model.eval()
            e = self.recipe.eval
            average = self.classifier_average
            with average.in_place(self.model) if average is not None else contextlib.nullcontext():
                result = evaluate_holdout(self.model, self.holdout, pairs=e.pairs, folds=e.folds,
                                          batch_size=e.batch_size, seed=e.seed, device=self.device,
                                          mask_types=self.recipe.data.mask_types, thresholds=e.thresholds)
            self.model.train()
            if metrics is not None:
                metrics.write({"step": self.step, "epoch": self.epoch, "eval": result})
            self._say(f"step {self.step} held-out accuracy: " + ", ".join(
                f"case {c} {100 * result[f'case{c}']['accuracy']:.2f}%" for c in (1, 2, 3)))
        barrier(self.world)
        return result

    # -- checkpoints --------------------------------------------------------------------------------------
    def model_state(self) -> dict:
        """Weights for model.safetensors; Partial FC shards are gathered (a collective: all ranks call)."""
        from ..nets import PartialFC

        state = self.model.state_dict()
        for name, module in self.model.named_modules():
            if isinstance(module, PartialFC):
                state[f"{name}.weight"] = module.full_weight()
        if self.classifier_average is not None:  # C as exported: the average of its weights
            for k, v in self.classifier_average.averaged_weights().items():
                state[CLASSIFIER_PREFIX + k] = v
        return state

    def save(self) -> Path | None:
        if self._saved_step == self.step:  # e.g. save_every landing on the end of an epoch
            return None
        weights = self.model_state()
        path = None
        if self.world.is_main:
            state = {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "skipped": self.skipped, "world_size": self.world.world_size,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": ckpt.capture_rng(),
                "generators": {k: g.get_state() for k, g in self.generators.items()},
            }
            if self.classifier_average is not None:
                state["classifier_average"] = self.classifier_average.state()
            path = ckpt.save_checkpoint(self.run_dir, self.step, weights, state, self.recipe.to_yaml(),
                                        keep=self.recipe.train.keep_checkpoints)
        barrier(self.world)
        self._saved_step = self.step
        return path

    def load(self, path) -> None:
        """Continue from a checkpoint (``path``: checkpoint dir or run dir)."""
        from ..nets import PartialFC
        from .model import load_strict

        try:
            where = ckpt.resolve_checkpoint(path)
        except BFMError:
            raise BFMError(f"--resume: no checkpoint in {path} (nothing to resume)") from None
        weights = ckpt.load_weights(where)
        for name, module in self.model.named_modules():
            if isinstance(module, PartialFC):
                module.load_full_weight(weights[f"{name}.weight"].to(self.device))
                weights[f"{name}.weight"] = module.weight.detach()
        load_strict(self.model, weights, str(where))
        state = ckpt.load_state(where)
        if self.classifier_average is not None:
            saved = {k[len(CLASSIFIER_PREFIX):]: v for k, v in weights.items()
                     if k.startswith(CLASSIFIER_PREFIX)}
            self.classifier_average.restore(saved, state.get("classifier_average"))
        elif "classifier_average" in state:  # saved with the average, resumed without: C trains on
            self.model.classifier.load_state_dict(state["classifier_average"]["training_weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.skipped = state["batch_in_epoch"], state["skipped"]
        self._saved_step = self.step
        ckpt.restore_rng(state["rng"])
        same_world = state["world_size"] == self.world.world_size
        for k, g in self.generators.items():
            if same_world and k in state["generators"]:
                g.set_state(state["generators"][k])
            else:  # another world size (the per-rank streams cannot continue), or a stream the
                # checkpoint's run did not have (optim.classifier_steps added): start a new one
                g.manual_seed(self._stream_seed(k, self.step))
        self._say(f"resumed from {where} at step {self.step} "
                  f"(epoch {self.epoch}, batch {self.batch_in_epoch})")

    # -- records ------------------------------------------------------------------------------------------
    def _progress_bar(self):
        if not (self.world.is_main and self.recipe.train.progress):
            return None
        from tqdm.auto import tqdm

        total = min(self.steps_per_epoch, self.batch_in_epoch + self.total_steps - self.step)
        return tqdm(total=total, initial=self.batch_in_epoch, unit="step", dynamic_ncols=True, leave=False,
                    desc=f"{self.recipe.mode} epoch {self.epoch + 1}")

    def _say(self, text: str) -> None:
        if self.world.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text)


def _pad_to(images, labels, size: int):
    """After dropped samples, repeat the first ones so every step has the same batch shape (Partial FC
    gathers equal-sized batches from every rank; a compiled step keeps one shape)."""
    n = len(labels)
    if n >= size:
        return images, labels
    index = torch.arange(size) % n
    return images[index], labels[index]


def _postfix(record: dict) -> str:
    terms = " ".join(f"{k} {record[k]:.3f}" for k in (*losses.TERMS, "loss") if k in record)
    return f"{terms} lr {record['lr']:.3g} {record['images_per_s']:.0f} img/s"


class Window:
    """Loss terms and timings accumulated between two log lines (tensors summed without a sync)."""

    def __init__(self):
        self.sums, self.steps, self.images, self.data_wait = {}, 0, 0, 0.0
        self.start = time.perf_counter()

    def add(self, terms: dict, images: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.steps += 1
        self.images += images

    def flush(self, step: int, epoch: int, lr: float, skipped: int) -> dict:
        values = {k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}  # the one sync per window
        elapsed = time.perf_counter() - self.start
        record = {"step": step, "epoch": epoch, "lr": lr, **values,
                  "images_per_s": self.images / max(elapsed, 1e-9),
                  "data_wait": self.data_wait / max(elapsed, 1e-9), "skipped": skipped}
        self.__init__()
        return record


class MetricsLog:
    """``metrics.jsonl``, one JSON object per line, appended (a log, not an artifact: appending keeps
    it O(1) per line). On resume the lines past the checkpoint's step are dropped first, atomically,
    so the file reads as one uninterrupted run. TensorBoard too, when asked and installed."""

    def __init__(self, path: Path, step: int, tensorboard: bool = False):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a")  # noqa: SIM115 - held open for the run
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                log.warning("train.tensorboard is on but the tensorboard package is not installed; "
                            "metrics go to %s only", path)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
