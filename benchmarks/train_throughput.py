"""Training throughput of a recipe: images/s, data wait vs compute, peak memory, model FLOP utilisation.

Runs ``--warmup`` + ``--steps`` optimizer steps of the trainer itself (``insightface_bfm.train.Trainer``:
its DataLoader, ``prepare_batch`` with the on-device masks, ``optimize``) on generated data of the real
shape (112x112 crops, ``--batch-size`` pairs, ``--num-classes`` identities), and reports:

- pairs/s and images/s (a BFM or baseline-2 sample is 2 images, x and masked x; baseline 1 sees 1);
- the step time split: data wait (blocked on the loader) vs compute (``prepare_batch`` + ``optimize``,
  each closed by ``torch.cuda.synchronize`` on CUDA so the split is real, not launch time);
- peak GPU memory (``torch.cuda.max_memory_allocated``);
- model FLOP utilisation against the chip's dense bf16 peak (``--peak-tflops``; by device name else).

FLOPs are counted, not assumed: ``torch.utils.flop_counter.FlopCounterMode`` over the backbone's
forward at 112x112 (the paper: IResNet-50 = 6.3 GMACs = 12.6 GFLOPs) and over one real forward +
backward of the whole model (networks, classifier, margin heads). Both the measured count and the
paper's way of counting (passes x 3 x forward: BFM 3 passes -> ~113 GFLOPs per pair; baseline 1 one
pass -> ~37.8 GFLOPs per image) are printed, with an MFU for each.

Data sources (``--data``): ``jpeg`` (default: a pool of generated faces stored as JPEG bytes, decoded in
the DataLoader workers, as CASIA-WebFace's RecordIO is), ``random`` (uint8 noise drawn per sample),
``synthetic`` (the procedural face generator per sample, ``synthetic:N:M``), ``memory`` (one batch held
in pinned memory: no loader, data wait ~0, for compute alone).

    python benchmarks/train_throughput.py                                   # paper r50 BFM, defaults
    python benchmarks/train_throughput.py --mode baseline1 --amp bf16 --channels-last --json b1.json
    python benchmarks/train_throughput.py --backbone r18 --batch-size 4 --steps 2 --warmup 1 \\
        --num-classes 100 --device cpu                                       # tiny, on CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .` (the device machine)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from insightface_bfm.data.dataset import FaceDataset  # noqa: E402
from insightface_bfm.train.recipe import Recipe, apply_override  # noqa: E402

DEFAULT_RECIPE = ROOT / "recipes" / "paper_casia_r50.yaml"
CASIA_IDENTITIES = 10572
# The paper's count: an IResNet-50 forward at 112x112 is 6.3 GMACs = 12.6 GFLOPs.
PAPER_R50_FORWARD_GFLOPS = 12.6
# backbone passes per sample: BFM runs E_F on x and E_P on x and masked x; baseline 2 runs its one
# model on both copies; baseline 1 on x only. Images per sample: what the networks see.
PASSES = {"bfm": 3, "baseline1": 1, "baseline2": 2}
IMAGES_PER_SAMPLE = {"bfm": 2, "baseline1": 1, "baseline2": 2}
# forward + backward ~ 3 x forward (the backward computes gradients of inputs and of weights)
FWD_BWD = 3
# Dense bf16 tensor-core peak in TFLOP/s by device-name substring (vendor datasheets, no sparsity).
# Order matters: the PCIe parts are matched before the plain names.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


# -- data of the real shape ----------------------------------------------------------------------

class GeneratedFaces(FaceDataset):
    """``length`` samples of 112x112 BGR uint8 with labels drawn uniformly from ``num_classes``.

    ``jpeg``: a pool of generated faces held as JPEG bytes (quality 95, as insightface packs
    RecordIO), decoded per sample: the cost a real CASIA loader pays. ``random``: uint8 noise per
    sample. Workers are forked, so the pool is shared, not copied per sample.
    """

    kind = "generated"

    def __init__(self, source: str, num_classes: int, length: int, pool: int = 256, seed: int = 0):
        super().__init__(f"{source}:{num_classes}")
        self.mode, self.num_classes, self.seed = source, num_classes, seed
        self.labels = np.random.default_rng(seed).integers(0, num_classes, length, dtype=np.int64)
        self.pool = []
        if source == "jpeg":
            import cv2

            from insightface_bfm.data.synthetic import SyntheticFaces

            faces = SyntheticFaces(min(num_classes, pool), 1, seed=seed)
            for i in range(min(pool, len(faces))):
                ok, buf = cv2.imencode(".jpg", faces.load(i)[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
                self.pool.append(buf)

    def _load(self, index: int) -> np.ndarray:
        if self.mode == "jpeg":
            import cv2

            return cv2.imdecode(self.pool[index % len(self.pool)], cv2.IMREAD_COLOR)
        rng = np.random.default_rng((self.seed, index))
        return rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)

    def describe(self) -> str:
        extra = f", decoded from a pool of {len(self.pool)} JPEGs" if self.pool else ""
        return f"{self.mode} faces: {self.num_classes} identities, {len(self)} images{extra}"


def make_dataset(source: str, num_classes: int, length: int, seed: int = 0):
    if source in ("jpeg", "random", "memory"):
        return GeneratedFaces("jpeg" if source == "memory" else source, num_classes, length, seed=seed)
    if source == "synthetic":
        from insightface_bfm.data import open_dataset

        return open_dataset(f"synthetic:{num_classes}:{max(1, math.ceil(length / num_classes))}:{seed}")
    raise ValueError(f"unknown data source {source!r}")


# -- the recipe ---------------------------------------------------------------------------------------

def build_recipe(args) -> tuple[Recipe, dict, list[str]]:
    """The recipe file (the paper's r50 setting by default) + ``--set`` + the flags given, with the
    dataset and initial weights replaced: random weights cost the same as trained ones.

    Returns (recipe, {freeze_full, freeze_bn}, notes for the log). The freezing of ``init`` is
    re-applied on the built model (see ``run``): a frozen E_F is benchmarked without its backward.
    """
    import yaml

    notes = []
    path = Path(args.recipe) if args.recipe else DEFAULT_RECIPE
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
        notes.append(f"recipe {path}")
    elif args.recipe:
        raise SystemExit(f"error: recipe {path} does not exist")
    else:
        data = {}
        notes.append(f"recipe: {path.name} not found, using the schema defaults (the paper's r50 setting)")
    for item in args.set:
        apply_override(data, item, "--set")
    flags = {
        "mode": args.mode,
        "model.backbone": args.backbone,
        "optim.batch_size": args.batch_size,
        "train.amp": args.amp,
        "train.channels_last": args.channels_last,
        "train.compile": args.compile,
        "train.device": args.device,
        "data.num_workers": args.workers,
    }
    for key, value in flags.items():
        if value is not None:
            apply_override(data, f"{key}={json.dumps(value)}", "flag")
    data.pop("compare", None)
    data.setdefault("mode", "bfm")
    data.setdefault("data", {})["path"] = f"synthetic:{args.num_classes}:1"  # replaced by the generated set
    init = data.get("init") or {}
    freeze = {k: bool(init.get(k)) for k in ("freeze_full", "freeze_bn")}
    if any(init.get(k) for k in ("classifier", "full", "partial")):
        notes.append("init weights ignored (random weights cost the same)")
    data["init"] = {}
    data.setdefault("train", {}).update(progress=False, max_steps=None, tensorboard=False)
    return Recipe.from_dict(data, source=str(path), check_paths=False), freeze, notes


# -- FLOPs -------------------------------------------------------------------------------------------

def backbone_forward_flops(name: str, embedding_size: int = 512, **options) -> int:
    """FLOPs (2 x multiply-accumulates) of one backbone forward pass on one 112x112 image (CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    from insightface_bfm.nets import get_backbone

    net = get_backbone(name, embedding_size=embedding_size, **options).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, 112, 112))
    return int(counter.get_total_flops())


def step_flops_per_sample(trainer, x, x_masked, labels, samples: int = 2) -> int:
    """FLOPs of one forward + backward of the trainer's model (every network, classifier and margin
    head) per sample, counted on ``samples`` real samples; the gradients are dropped afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from insightface_bfm import losses

    model = trainer.model
    amp = trainer.amp_dtype
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(trainer.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            terms = model(x[:samples], x_masked[:samples], labels[:samples])
        losses.total_loss(terms, trainer.loss_weights).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops()) // samples


def peak_tflops_for(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "given (--peak-tflops)"
    if device.type != "cuda":
        return None, "n/a on CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak, f"dense bf16 peak of {key}"
    return None, f"unknown for {name!r} (give --peak-tflops)"


# -- profile ------------------------------------------------------------------------------------------

# kernel / op names of matrix work (cuDNN/cuBLAS/CUTLASS conv and GEMM kernels, oneDNN and aten ops on
# CPU) and of layout conversions (NCHW <-> NHWC copies: a sign of a layout mismatch)
_MATMUL = re.compile(r"gemm|xmma|wgmma|cutlass|convolve|convolution|conv2d|fprop|dgrad|wgrad|implicit|mkldnn"
                     r"|addmm|\bmm\b|matmul", re.I)
_LAYOUT = re.compile(r"nchwtonhwc|nhwctonchw|transpose|permute", re.I)


def summarise_kernels(rows: list[tuple[str, float]], steps: int, wall: float, on_device: bool) -> dict:
    """(name, self time in us) of every device kernel (or CPU aten op) over ``steps`` steps taking
    ``wall`` seconds -> shares of matrix work / layout copies / the rest, device busy time, top 15."""
    total = sum(t for _, t in rows) or 1.0
    layout = sum(t for name, t in rows if _LAYOUT.search(name))
    matmul = sum(t for name, t in rows if _MATMUL.search(name) and not _LAYOUT.search(name))
    top = sorted(rows, key=lambda row: row[1], reverse=True)[:15]
    return {
        "steps": steps,
        "wall_s": wall,
        "busy_fraction": (total / 1e6) / wall if on_device else None,
        "matmul_share": matmul / total,
        "layout_share": layout / total,
        "other_share": 1 - (matmul + layout) / total,
        "top": [{"name": name[:120], "ms_per_step": t / 1e3 / steps, "share": t / total} for name, t in top],
    }


def profile_steps(step, steps: int, device: torch.device, out_path: Path | None, wall_sync) -> dict:
    """Run ``steps`` more steps under torch.profiler; write the top-kernel table; summarise what limits
    the step: share of device time in matrix kernels (conv/GEMM) vs the rest, and device busy time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    wall_sync()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        wall_sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_time(e):  # microseconds
        if on_device:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        return e.self_cpu_time_total

    if on_device:  # kernels (device events), not the CPU ops that launched them
        chosen = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
    else:
        chosen = [e for e in events if e.key.startswith("aten::")]
    rows = [(e.key, float(self_time(e))) for e in chosen if self_time(e) > 0]
    summary = summarise_kernels(rows, steps, wall, on_device)
    if out_path is not None:
        from insightface_bfm.atomic import atomic_write_text

        sort = "self_cuda_time_total" if on_device else "self_cpu_time_total"
        lines = [f"# {steps} profiled steps on {device}: wall {1e3 * wall / steps:.1f} ms/step",
                 f"# {'device kernels' if on_device else 'CPU aten ops'}: matrix (conv/GEMM) "
                 f"{100 * summary['matmul_share']:.1f}%, layout copies {100 * summary['layout_share']:.1f}%, "
                 f"other (elementwise, norm, reductions, optimizer) {100 * summary['other_share']:.1f}%"]
        if on_device:
            lines.append(f"# device busy {100 * summary['busy_fraction']:.1f}% of wall time "
                         "(the rest: launch gaps, host work, data wait)")
        lines.append(events.table(sort_by=sort, row_limit=30, max_name_column_width=80))
        atomic_write_text(out_path, "\n".join(lines) + "\n")
    return summary


# -- the run -----------------------------------------------------------------------------------------

def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:  # the trainer leaves it off; this measures what turning it on buys
        torch.backends.cudnn.benchmark = True
    recipe, freeze, notes = build_recipe(args)
    from insightface_bfm.train.trainer import Trainer

    mode = recipe.mode
    batch = recipe.optim.batch_size
    total_steps = args.warmup + args.steps + (args.profile_steps + 1 if args.profile else 0)
    dataset = make_dataset(args.data, args.num_classes, batch * (total_steps + 1), seed=recipe.train.seed)
    with tempfile.TemporaryDirectory(prefix="bfm-bench-") as tmp:
        trainer = Trainer(recipe, dataset=dataset, out=tmp)
    if freeze["freeze_full"]:
        trainer.model.freeze_full()
    if freeze["freeze_bn"]:
        trainer.model.freeze_bn()
    device = trainer.device
    world = trainer.world
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # -- batches: the trainer's own DataLoader (workers, pinned memory on CUDA), or one batch in memory
    if args.data == "memory":
        images = torch.from_numpy(np.stack([dataset[i][0] for i in range(trainer.sampler.local_batch)]))
        labels = torch.from_numpy(dataset.labels[:trainer.sampler.local_batch].copy())
        if cuda:
            images, labels = images.pin_memory(), labels.pin_memory()

        def next_batch():
            return images, labels
    else:
        trainer.sampler.set_epoch(0)
        batches = iter(trainer._loader())

        def next_batch():
            images, labels, _ = next(batches)
            return images, labels

    step_sync = not args.no_step_sync
    timings = []

    def step():
        t0 = time.perf_counter()
        images, labels = next_batch()
        t1 = time.perf_counter()
        x, x_masked, y = trainer.prepare_batch(images, labels)
        if step_sync:
            sync()
        t2 = time.perf_counter()
        out = trainer.optimize(x, x_masked, y)
        if step_sync:
            sync()
        t3 = time.perf_counter()
        timings.append((t1 - t0, t2 - t1, t3 - t2))
        return out, (x, x_masked, y)

    # -- warm-up (cuDNN autotuning, torch.compile, allocator), FLOP count on the first real batch
    t_start = time.perf_counter()
    out, first = step()
    flops_sample = step_flops_per_sample(trainer, *first)
    for _ in range(args.warmup - 1):
        out, _ = step()
    sync()
    warmup_s = time.perf_counter() - t_start
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    # -- timed steps
    timings.clear()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out, _ = step()
    sync()
    wall = time.perf_counter() - t0
    loss = float(out["loss"])
    peak_mem = torch.cuda.max_memory_allocated(device) if cuda else None
    timed = list(timings)  # the profiled steps below append their own

    profile = None
    if args.profile:
        profile = profile_steps(lambda: step(), args.profile_steps, device,
                                None if args.profile == "-" else Path(args.profile), sync)

    # -- numbers
    n = args.steps
    data_wait = sum(t[0] for t in timed) / n
    prepare = sum(t[1] for t in timed) / n
    optimize = sum(t[2] for t in timed) / n
    step_time = wall / n
    pairs_per_s = batch / step_time  # global batch: every process's samples
    images_per_s = pairs_per_s * IMAGES_PER_SAMPLE[mode]
    cfg = recipe.model
    fwd = backbone_forward_flops(cfg.backbone, cfg.embedding_size, **cfg.backbone_options)
    paper_fwd = PAPER_R50_FORWARD_GFLOPS * 1e9 if cfg.backbone == "r50" and not cfg.backbone_options else None
    paper_sample = (paper_fwd or fwd) * PASSES[mode] * FWD_BWD
    peak, peak_source = peak_tflops_for(device, args.peak_tflops)
    peak_total = peak * world.world_size if peak else None
    achieved = pairs_per_s * flops_sample / 1e12
    achieved_paper = pairs_per_s * paper_sample / 1e12
    result = {
        "mode": mode,
        "backbone": cfg.backbone,
        "batch_size": batch,
        "num_classes": args.num_classes,
        "amp": recipe.train.amp,
        "channels_last": bool(trainer.channels_last),
        "compile": recipe.train.compile,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "data": args.data,
        "num_workers": recipe.data.num_workers if args.data != "memory" else 0,
        "dataset": dataset.describe(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "world_size": world.world_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "warmup_s": warmup_s,
        "steps": n,
        "step_sync": step_sync,
        "pairs_per_s": pairs_per_s,
        "images_per_s": images_per_s,
        "images_per_pair": IMAGES_PER_SAMPLE[mode],
        "step_time_s": step_time,
        "data_wait_s": data_wait,
        "compute_s": prepare + optimize,
        "prepare_s": prepare if step_sync else None,
        "optimize_s": optimize if step_sync else None,
        "data_wait_fraction": data_wait / step_time,
        "peak_memory_bytes": peak_mem,
        "backbone_forward_gflops": fwd / 1e9,
        "paper_backbone_forward_gflops": paper_fwd / 1e9 if paper_fwd else None,
        "gflops_per_pair": flops_sample / 1e9,
        "paper_gflops_per_pair": paper_sample / 1e9,
        "achieved_tflops": achieved,
        "achieved_tflops_paper_count": achieved_paper,
        "peak_tflops": peak_total,
        "peak_source": peak_source,
        "mfu": achieved / peak_total if peak_total else None,
        "mfu_paper_count": achieved_paper / peak_total if peak_total else None,
        "loss": loss,
        "loss_finite": math.isfinite(loss),
        "notes": notes,
    }
    if profile is not None:
        result["profile"] = profile
    return result


def format_report(r: dict) -> str:
    ms = 1e3
    mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] is not None else "n/a (CPU)"

    def mfu(key):
        return f"{100 * r[key]:.1f}%" if r[key] is not None else "n/a"

    split = (f"prepare (uint8->float, flip, masks) {r['prepare_s'] * ms:.1f} ms + "
             f"optimize {r['optimize_s'] * ms:.1f} ms"
             if r["prepare_s"] is not None else "no per-step sync: split not measured")
    paper_fwd = (f" (paper {r['paper_backbone_forward_gflops']:.1f})"
                 if r["paper_backbone_forward_gflops"] else "")
    lines = [
        f"{r['mode']} {r['backbone']} batch {r['batch_size']} pairs, {r['num_classes']} ids, amp {r['amp']}, "
        f"channels_last {r['channels_last']}, compile {r['compile']}, "
        f"cudnn.benchmark {r['cudnn_benchmark']}, data {r['data']} ({r['num_workers']} workers) "
        f"on {r['device']} ({r['device_name']}, torch {r['torch']})",
        f"  throughput   {r['pairs_per_s']:.1f} pairs/s = {r['images_per_s']:.1f} images/s "
        f"({r['images_per_pair']} image(s) per pair through the networks)",
        f"  step         {r['step_time_s'] * ms:.1f} ms = data wait {r['data_wait_s'] * ms:.1f} ms "
        f"({100 * r['data_wait_fraction']:.1f}%) + compute {r['compute_s'] * ms:.1f} ms [{split}]",
        f"  memory       peak allocated {mem}",
        f"  FLOPs        backbone forward {r['backbone_forward_gflops']:.2f} GFLOPs/image{paper_fwd}; step "
        f"{r['gflops_per_pair']:.1f} GFLOPs/pair measured, {r['paper_gflops_per_pair']:.1f} by the paper's "
        "count",
        f"  utilisation  {r['achieved_tflops']:.2f} TFLOP/s -> MFU {mfu('mfu')} "
        f"(paper count {r['achieved_tflops_paper_count']:.2f} TFLOP/s -> {mfu('mfu_paper_count')}) "
        f"of {r['peak_tflops'] if r['peak_tflops'] else 'n/a'} TFLOP/s, {r['peak_source']}",
        f"  loss         {r['loss']:.3f} after {r['warmup']} warm-up ({r['warmup_s']:.1f} s) + {r['steps']} "
        "timed steps",
    ]
    p = r.get("profile")
    if p:
        busy = (f", device busy {100 * p['busy_fraction']:.0f}% of wall"
                if p["busy_fraction"] is not None else "")
        lines.append(f"  profile      matrix kernels {100 * p['matmul_share']:.0f}%, layout copies "
                     f"{100 * p['layout_share']:.0f}%, other {100 * p['other_share']:.0f}%{busy}; top: "
                     + "; ".join(f"{t['name'][:50]} {100 * t['share']:.0f}%" for t in p["top"][:3]))
    lines += [f"  note         {n}" for n in r["notes"]]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help=f"recipe YAML (default {DEFAULT_RECIPE.relative_to(ROOT)}, else the "
                                    "schema defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--mode", choices=tuple(PASSES))
    p.add_argument("--backbone", choices=("r18", "r34", "r50", "r100", "mbf"))
    p.add_argument("--batch-size", type=int, help="pairs per step (global under torchrun)")
    p.add_argument("--num-classes", type=int, default=CASIA_IDENTITIES)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--compile", action="store_true", default=None)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True (autotuned convolutions; off in the trainer)")
    p.add_argument("--data", choices=("jpeg", "random", "synthetic", "memory"), default="jpeg")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (recipe data.num_workers)")
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1)")
    p.add_argument("--peak-tflops", type=float, help="chip peak for MFU (default: dense bf16 by device name)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on CPU, the box is shared; torch's choice on CUDA)")
    p.add_argument("--no-step-sync", action="store_true",
                   help="no CUDA sync inside a step: pure throughput, compute = step - data wait")
    p.add_argument("--profile", metavar="TXT", help="then profile --profile-steps steps; top-op table to TXT "
                                                    "('-': summary only)")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    on_cpu = args.device == "cpu" or (args.device in (None, "auto") and not torch.cuda.is_available())
    if args.threads is None and on_cpu:
        args.threads = 1
    result = run(args)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    print(format_report(result), flush=True)
    if args.json:
        from insightface_bfm.atomic import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
