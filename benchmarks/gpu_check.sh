#!/usr/bin/env bash
# Device check of issue 6: training throughput of the paper's r50 BFM step and of baseline 1 on one
# GPU, bf16 autocast + channels_last, batch 128 pairs, 10,572 identities, JPEG-decoding DataLoader
# workers with pinned memory. Installs nothing: it needs only torch (CUDA), numpy, opencv, pyyaml,
# safetensors and tqdm (the device image has them); insightface and onnxruntime are not imported.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else benchmarks/gpu_results
#
# Runs, each under its own time limit, inside a total budget (BUDGET_S, default 300 s):
#   1. bfm r50, as the trainer runs it now, then 5 profiled steps (top-kernel table)
#   2. baseline1 r50, same settings
#   3. bfm r50 with torch.backends.cudnn.benchmark on (the trainer leaves it off)
#   4. bfm r50 with torch.compile, only if enough budget is left (COMPILE=0 skips it)
# Writes to OUT_DIR: gpu_check.log, env.txt, bfm_r50.json, baseline1_r50.json, bfm_r50_cudnn.json,
# bfm_r50_compile.json, profile_bfm_r50.txt, summary.md (7-8 files: what the device tool brings back).
#
# Knobs (environment): PYTHON (python3), WORKERS (8), STEPS (40), WARMUP (15), BATCH (128), BUDGET_S (300),
# COMPILE (1). BENCH_DEVICE=cpu BENCH_TINY=1 runs the same flow tiny on a CPU (to test this script).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
OUT_DIR=${1:-${OUT:-$REPO/benchmarks/gpu_results}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-8}
STEPS=${STEPS:-40}
WARMUP=${WARMUP:-15}
BATCH=${BATCH:-128}
BUDGET_S=${BUDGET_S:-300}
COMPILE=${COMPILE:-1}
DEVICE=${BENCH_DEVICE:-cuda}
BENCH=(benchmarks/train_throughput.py --recipe recipes/paper_casia_r50.yaml --device "$DEVICE"
       --amp bf16 --channels-last --batch-size "$BATCH" --num-classes 10572 --data jpeg
       --workers "$WORKERS" --steps "$STEPS" --warmup "$WARMUP")
LIMITS=(150 90 90 180)  # seconds per run: bfm (+ profile), baseline1, bfm cudnn, bfm compile
if [[ -n ${BENCH_TINY:-} ]]; then
    BENCH=(benchmarks/train_throughput.py --device "$DEVICE" --backbone r18
           --set model.backbone_options.width=0.125 --batch-size 4 --num-classes 100 --data jpeg
           --workers 1 --steps 2 --warmup 1 --threads 1)
    LIMITS=(60 60 60 60)
fi

run() {  # run NAME LIMIT ARGS...: one benchmark under its own time limit; never stops the script
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s, ${SECONDS}s elapsed)"
    timeout --kill-after=10 "$limit" "$PY" "${BENCH[@]}" --json "$OUT_DIR/$name.json" "$@"
    local rc=$?
    [[ $rc -eq 124 ]] && echo "!! $name: stopped at its ${limit}s limit"
    [[ $rc -ne 0 ]] && echo "!! $name: exit status $rc"
    return 0
}

main() {
    echo "== gpu_check $(date -u +%FT%TZ) in $REPO -> $OUT_DIR"
    {
        nvidia-smi 2>&1 || echo "nvidia-smi: not available"
        "$PY" - <<'EOF'
import os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
print("cpu cores", os.cpu_count())
EOF
    } 2>&1 | tee "$OUT_DIR/env.txt"
    if [[ $DEVICE == cuda* ]] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo "!! torch sees no CUDA device: nothing measured"
        return 3
    fi

    run bfm_r50 "${LIMITS[0]}" --profile "$OUT_DIR/profile_bfm_r50.txt" --profile-steps 5
    run baseline1_r50 "${LIMITS[1]}" --mode baseline1
    run bfm_r50_cudnn "${LIMITS[2]}" --cudnn-benchmark
    local left=$((BUDGET_S - SECONDS))
    if [[ $COMPILE == 1 && $left -ge 90 ]]; then
        local limit=$((left < LIMITS[3] ? left : LIMITS[3]))
        run bfm_r50_compile "$limit" --compile --cudnn-benchmark
    else
        echo "== bfm_r50_compile skipped (COMPILE=$COMPILE, ${left}s of the ${BUDGET_S}s budget left)"
    fi

    echo
    echo "== summary (${SECONDS}s)"
    "$PY" - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for name in ("bfm_r50", "baseline1_r50", "bfm_r50_cudnn", "bfm_r50_compile"):
    path = out / f"{name}.json"
    if not path.is_file():
        rows.append(f"| {name} | not run or failed (see gpu_check.log) |||||||")
        continue
    r = json.loads(path.read_text())
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a"  # noqa: E731
    mem = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r["peak_memory_bytes"] else "n/a"
    rows.append(f"| {name} | {r['pairs_per_s']:.0f} | {r['images_per_s']:.0f} | {1e3 * r['step_time_s']:.1f} "
                f"| {pct(r['data_wait_fraction'])} | {mem} | {r['gflops_per_pair']:.1f} "
                f"| {pct(r['mfu'])} ({pct(r['mfu_paper_count'])}) |")
first = next((json.loads((out / f"{n}.json").read_text()) for n in ("bfm_r50", "baseline1_r50")
              if (out / f"{n}.json").is_file()), None)
if first:
    peak = f"{first['peak_tflops']:g} TFLOP/s ({first['peak_source']})" if first["peak_tflops"] else "n/a"
    print(f"Device: {first['device_name']}, torch {first['torch']}; peak {peak}; batch {first['batch_size']} pairs, {first['num_classes']} identities, "
          f"amp {first['amp']}, channels_last {first['channels_last']}, data {first['data']} "
          f"({first['num_workers']} workers), {first['steps']} timed steps after {first['warmup']} warm-up.\n")
print("| run | pairs/s | images/s | step ms | data wait | peak GiB | GFLOPs/pair (counted) "
      "| MFU (paper count) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
print("\n".join(rows))
bfm = [json.loads((out / f"{n}.json").read_text()) for n in ("bfm_r50", "bfm_r50_cudnn", "bfm_r50_compile")
       if (out / f"{n}.json").is_file()]
if bfm:
    best = max(bfm, key=lambda r: r["pairs_per_s"])
    mfu = best["mfu_paper_count"]
    print(f"\nIssue 6 targets, best BFM run (compile {best['compile']}, cudnn.benchmark {best['cudnn_benchmark']}): "
          f"MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} (target >= 35%: "
          f"{'n/a' if mfu is None else 'met' if mfu >= 0.35 else 'NOT met'}), data wait "
          f"{100 * best['data_wait_fraction']:.1f}% of step time (target < 5%: "
          f"{'met' if best['data_wait_fraction'] < 0.05 else 'NOT met'}).")
    p = bfm[0].get("profile")
    if p:
        busy = f"device busy {100 * p['busy_fraction']:.0f}% of wall; " if p["busy_fraction"] is not None else ""
        print(f"Profile of bfm_r50 ({p['steps']} steps): {busy}matrix kernels {100 * p['matmul_share']:.0f}%, "
              f"layout copies {100 * p['layout_share']:.0f}%, other {100 * p['other_share']:.0f}% of "
              f"{'kernel' if p['busy_fraction'] is not None else 'CPU op'} time. "
              "Top: " + "; ".join(f"{t['name'][:70]} {100 * t['share']:.0f}%" for t in p["top"][:5]))
EOF
}

main 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
