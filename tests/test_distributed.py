"""torchrun: a 2-process gloo step equals the single-process step on the same global batch.

The test launches this very file under ``python -m torch.distributed.run --nproc_per_node 2``
(the ``__main__`` block is the worker): each process joins the group from torchrun's
environment (``insightface_bfm.train.distributed.init_from_env``), builds the Trainer of a
tiny BFM recipe, takes its half of one fixed global batch and runs one optimizer step under
DistributedDataParallel. Each rank saves its parameters; the test compares both with one step
of a single process on the whole batch.

What the comparison fixes, and why (the README's training section says the same):
- BatchNorm is frozen in this recipe (``init.freeze_bn``): with batch statistics each process
  would normalise by its own half, which is exactly what plain DDP does and why it differs from
  a single process; torch has no CPU SyncBatchNorm to close that gap.
- The pair (x, masked x) is built here and fed to ``Trainer.optimize``: the trainer's flip and
  mask generators are seeded per rank (each process draws its own masks), so the loader path
  gives the same images but other masks than a single process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8


def recipe(out, mode="bfm", classifier_steps=1):
    from insightface_bfm.train.recipe import Recipe

    return Recipe.from_dict({
        "mode": mode,
        "model": {"backbone": "r18", "embedding_size": 16, "s": 16.0, "m": 0.2,
                  "backbone_options": {"width": 0.0625, "layers": [1, 1, 1, 1]}},
        "data": {"path": "synthetic:4:4:0", "num_workers": 0},
        "optim": {"batch_size": GLOBAL_BATCH, "lr": 0.1, "clip_grad": 5.0,
                  "classifier_steps": classifier_steps},
        "init": {"freeze_bn": True},
        "train": {"output": str(out), "progress": False, "seed": 3},
    })


def global_batch():
    g = torch.Generator().manual_seed(42)
    x = torch.randn(GLOBAL_BATCH, 3, 112, 112, generator=g)
    x_masked = x.clone()
    x_masked[:, :, 60:] = torch.rand(GLOBAL_BATCH, 3, 52, 112, generator=g)  # a "mask" over the lower face
    labels = torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)
    return x, x_masked, labels


def one_step(out, mode, classifier_steps=1):
    """One optimizer step on this process's slice of the global batch.

    Returns (the weights before the step, the trainer after it)."""
    from insightface_bfm.data import open_dataset
    from insightface_bfm.train.trainer import Trainer

    trainer = Trainer(recipe(out, mode, classifier_steps), dataset=open_dataset("synthetic:4:4:0"))
    x, x_masked, labels = global_batch()
    rank, size = trainer.world.rank, trainer.sampler.local_batch
    part = slice(rank * size, (rank + 1) * size)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.optimize(x[part], x_masked[part], labels[part])
    return before, trainer


def test_sampler_splits_global_batches_across_ranks():
    from insightface_bfm.train.distributed import GlobalBatchSampler, World

    single = GlobalBatchSampler(50, 8, World(), seed=5)
    ranks = [GlobalBatchSampler(50, 8, World(rank=r, world_size=2), seed=5) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(3)
    together = [a + b for a, b in zip(*(list(r) for r in ranks))]
    assert together == list(single) and len(together) == 6  # 50 // 8, the tail dropped
    single.set_epoch(3, start=4)
    assert list(single) == together[4:]
    single.set_epoch(4)
    assert list(single) != together  # a new order each epoch


def test_random_streams_of_every_rank_are_seeded_apart():
    # Each rank's flip / mask / photo / C-mask stream gets its own seed: two equal seeds would make
    # two ranks (or two uses) draw the same numbers. One process keeps the seeds of the measured runs.
    from types import SimpleNamespace

    from insightface_bfm.train.distributed import World
    from insightface_bfm.train.trainer import Trainer

    def seeds(world_size, seed=0):
        out = {}
        for rank in range(world_size):
            fake = SimpleNamespace(recipe=SimpleNamespace(train=SimpleNamespace(seed=seed)),
                                   world=World(rank=rank, world_size=world_size),
                                   STREAM_OFFSETS=Trainer.STREAM_OFFSETS)
            for stream in Trainer.STREAM_OFFSETS:
                out[rank, stream] = Trainer._stream_seed(fake, stream)
        return out

    assert seeds(1, seed=3) == {(0, "flip"): 6000, (0, "mask"): 6001, (0, "photo"): 6002,
                                (0, "classifier_mask"): 6003}
    for world_size in (2, 3, 8, 64):
        drawn = seeds(world_size)
        assert len(set(drawn.values())) == len(drawn), world_size


SCENARIOS = (1, 3)  # optim.classifier_steps of the two runs that one torchrun launch makes


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One torchrun launch of two gloo processes (three interpreters importing torch: seconds each)
    for both tests: the worker runs each of SCENARIOS in turn in the same process group, each
    with its own Trainer, into OUT/steps{N}. Returns OUT."""
    out = tmp_path_factory.mktemp("torchrun")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def ranks_of(out):
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_process_gloo_step_equals_single_process_step(tmp_path, two_processes):
    torch.set_num_threads(1)
    ranks = ranks_of(two_processes / "steps1")
    before, trainer = one_step(tmp_path / "single", "bfm")
    single = trainer.model.state_dict()
    # the step moved every trainable parameter (C, E_F, E_P and both heads) and nothing else
    # (frozen BatchNorm keeps its statistics): the equality below is about a real update
    changed = {k for k in single if not torch.equal(single[k], before[k])}
    assert changed == {k for k, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(changed) > 50
    for rank, distributed in enumerate(ranks):  # DDP keeps both replicas equal to the single-process result
        assert set(single) == set(distributed)
        for name, value in single.items():
            torch.testing.assert_close(distributed[name], value, atol=1e-5, rtol=1e-5,
                                       msg=lambda m, r=rank, k=name: f"rank {r}, {k}: {m}")


def test_further_classifier_steps_keep_the_replicas_equal(two_processes):
    # optim.classifier_steps: the further steps of C run outside DDP on each rank's own half and
    # own masks; the trainer averages C's gradients over the ranks, so C stays one model. Two
    # batches: the second joint step is a DDP forward after the further steps' backward passes.
    out = two_processes / "steps3"
    rank0, rank1 = ranks_of(out)
    for rank in (0, 1):  # the second batch's 2 further steps, counted as they run
        assert (out / f"further{rank}.txt").read_text() == "2"
    for k in rank0:
        torch.testing.assert_close(rank1[k], rank0[k], atol=1e-6, rtol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


if __name__ == "__main__":  # the torchrun worker: each scenario in turn, in one process group
    torch.set_num_threads(1)
    for steps in SCENARIOS:
        out = Path(sys.argv[1]) / f"steps{steps}"
        out.mkdir(exist_ok=True)  # by both ranks
        _, trainer = one_step(out / f"rank{os.environ['RANK']}", "bfm", classifier_steps=steps)
        if steps > 1:
            further, step = [], trainer.classifier_step
            trainer.classifier_step = lambda x, further=further, step=step: further.append(1) or step(x)
            x, x_masked, labels = global_batch()
            size = trainer.sampler.local_batch
            part = slice(trainer.world.rank * size, (trainer.world.rank + 1) * size)
            trainer.optimize(x[part], x_masked[part], labels[part])
            (out / f"further{trainer.world.rank}.txt").write_text(str(len(further)))
        assert trainer.world.world_size == 2
        torch.save(trainer.model.state_dict(), out / f"rank{trainer.world.rank}.pt")
    from insightface_bfm.train.distributed import shutdown

    shutdown(trainer.world)
