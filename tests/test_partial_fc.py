"""Partial FC equals the full margin softmax: single process, and 2 gloo processes on one global batch."""

import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from insightface_bfm.nets import ArcFaceHead, CosFaceHead, PartialFC
from insightface_bfm.nets.partial_fc import shard_range

torch.set_num_threads(1)

EMB, CLASSES, WORLD, PER_RANK = 6, 5, 2, 3


def _global_problem():
    """One global batch: backbone (a linear layer), inputs, labels and all class centres."""
    gen = torch.Generator().manual_seed(7)
    inputs = torch.randn(WORLD * PER_RANK, 8, generator=gen)
    labels = torch.tensor([0, 4, 2, 4, 1, 3])
    centres = torch.randn(CLASSES, EMB, generator=gen)
    backbone = torch.nn.Linear(8, EMB)
    with torch.no_grad():
        backbone.weight.copy_(torch.randn(EMB, 8, generator=gen))
        backbone.bias.copy_(torch.randn(EMB, generator=gen))
    return inputs, labels, centres, backbone


def _reference(head_cls, inputs, labels, centres, backbone, **kw):
    """Ordinary (non-distributed) margin head + softmax CE on the global batch."""
    head = head_cls(EMB, CLASSES, **kw)
    with torch.no_grad():
        head.weight.copy_(centres)
    emb = backbone(inputs)
    emb.retain_grad()
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    return loss.detach(), emb.grad, head.weight.grad, backbone.weight.grad


def test_single_process_equals_full_softmax():
    inputs, labels, centres, backbone = _global_problem()
    for head_cls, margin in ((ArcFaceHead, "arcface"), (CosFaceHead, "cosface")):
        ref_loss, ref_emb_grad, ref_w_grad, _ = _reference(
            head_cls, inputs, labels, centres, backbone, s=16.0
        )
        pfc = PartialFC(EMB, CLASSES, margin=margin, s=16.0)
        pfc.load_full_weight(centres)
        emb = backbone(inputs).detach().requires_grad_()
        loss = pfc(emb, labels)
        loss.backward()
        torch.testing.assert_close(loss, ref_loss)
        torch.testing.assert_close(emb.grad, ref_emb_grad)
        torch.testing.assert_close(pfc.weight.grad, ref_w_grad)
        torch.testing.assert_close(pfc.full_weight(), centres)
        backbone.zero_grad()


def test_sampling_keeps_positives_and_equals_softmax_over_the_sample():
    torch.manual_seed(0)
    num_classes = 20
    pfc = PartialFC(EMB, num_classes, s=8.0, sample_rate=0.3)
    emb = torch.randn(4, EMB)
    labels = torch.tensor([3, 17, 3, 9])
    loss = pfc(emb, labels, generator=torch.Generator().manual_seed(1))
    index = pfc.last_index
    assert index.numel() == 6  # ceil(0.3 * 20)
    assert set(labels.tolist()) <= set(index.tolist())
    assert index.tolist() == sorted(set(index.tolist()))
    # the same loss, written out: ArcFace head over the sampled centres only
    head = ArcFaceHead(EMB, len(index), s=8.0)
    with torch.no_grad():
        head.weight.copy_(pfc.weight[index])
    remapped = torch.tensor([index.tolist().index(c) for c in labels.tolist()])
    torch.testing.assert_close(loss, F.cross_entropy(head(emb, remapped), remapped))
    # more positives than the sample size: all positives are kept anyway
    many = torch.arange(10)
    pfc(torch.randn(10, EMB), many)
    assert set(many.tolist()) <= set(pfc.last_index.tolist())


def test_bad_arguments():
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(EMB, CLASSES, sample_rate=0.0)
    with pytest.raises(ValueError, match="unknown margin head"):
        PartialFC(EMB, CLASSES, margin="sphere")
    with pytest.raises(ValueError, match=r"expects embeddings \(B, 6\)"):
        PartialFC(EMB, CLASSES)(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="load_full_weight"):
        PartialFC(EMB, CLASSES).load_full_weight(torch.zeros(3, EMB))


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),
    )
    try:
        inputs, labels, centres, backbone = _global_problem()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results = {}
        # exact gradients of the global loss w.r.t. this rank's embeddings and centre shard
        pfc = PartialFC(EMB, CLASSES, s=16.0, scale_grad_for_ddp=False)
        pfc.load_full_weight(centres)
        emb = backbone(inputs[mine]).detach().requires_grad_()
        loss = pfc(emb, labels[mine])
        loss.backward()
        results.update(loss=loss.detach(), emb_grad=emb.grad, w_grad=pfc.weight.grad, full=pfc.full_weight())
        results["shard"] = (pfc.class_start, pfc.class_stop)
        # under DDP (default scaling) the averaged backbone gradient is the global-batch gradient
        ddp = torch.nn.parallel.DistributedDataParallel(backbone)
        pfc_ddp = PartialFC(EMB, CLASSES, s=16.0)
        pfc_ddp.load_full_weight(centres)
        pfc_ddp(ddp(inputs[mine]), labels[mine]).backward()
        results["backbone_grad"] = backbone.weight.grad.clone()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        # both ranks done with every collective before either tears gloo down: a rank destroying
        # its group while the other still talks to it aborted once ("terminate called without an
        # active exception", a fresh-clone CI run)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_equal_full_softmax(tmp_path):
    # spawn, not fork: a child forked from a process whose torch thread pools have run can
    # deadlock before its first line (seen here once, in a fresh-clone CI run)
    args = (_free_port(), str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method="spawn")
    inputs, labels, centres, backbone = _global_problem()
    ref_loss, ref_emb_grad, ref_w_grad, ref_backbone_grad = _reference(
        ArcFaceHead, inputs, labels, centres, backbone, s=16.0
    )
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        start, stop = shard_range(CLASSES, WORLD, rank)
        assert got["shard"] == (start, stop)
        torch.testing.assert_close(got["loss"], ref_loss)
        torch.testing.assert_close(got["emb_grad"], ref_emb_grad[rank * PER_RANK : (rank + 1) * PER_RANK])
        torch.testing.assert_close(got["w_grad"], ref_w_grad[start:stop])
        torch.testing.assert_close(got["full"], centres)
        torch.testing.assert_close(got["backbone_grad"], ref_backbone_grad)
