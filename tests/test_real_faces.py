"""Fine-tuning from a generic ONNX recogniser (train/model.py): init, trainable subset, checkpoint reload."""

from pathlib import Path

import pytest
import torch
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
