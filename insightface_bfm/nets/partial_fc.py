"""Partial FC: sharded, sampled class centres with a distributed margin softmax (torch.distributed).

With millions of identities the (num_classes x D) centre matrix and its logits do not fit one
device. Following the idea of insightface arcface_torch's Partial FC v2:

* every rank owns a contiguous shard of the class centres (its ``weight``);
* the embeddings and labels of the whole global batch are all-gathered, so every rank scores all
  samples against its shard;
* with ``sample_rate < 1`` each rank keeps the centres of the labels present in the batch (the
  positives) plus random other centres of its shard, up to ``sample_rate * shard size``;
* the softmax normaliser is summed across ranks (distributed softmax), so the loss equals an ordinary
  softmax cross-entropy over all (sampled) classes of the global batch.

Without an initialised process group it runs as a single shard (world size 1).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .margin import DEFAULT_M, MARGINS, check_margin, normalized_cosine


def _world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the classes owned by ``rank``: near-equal contiguous shards."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for the local slice.

    Every rank computes the same global loss, but only through its own shard of centres, so the
    gradient of a sample's embedding is the sum of the ranks' partial gradients. ``scale`` is
    applied on top: world_size undoes DistributedDataParallel's averaging of backbone gradients.
    """

    @staticmethod
    def forward(ctx, tensor, group, world_size, rank, scale):
        ctx.group, ctx.rank, ctx.scale, ctx.batch = group, rank, scale, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        # all_reduce works on every backend (gloo has no reduce_scatter)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        local = grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]
        return local * ctx.scale, None, None, None, None


class _DistributedSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy over logits whose class columns are split across ranks.

    labels hold the local column of each row's class, or -1 when another rank owns it. The
    gradient is the usual (softmax - one_hot) / N, restricted to this rank's columns.
    """

    @staticmethod
    def forward(ctx, logits, labels, group, distributed):
        logits = logits.float()
        row_max = logits.max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = torch.exp(logits - row_max)
        denom = exp.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(denom, op=dist.ReduceOp.SUM, group=group)
        prob = exp / denom
        has_target = labels >= 0
        target_prob = prob.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1) * has_target
        if distributed:
            dist.all_reduce(target_prob, op=dist.ReduceOp.SUM, group=group)
        ctx.save_for_backward(prob, labels)
        return -torch.log(target_prob.clamp_min(1e-30)).mean()

    @staticmethod
    def backward(ctx, grad_loss):
        prob, labels = ctx.saved_tensors
        grad = prob.clone()
        one_hot = torch.arange(grad.shape[1], device=grad.device).unsqueeze(0) == labels.unsqueeze(1)
        grad = (grad - one_hot.to(grad.dtype)) * (grad_loss / grad.shape[0])
        return grad, None, None, None


class PartialFC(nn.Module):
    """Sharded (and optionally sampled) margin-softmax classifier; ``forward(embeddings, labels) -> loss``.

    Unlike a margin head, which returns logits, Partial FC returns the scalar cross-entropy of the
    global batch (the logits never exist in one place). ``embeddings`` (B, D) and ``labels`` (B,) are
    this rank's part of the batch; every rank must pass the same B.

    margin: "arcface" or "cosface"; s, m as in ``nets.margin`` (m defaults per margin).
    sample_rate: fraction of each shard's centres scored per step (1.0 = all, exact softmax).
    scale_grad_for_ddp: multiply embedding gradients by the world size, so that after
        DistributedDataParallel averages the backbone gradients they equal those of the global-batch
        loss (as a single process on the whole batch would get). Leave True under DDP.
    ``weight`` holds only this rank's shard; ``full_weight()`` / ``load_full_weight()`` convert.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: str = "arcface",
        s: float = 64.0,
        m: float | None = None,
        sample_rate: float = 1.0,
        process_group=None,
        scale_grad_for_ddp: bool = True,
    ):
        super().__init__()
        m = DEFAULT_M.get(margin, 0.0) if m is None else float(m)
        check_margin(margin, s, m)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"PartialFC sample_rate must be in (0, 1], got {sample_rate}")
        self.group = process_group
        self.world_size, self.rank = _world(process_group)
        if num_classes < self.world_size:
            raise ValueError(
                f"PartialFC: {num_classes} classes cannot be sharded over {self.world_size} ranks"
            )
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.margin, self.s, self.m = margin, float(s), m
        self.sample_rate = float(sample_rate)
        self.scale_grad_for_ddp = scale_grad_for_ddp
        self.class_start, self.class_stop = shard_range(num_classes, self.world_size, self.rank)
        self.num_local = self.class_stop - self.class_start
        self.num_sample = max(1, int(math.ceil(self.sample_rate * self.num_local)))
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        # the shard rows scored in the last forward (all rows when sample_rate == 1); for inspection
        self.last_index: torch.Tensor | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _sample(self, local_labels: torch.Tensor, generator=None):
        """Pick the shard rows to score: all positives, then random negatives up to num_sample.

        Returns (row index, labels remapped to positions in that index, -1 kept)."""
        if self.num_sample >= self.num_local:
            return None, local_labels
        device = local_labels.device
        score = torch.rand(self.num_local, device=device, generator=generator)
        positives = local_labels[local_labels >= 0]
        score[positives] = 2.0  # above any random score: positives are always kept
        count = max(self.num_sample, int(torch.unique(positives).numel()))
        index = torch.topk(score, k=count).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=device)
        remap[index] = torch.arange(count, device=device)
        remapped = torch.where(local_labels >= 0, remap[local_labels.clamp_min(0)], local_labels)
        return index, remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        """Global-batch mean margin-softmax CE. ``generator`` (a torch.Generator on the embeddings'
        device) drives the negative sampling when sample_rate < 1; None uses torch's default RNG."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"PartialFC expects embeddings (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )
        labels = labels.long().view(-1)
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(f"PartialFC: {labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
        if self.distributed:
            scale = float(self.world_size) if self.scale_grad_for_ddp else 1.0
            embeddings = _GatherWithGrad.apply(embeddings, self.group, self.world_size, self.rank, scale)
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels.contiguous(), group=self.group)
            labels = torch.cat(gathered)
        in_shard = (labels >= self.class_start) & (labels < self.class_stop)
        local_labels = torch.where(in_shard, labels - self.class_start, torch.full_like(labels, -1))
        index, local_labels = self._sample(local_labels, generator)
        weight = self.weight if index is None else self.weight[index]
        self.last_index = (
            torch.arange(self.num_local, device=labels.device) if index is None else index.detach()
        )
        cosine = normalized_cosine(embeddings, weight)
        logits = MARGINS[self.margin](cosine, local_labels, self.s, self.m)
        return _DistributedSoftmaxCE.apply(logits, local_labels, self.group, self.distributed)

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """All class centres (num_classes, D), gathered from every rank (collective: call on all)."""
        if not self.distributed:
            return self.weight.detach().clone()
        rows = -(-self.num_classes // self.world_size)  # largest shard; pad so all_gather sizes match
        padded = self.weight.new_zeros(rows, self.embedding_size)
        padded[: self.num_local] = self.weight
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        shards = []
        for rank, part in enumerate(parts):
            start, stop = shard_range(self.num_classes, self.world_size, rank)
            shards.append(part[: stop - start])
        return torch.cat(shards)

    @torch.no_grad()
    def load_full_weight(self, weight: torch.Tensor) -> None:
        """Take this rank's shard from a full (num_classes, D) centre matrix."""
        if tuple(weight.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"PartialFC.load_full_weight: expected ({self.num_classes}, {self.embedding_size}), "
                f"got {tuple(weight.shape)}"
            )
        self.weight.copy_(weight[self.class_start : self.class_stop])

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, margin={self.margin}, "
            f"s={self.s}, m={self.m}, sample_rate={self.sample_rate}, shard=[{self.class_start}, "
            f"{self.class_stop}) of rank {self.rank}/{self.world_size}"
        )
