"""Mask renderer throughput on aligned 112x112 crops, against baselines measured in the same run.

Per-image renderer (numpy + cv2, one process, one thread): ``render_mask`` with a pre-drawn
style, and with a fresh ``random_style`` per image (what ``bfm mask`` does). Baselines: copying
the image (the floor of any renderer that returns a new image) and a naive mask (copy +
``cv2.fillPoly`` of a fixed anti-aliased polygon, no shading or texture). The batched torch
renderer (``MaskAugment``) runs on CPU (``--threads``) and on CUDA when there is one.

``--against REF`` (default ``REFERENCE``, main before the latest speed-up; ``FIRST_SPEED_UP``,
the renderers before any, stays available) also measures the package as it was at that git commit,
extracted into a temporary folder and run in a subprocess alternately with the working tree's (two
rounds each, best kept), and prints the ratio new/old: the machine is shared, so only a ratio
measured in one run means anything. ``--against none``
measures the working tree alone. Rates are images per second of the process's CPU time (one
thread), best of 3. The throughput targets (``TARGETS``) are printed with PASS or MISS next to the
working tree's rates (MaskAugment's per thread: only with ``--threads 1``).

    python benchmarks/mask_throughput.py [--n 3000] [--batch 256] [--threads 1] [--against REF]
                                         [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from insightface_bfm.atomic import atomic_write_text
from insightface_bfm.imaging import ARCFACE_KPS, to_network_input
from insightface_bfm.masks import random_style, render_mask

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw112"
REPO = Path(__file__).resolve().parents[1]
# main before the latest speed-up, and the last commit before render_mask and MaskAugment were
# first sped up (same pixels since then: tests/test_mask_pixels.py)
REFERENCE = "3d4283f"
FIRST_SPEED_UP = "b3a6c39"
# images/s: render_mask on a 112x112 crop in one process; MaskAugment on CPU per thread
TARGETS = {"render_mask": 5000.0, "MaskAugment cpu": 2000.0}


def load_crops(n: int, root=LFW) -> np.ndarray:
    """Up to 512 distinct aligned crops (LFW when available, else smooth random faces), cycled to n."""
    files = sorted(Path(root).glob("*/*.jpg"))[:: 25][:512] if Path(root).is_dir() else []
    if files:
        crops = [cv2.imread(str(f)) for f in files]
    else:
        rng = np.random.default_rng(0)
        crops = [cv2.GaussianBlur(rng.integers(60, 220, (112, 112, 3), dtype=np.uint8), (9, 9), 3)
                 for _ in range(64)]
    return np.stack([crops[i % len(crops)] for i in range(n)])


def _rate(fn, n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, images per second of this process's CPU time (one thread; best: the
    box is shared, and noise only slows)."""
    best = 0.0
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = max(best, n / max(time.process_time() - t, 1e-9))
    return best


def per_image(crops: np.ndarray) -> dict:
    n = len(crops)
    rng = np.random.default_rng(0)
    styles = [random_style(rng) for _ in range(n)]
    poly = np.array([[16, 62], [56, 58], [96, 62], [92, 100], [56, 112], [20, 100]], np.int32)

    def copy():
        for img in crops:
            img.copy()

    def naive():
        for img in crops:
            out = img.copy()
            cv2.fillPoly(out, [poly], (200, 160, 120), cv2.LINE_AA)

    def styled():
        for img, style in zip(crops, styles):
            render_mask(img, ARCFACE_KPS, style)

    def drawn():
        r = np.random.default_rng(1)
        for img in crops:
            render_mask(img, ARCFACE_KPS, random_style(r))

    return {"copy": _rate(copy, n), "naive_fillpoly": _rate(naive, n),
            "render_mask": _rate(styled, n), "random_style+render_mask": _rate(drawn, n)}


def batched(crops: np.ndarray, batch: int, device: str, threads: int) -> float:
    import torch

    from insightface_bfm.masks.batched import MaskAugment

    torch.set_num_threads(threads)
    x = torch.from_numpy(to_network_input(crops[:batch])).to(device)
    aug = MaskAugment().to(device)
    g = torch.Generator(device=device).manual_seed(0)
    rounds = max(1, min(20, (len(crops) + batch - 1) // batch)) if device == "cpu" else 50

    def run():
        with torch.no_grad():
            for _ in range(rounds):
                aug(x, generator=g)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()  # warm up (allocator, kernels)
    return _rate(run, rounds * batch)


def kernel_share(crops: np.ndarray, batch: int, threads: int) -> float:
    """Share of MaskAugment's CPU time (one batch on CPU) spent in the kernel: page faults of fresh
    batch-sized temporaries (glibc returns large blocks to the system when they are freed)."""
    import torch

    from insightface_bfm.masks.batched import MaskAugment

    torch.set_num_threads(threads)
    x = torch.from_numpy(to_network_input(crops[:batch]))
    aug = MaskAugment()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        aug(x, generator=g)
        t0 = os.times()
        for _ in range(3):
            aug(x, generator=g)
        t1 = os.times()
    user, system = t1.user - t0.user, t1.system - t0.system
    return system / max(user + system, 1e-9)


def run(n: int = 3000, batch: int = 256, threads: int = 1, cuda_batch: int = 4096) -> dict:
    crops = load_crops(n)
    res = {"n": n, "per_image": per_image(crops)}
    try:
        import torch
    except ImportError:  # the inference install has no torch: per-image numbers only
        return res
    res["batched_cpu"] = {"batch": batch, "threads": threads,
                          "images_per_s": batched(crops, batch, "cpu", threads),
                          "kernel_share": kernel_share(crops, batch, threads)}
    if torch.cuda.is_available() and cuda_batch > 0:
        big = load_crops(cuda_batch)
        res["batched_cuda"] = {"batch": cuda_batch, "device": torch.cuda.get_device_name(0),
                               "images_per_s": batched(big, cuda_batch, "cuda", threads)}
    return res


def reference_tree(ref: str, into: Path) -> Path:
    """The package ``insightface_bfm`` as it was at git commit ``ref``, extracted under ``into``."""
    archive = into / "ref.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", ref, "insightface_bfm"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def measure_in_subprocess(pythonpath: Path, n: int, batch: int, threads: int) -> dict:
    """``run`` in a fresh interpreter that imports ``insightface_bfm`` from ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    cmd = [sys.executable, __file__, "--worker", "--n", str(n), "--batch", str(batch),
           "--threads", str(threads), "--against", "none"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _best(a: dict, b: dict) -> dict:
    """Key by key, the larger rate (every float is one) of two measurements of the same things."""
    out = {}
    for k, v in a.items():
        out[k] = _best(v, b[k]) if isinstance(v, dict) else max(v, b[k]) if isinstance(v, float) else v
    return out


def compare(n: int, batch: int, threads: int, ref: str, rounds: int = 2) -> dict:
    """The working tree against ``ref``, alternately in subprocesses; best of ``rounds`` each."""
    with tempfile.TemporaryDirectory() as tmp:
        old_path = reference_tree(ref, Path(tmp))
        old = new = None
        for _ in range(rounds):
            o = measure_in_subprocess(old_path, n, batch, threads)
            w = measure_in_subprocess(REPO, n, batch, threads)
            old, new = (o, w) if old is None else (_best(old, o), _best(new, w))
    return {"reference": ref, "old": old, "new": new}


def compare_report(res: dict) -> str:
    old, new = res["old"], res["new"]
    lines = [f"against {res['reference']} (old) in the same run, images/s of CPU time, one thread:",
             f"  {'':28s}{'old':>10s}{'new':>10s}{'new/old':>9s}"]
    rows = [(k, old["per_image"][k], new["per_image"][k])
            for k in ("render_mask", "random_style+render_mask")]
    if "batched_cpu" in new and "batched_cpu" in old:
        rows.append((f"MaskAugment cpu (batch {new['batched_cpu']['batch']})",
                     old["batched_cpu"]["images_per_s"], new["batched_cpu"]["images_per_s"]))
    for name, o, w in rows:
        lines.append(f"  {name:28s}{o:10.0f}{w:10.0f}{w / o:8.2f}x")
    copies = old["per_image"]["copy"], new["per_image"]["copy"]
    lines.append(f"  (copy of a crop: old {copies[0]:.0f}/s, new {copies[1]:.0f}/s: the pace of each)")
    return "\n".join(lines)


def report(res: dict) -> str:
    p = res["per_image"]
    lines = [f"per-image renderer, 1 process, {res['n']} aligned crops (images/s, best of 3):"]
    for k, v in p.items():
        lines.append(f"  {k:26s} {v:10.0f}/s   {v / p['copy']:7.3f}x copy   "
                     f"{v / p['naive_fillpoly']:6.3f}x naive")
    for key in ("batched_cpu", "batched_cuda"):
        if key in res:
            b = res[key]
            where = f"{b.get('device', 'CPU')}, threads {b.get('threads', '-')}"
            lines.append(f"MaskAugment {key.split('_')[1]} ({where}, batch {b['batch']}): "
                         f"{b['images_per_s']:.0f}/s = {b['images_per_s'] / p['render_mask']:.2f}x per-image")
    if "batched_cpu" in res:
        share = res["batched_cpu"]["kernel_share"]
        lines.append(f"  (MaskAugment cpu: {100 * share:.0f}% of its CPU time in the kernel, page faults of "
                     "fresh batch-sized temporaries)")
    if "batched_cuda" not in res:
        lines.append("MaskAugment cuda: no CUDA device here")
    lines.extend(targets_report(res))
    return "\n".join(lines)


def targets_report(res: dict) -> list:
    """The throughput targets, PASS or MISS against this tree's rates."""
    lines = ["targets (this tree):"]
    rate = res["per_image"]["render_mask"]
    goal = TARGETS["render_mask"]
    lines.append(f"  render_mask, 112x112 crop, 1 process    {rate:7.0f}/s  >= {goal:.0f}/s  "
                 f"{'PASS' if rate >= goal else 'MISS'}")
    goal = TARGETS["MaskAugment cpu"]
    if "batched_cpu" not in res:
        lines.append("  MaskAugment cpu: no torch here")
    elif res["batched_cpu"]["threads"] != 1:
        threads = res["batched_cpu"]["threads"]
        lines.append(f"  MaskAugment cpu, per thread: measured with --threads {threads}; run --threads 1")
    else:
        rate = res["batched_cpu"]["images_per_s"]
        lines.append(f"  MaskAugment cpu, 1 thread, batch {res['batched_cpu']['batch']:<4d}  {rate:7.0f}/s  "
                     f">= {goal:.0f}/s  {'PASS' if rate >= goal else 'MISS'}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cuda-batch", type=int, default=4096)
    ap.add_argument("--against", default=REFERENCE,
                    help=f"git commit to compare with (default {REFERENCE}, main before the latest speed-up; "
                         f"{FIRST_SPEED_UP}: before any); 'none': this tree alone")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    if args.worker:  # one measurement for compare(): numbers only, as JSON
        res = run(args.n, args.batch, args.threads, cuda_batch=0)
        print(json.dumps(res))
        return
    res = run(args.n, args.batch, args.threads, args.cuda_batch)
    print(report(res))
    if args.against != "none":
        res["compare"] = compare(args.n, args.batch, args.threads, args.against)
        print(compare_report(res["compare"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
