"""One process or many: torchrun's environment, the process group, and who reads which samples.

Under ``torchrun`` every process sees RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
``init_from_env`` joins the group (NCCL between GPUs, gloo on CPU). Run as a plain
``python``/``bfm-train`` it is a world of one and nothing is initialised, so a single GPU or
the CPU needs no launcher and no NCCL (arcface_torch forces NCCL even for one GPU).

``GlobalBatchSampler`` decides the data order for everyone: each epoch one permutation drawn
from (seed, epoch), cut into *global* batches, each process taking its contiguous slice. So a
run on N processes sees exactly the batches a single process would see, and restarting
mid-epoch only needs (epoch, batch index).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import BFMError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> World:
    """Join torchrun's process group if its variables are set; else a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


class GlobalBatchSampler:
    """Yields this process's slice of each global batch, in an order fixed by (seed, epoch).

    Used as a DataLoader ``batch_sampler``. The last incomplete global batch of an epoch is
    dropped so every step has the same size. ``set_epoch(e, start=b)`` resumes at batch b.
    """

    def __init__(self, num_samples: int, global_batch: int, world: World, seed: int = 0):
        if global_batch % world.world_size:
            raise BFMError(f"optim.batch_size {global_batch} is not divisible by the {world.world_size} "
                           "processes of this run")
        if num_samples < global_batch:
            raise BFMError(f"the dataset has {num_samples} samples, fewer than one batch of {global_batch}")
        self.num_samples, self.global_batch, self.world, self.seed = num_samples, global_batch, world, seed
        self.local_batch = global_batch // world.world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples // self.global_batch - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        lo = self.world.rank * self.local_batch
        for b in range(self.start, self.num_samples // self.global_batch):
            batch = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield batch[lo:lo + self.local_batch]
