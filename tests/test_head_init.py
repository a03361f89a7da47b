"""init.head: centres and init.trainable_share, through the trainer as any recipe uses them."""

import numpy as np
import pytest
import torch
from test_trainer import tiny

from insightface_bfm.data import open_dataset
from insightface_bfm.errors import RecipeError
from insightface_bfm.train.model import load_checkpoint
from insightface_bfm.train.recipe import Recipe
from insightface_bfm.train.trainer import Trainer, to_network_tensor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def faces():
    return open_dataset("synthetic:6:4:0")


def _centres(net, faces):
    x = to_network_tensor(torch.from_numpy(np.stack([faces[i][0] for i in range(len(faces))])))
    with torch.no_grad():
        emb = torch.nn.functional.normalize(net.eval()(x), dim=1)
    labels = torch.as_tensor(np.asarray(faces.labels))
    means = torch.stack([emb[labels == c].mean(0) for c in range(faces.num_classes)])
    return torch.nn.functional.normalize(means, dim=1)


def test_heads_start_at_the_class_centres_of_the_init_model(tmp_path, faces):
    Trainer(tiny(tmp_path, "baseline1", train={"max_steps": 1}), dataset=faces).fit()
    source = tmp_path / "baseline1"
    start = load_checkpoint(source)[0].full
    expected = _centres(start, faces)

    r = tiny(tmp_path, "bfm", train={"max_steps": 1},
             init={"full": str(source), "partial": str(source), "freeze_full": True, "head": "centres"})
    trainer = Trainer(r, dataset=faces)
    torch.testing.assert_close(trainer.model.head_partial.weight.detach(), expected, atol=1e-5, rtol=1e-4)
    assert any("class centres" in line for line in trainer.loaded)
    # E_F is frozen: its head is never used, so it is left random (not computed)
    assert not torch.allclose(trainer.model.head_full.weight.detach(), expected, atol=1e-3)

    # baseline 2 (one model that trains): its head starts at the centres too
    r2 = tiny(tmp_path, "baseline2", train={"max_steps": 1}, init={"full": str(source), "head": "centres"})
    torch.testing.assert_close(Trainer(r2, dataset=faces).model.head_full.weight.detach(), expected,
                               atol=1e-5, rtol=1e-4)
    # random heads by default
    r3 = tiny(tmp_path, "baseline2", train={"max_steps": 1}, init={"full": str(source)})
    assert not torch.allclose(Trainer(r3, dataset=faces).model.head_full.weight.detach(), expected, atol=1e-3)


def test_resumed_run_keeps_its_trained_heads(tmp_path, faces):
    r = tiny(tmp_path, "baseline2", train={"max_steps": 2}, init={"head": "centres"})
    trainer = Trainer(r, dataset=faces)
    trainer.fit()
    trained = trainer.model.head_full.weight.detach().clone()
    resumed = Trainer(r, dataset=faces, resume=True)
    assert not any("class centres" in line for line in resumed.loaded)
    torch.testing.assert_close(resumed.model.head_full.weight.detach(), trained)


def test_recipe_keys_are_validated():
    with pytest.raises(RecipeError, match=r"'init\.head' must be one of random, centres"):
        Recipe.from_dict({"data": {"path": "synthetic:4:2"}, "init": {"head": "mean"}})
    with pytest.raises(RecipeError, match=r"'init\.trainable_share' must be <= 1"):
        Recipe.from_dict({"data": {"path": "synthetic:4:2"}, "init": {"trainable_share": 2}})
    with pytest.raises(RecipeError, match="either 'init.trainable'"):
        Recipe.from_dict({"data": {"path": "synthetic:4:2"},
                          "init": {"trainable": ["fc"], "trainable_share": 0.5}})


def test_trainable_share_freezes_all_but_the_last_layers(tmp_path, faces):
    r = tiny(tmp_path, "baseline1", train={"max_steps": 1}, init={"trainable_share": 0.3})
    net = Trainer(r, dataset=faces).model.full
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    first = flags.index(True)
    assert not any(flags[:first]) and all(flags[first:])  # one trailing block trains
    kept = sum(p.numel() for p in params[first:])
    total = sum(p.numel() for p in params)
    assert kept >= 0.3 * total and kept - params[first].numel() < 0.3 * total


def test_trainable_share_is_the_real_faces_last_stage(shared):
    """0.43 of ../shared's MobileFaceNet = exactly the parameters real_faces_bfm.yaml names by pattern."""
    import re

    from insightface_bfm.train.model import BFMModel, initialise

    onnx = shared("models", "mobilefacenet_128.onnx")
    chosen = {}
    for init in ({"trainable_share": 0.43}, {"trainable": ["^onnx__Conv_(64[4-9]|6[5-9][0-9])$"]}):
        r = Recipe.from_dict({"mode": "baseline1", "model": {"backbone": "mbf", "embedding_size": 128},
                              "data": {"path": "synthetic:4:2"}, "init": {"full": f"onnx:{onnx}", **init}})
        model = BFMModel(r, 4)
        initialise(model, r.init)
        chosen[tuple(init)] = {n for n, p in model.full.named_parameters() if p.requires_grad}
    assert chosen[("trainable_share",)] == chosen[("trainable",)]
    assert all(re.match(r"onnx__Conv_6[4-7]\d", n) for n in chosen[("trainable",)])


def test_onnx_init_centres_through_onnx_runtime_equal_the_torch_graphs(shared, faces):
    """An ``onnx:`` extractor's centres come from its file in ONNX Runtime (fast); they equal the
    imported graph's in torch."""
    from insightface_bfm.export import import_onnx
    from insightface_bfm.train.head_init import class_centres, onnx_embedder, torch_embedder

    path = str(shared("models", "mobilefacenet_128.onnx"))
    fast = class_centres(onnx_embedder(path), faces, faces.num_classes, progress=False)
    slow = class_centres(torch_embedder(import_onnx(path)), faces, faces.num_classes, progress=False)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-3)


def test_upper_face_centres_through_onnx_runtime_equal_the_torch_partial_extractor(shared, faces):
    """E_P with ``model.partial_rows`` starts its head at the centres of its cut view: ONNX Runtime
    on the file with the rows below set to mid-grey gives those of torch's partial extractor (the
    build's fast path), and they differ from the whole crop's."""
    from insightface_bfm.export import import_onnx
    from insightface_bfm.nets.upper_face import UpperFace
    from insightface_bfm.train.head_init import class_centres, onnx_embedder, torch_embedder

    path = str(shared("models", "mobilefacenet_128.onnx"))
    fast = class_centres(onnx_embedder(path, rows=62), faces, faces.num_classes, progress=False)
    view = torch.nn.Sequential(UpperFace(62), import_onnx(path))
    slow = class_centres(torch_embedder(view), faces, faces.num_classes, progress=False)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-3)
    whole = class_centres(onnx_embedder(path), faces, faces.num_classes, progress=False)
    assert (fast - whole).abs().max() > 1e-2
