"""Fine-tuning from a generic ONNX recogniser (train/model.py), and the real-face benchmark's smoke run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_benchmark, shared_path
from torch import nn

from insightface_bfm.data import open_dataset
from insightface_bfm.errors import BFMError
from insightface_bfm.export import OnnxGraphModule
from insightface_bfm.train.model import load_checkpoint
from insightface_bfm.train.recipe import Recipe
from insightface_bfm.train.trainer import Trainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class _TinyRecogniser(nn.Module):
    """Not an arcface_torch architecture: import_onnx falls back to its generic graph module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, 16)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def generic_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(_TinyRecogniser().eval(), (torch.randn(2, 3, 112, 112),), str(path), dynamo=False,
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def _recipe(tmp_path, onnx_path, **init):
    return Recipe.from_dict({
        "mode": "bfm",
        "model": {"backbone": "r18", "embedding_size": 16, "s": 16.0, "m": 0.2,
                  "backbone_options": {"width": 0.0625, "layers": [1, 1, 1, 1]}},
        "data": {"path": "synthetic:4:2:0", "num_workers": 0},
        "optim": {"batch_size": 4, "epochs": 1, "lr": 0.01},
        "init": {"full": f"onnx:{onnx_path}", "partial": f"onnx:{onnx_path}", **init},
        "train": {"output": str(tmp_path / "run"), "log_every": 1, "progress": False, "max_steps": 2},
    })


def test_generic_onnx_init_trains_and_reloads(tmp_path, generic_onnx):
    recipe = _recipe(tmp_path, generic_onnx, freeze_full=True, trainable=["^fc_"])
    trainer = Trainer(recipe, dataset=open_dataset("synthetic:4:2:0"))
    model = trainer.model
    assert isinstance(model.full, OnnxGraphModule) and isinstance(model.partial, OnnxGraphModule)
    # only the matching E_P parameters train; the frozen E_F is not even run
    trainable = {n for n, p in model.partial.named_parameters() if p.requires_grad}
    assert trainable == {"fc_weight", "fc_bias"}
    assert not any(p.requires_grad for p in model.full.parameters())
    before = {n: p.detach().clone() for n, p in model.partial.named_parameters()}
    trainer.fit()
    after = dict(model.partial.named_parameters())
    assert not torch.equal(before["fc_weight"], after["fc_weight"].detach())
    assert torch.equal(before["conv_weight"], after["conv_weight"].detach())
    # the checkpoint alone rebuilds the generic graphs (skeleton in the weights) and reproduces them
    loaded, _ = load_checkpoint(tmp_path / "run")
    assert isinstance(loaded.partial, OnnxGraphModule)
    x = torch.randn(3, 3, 112, 112)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.partial(x), model.partial(x))
        torch.testing.assert_close(loaded.full(x), model.full(x))


def test_generic_onnx_init_checks_sizes_and_patterns(tmp_path, generic_onnx):
    bad = _recipe(tmp_path, generic_onnx).to_dict()
    bad["model"]["embedding_size"] = 32
    with pytest.raises(BFMError, match="embeds to 16 dimensions but model.embedding_size is 32"):
        Trainer(Recipe.from_dict(bad), dataset=open_dataset("synthetic:4:2:0"))
    with pytest.raises(BFMError, match="'nothing_like_this' matches no extractor parameter"):
        Trainer(_recipe(tmp_path, generic_onnx, trainable=["nothing_like_this"]),
                dataset=open_dataset("synthetic:4:2:0"))


def test_real_faces_benchmark_smoke(tmp_path):
    """benchmarks/real_faces/run.py end to end on a tiny setting: pack, baselines, results.json."""
    shared_path("data", "lfw112", "pairsDevTest.txt")
    shared_path("data", "rmfd_dev")
    shared_path("models", "mobilefacenet_128.onnx")
    out = tmp_path / "rf"
    # run.py's main() in this process (conftest.run_benchmark)
    run_benchmark(ROOT / "benchmarks" / "real_faces" / "run.py", [
        "--out", str(out), "--threads", "1", "--max-ids", "4", "--max-steps", "1", "--batch-size", "4",
        "--max-pairs", "5", "--max-rmfd", "2"])
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train_people"] == 4 and results["data"]["people_overlap_with_devtest"] == 0
    n_pairs = 10  # --max-pairs 5: 5 same + 5 different
    verification = results["verification"]
    for case in (1, 2, 3):
        rows = {model: verification[model][f"case{case}"] for model in ("baseline1", "baseline2", "bfm")}
        # one saved mask manifest per set: every model embedded the very same faces
        assert len({row["n_faces_embedded"] for row in rows.values()}) == 1, case
        # the baselines' cases come from how the set was built: no mask, the second face, both faces
        for model in ("baseline1", "baseline2"):
            expected = {} if case == 1 else {str(case): n_pairs}
            assert {c: v["n_pairs"] for c, v in rows[model]["cases"].items()} == expected, (model, case)
        # BFM routes every pair by its classifier C
        assert rows["bfm"]["case_source"] == "classifier"
        assert sum(v["n_pairs"] for v in rows["bfm"]["cases"].values()) == n_pairs
    # The design: BFM's E_F is Baseline 1 (the pretrained model, frozen) and all models saw the same
    # masked faces, so with C answering "unmasked" the pack's three rows are Baseline 1's.
    from insightface_bfm.evaluation import evaluate
    from insightface_bfm.evaluation.embedders import BFMPackEmbedder

    class UnmaskedC(BFMPackEmbedder):
        def embed(self, crops):
            return {**super().embed(crops), "mask_score": np.zeros(len(crops), np.float32)}

    pairs, lfw = Path(results["data"]["test_pairs_file"]), shared_path("data", "lfw112")
    from insightface_bfm.imaging import read_image
    from insightface_bfm.runtime import EmbedderONNX

    crops = np.stack([read_image(p) for p in sorted((lfw / "Abdullah_Gul").glob("*.jpg"))[:4]])
    e_f, b1 = (EmbedderONNX(model_file=str(out / name)).get_feat(crops)
               for name in ("pack/full.onnx", "baseline1.onnx"))
    np.testing.assert_allclose(e_f, b1, atol=1e-5, err_msg="the pack's E_F is not Baseline 1")
    for case, mask in ((1, None), (2, "one"), (3, "both")):
        kw = {} if mask is None else {"mask_manifest": out / "manifests" / f"pairsDevTest_{mask}.json"}
        # the BFM row is the pack's (its own C) on the saved masked set, under the recipe's threshold rule
        bfm = verification["bfm"][f"case{case}"]
        routed, _, _ = evaluate(pairs, out / "pack", images=lfw, progress=False,
                                thresholds=bfm["threshold_rule"], **kw)
        for key in ("accuracy", "std", "auc", "cases", "masked_fraction", "threshold_rule"):
            assert routed[key] == bfm[key], (case, key)
        got, _, _ = evaluate(pairs, out / "pack", images=lfw, embedder=UnmaskedC(out / "pack"),
                             progress=False, **kw)
        b1 = verification["baseline1"][f"case{case}"]
        assert {c: v["n_pairs"] for c, v in got["cases"].items()} == {"1": n_pairs}
        assert (got["accuracy"], got["std"]) == pytest.approx((b1["accuracy"], b1["std"]), abs=1e-12), case
        assert got["auc"] == pytest.approx(b1["auc"], abs=1e-6), case
    assert results["pack"]["face_analysis_check"]["faces"] >= 1
    assert (out / "baseline1.onnx").is_file() and (out / "baseline2.onnx").is_file()
    real = results["classifier"]["rmfd_real"]
    assert real["faces_aligned"] + real["no_face"] == 2
    # the pack is what FaceAnalysis loads, with the shared SCRFD inside
    manifest = json.loads((out / "pack" / "manifest.json").read_text())
    assert manifest["bfm"]["detector"] == "scrfd_2.5g_bnkps.onnx"
    assert set(results["timings_s"]) >= {"data", "train_baseline2", "train_bfm", "export", "verification"}
