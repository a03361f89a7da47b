"""benchmarks/train_throughput.py runs tiny on CPU and reports sane, consistent numbers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"

# r18 at 1/8 width: the real code path (trainer, DataLoader worker, masks, margin heads) in ~1 s
TINY = ["--backbone", "r18", "--set", "model.backbone_options.width=0.125", "--batch-size", "4",
        "--num-classes", "100", "--device", "cpu", "--threads", "1", "--steps", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(bench, tmp_path, *extra):
    out = tmp_path / "result.json"
    assert bench.main([*TINY, *extra, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_bfm_tiny_on_cpu_with_loader_workers(bench, tmp_path, capsys):
    r = _run(bench, tmp_path, "--workers", "1", "--data", "jpeg", "--peak-tflops", "1.0",
             "--profile", str(tmp_path / "profile.txt"), "--profile-steps", "1")
    assert r["mode"] == "bfm" and r["batch_size"] == 4 and r["num_workers"] == 1 and r["steps"] == 2
    assert r["images_per_pair"] == 2
    assert r["pairs_per_s"] > 0 and r["images_per_s"] == pytest.approx(2 * r["pairs_per_s"])
    assert r["pairs_per_s"] == pytest.approx(r["batch_size"] / r["step_time_s"])
    # the split adds up to the step: data wait + prepare + optimize, loop overhead aside
    assert r["data_wait_s"] >= 0 and r["prepare_s"] > 0 and r["optimize_s"] > 0
    assert r["compute_s"] == pytest.approx(r["prepare_s"] + r["optimize_s"])
    assert r["data_wait_s"] + r["compute_s"] == pytest.approx(r["step_time_s"], rel=0.05, abs=2e-3)
    assert 0 <= r["data_wait_fraction"] < 1
    assert r["peak_memory_bytes"] is None  # CPU
    # counted FLOPs: BFM = 3 backbone passes x (forward + backward ~ 3 forwards) + small heads
    assert r["paper_backbone_forward_gflops"] is None  # the paper's 12.6 is for r50 only
    assert r["paper_gflops_per_pair"] == pytest.approx(9 * r["backbone_forward_gflops"])
    assert 0.9 < r["gflops_per_pair"] / r["paper_gflops_per_pair"] < 1.5
    assert r["achieved_tflops"] == pytest.approx(r["pairs_per_s"] * r["gflops_per_pair"] / 1e3)
    assert r["peak_tflops"] == 1.0 and r["mfu"] == pytest.approx(r["achieved_tflops"])
    assert r["loss_finite"] and r["loss"] > 0
    assert r["profile"]["matmul_share"] > 0 and r["profile"]["top"]
    assert "aten::" in (tmp_path / "profile.txt").read_text()
    report = capsys.readouterr().out
    assert "images/s" in report and "data wait" in report and "MFU" in report


def test_baseline1_counts_one_pass_and_cpu_mfu_is_na(bench, tmp_path):
    r = _run(bench, tmp_path, "--mode", "baseline1", "--data", "memory", "--no-step-sync")
    assert r["mode"] == "baseline1" and r["images_per_pair"] == 1 and not r["step_sync"]
    assert r["prepare_s"] is None and r["compute_s"] > 0  # no sync inside the step: no split
    assert r["images_per_s"] == pytest.approx(r["pairs_per_s"])
    assert r["paper_gflops_per_pair"] == pytest.approx(3 * r["backbone_forward_gflops"])
    assert 0.9 < r["gflops_per_pair"] / r["paper_gflops_per_pair"] < 1.5
    assert r["data_wait_fraction"] < 0.05  # one batch held in memory
    assert r["peak_tflops"] is None and r["mfu"] is None and "n/a" in r["peak_source"]


def test_kernel_summary_classifies_matrix_layout_and_other_work(bench):
    rows = [("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 500.0),
            ("sm90_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 200.0),
            ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn>", 100.0),
            ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", 100.0),
            ("void at::native::vectorized_elementwise_kernel<4, at::native::convert_functor>", 60.0),
            ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float>", 40.0)]
    s = bench.summarise_kernels(rows, steps=2, wall=0.002, on_device=True)
    assert s["matmul_share"] == pytest.approx(0.8) and s["layout_share"] == pytest.approx(0.1)
    assert s["other_share"] == pytest.approx(0.1)
    assert s["busy_fraction"] == pytest.approx(0.5)  # 1000 us of kernels in 2 ms
    assert s["top"][0]["ms_per_step"] == pytest.approx(0.25) and len(s["top"]) == 6


def test_r50_forward_is_the_papers_12_6_gflops(bench):
    flops = bench.backbone_forward_flops("r50")
    assert flops == pytest.approx(12.6e9, rel=0.05)


def test_paper_recipe_is_the_default_and_init_weights_are_dropped_but_freezing_kept(bench):
    args = bench.parse_args([])
    recipe, freeze, notes = bench.build_recipe(args)
    assert recipe.mode == "bfm" and recipe.model.backbone == "r50" and recipe.optim.batch_size == 128
    assert args.num_classes == 10572
    args = bench.parse_args(["--recipe", str(ROOT / "recipes" / "finetune_r50.yaml"), "--mode", "baseline1",
                             "--amp", "bf16", "--channels-last", "--batch-size", "8"])
    recipe, freeze, notes = bench.build_recipe(args)
    assert recipe.mode == "baseline1" and recipe.train.amp == "bf16" and recipe.train.channels_last
    assert recipe.optim.batch_size == 8 and recipe.init.full is None and freeze["freeze_full"]
    assert any("init weights ignored" in n for n in notes)


def test_peak_by_device_name(bench, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.peak_tflops_for(torch.device("cuda"), None)[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench.peak_tflops_for(torch.device("cuda"), None)[0] == 989.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert bench.peak_tflops_for(torch.device("cuda"), None)[0] == 312.0
    assert bench.peak_tflops_for(torch.device("cpu"), None)[0] is None
    assert bench.peak_tflops_for(torch.device("cpu"), 2.5)[0] == 2.5


def test_benchmark_needs_neither_insightface_nor_onnxruntime():
    """The device machine has torch but no insightface: the benchmark's import chain must not need it."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('insightface', 'onnxruntime', 'onnx'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('tt', {str(SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "import insightface_bfm.train.trainer, insightface_bfm.masks.batched\n"
        "import insightface_bfm.data.synthetic\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_gpu_check_script_is_valid_bash():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
