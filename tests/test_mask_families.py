"""Mask families, where the trainer puts its masks, and the leave-one-family-out proxy."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_benchmark, shared_path

from insightface_bfm.errors import BFMError
from insightface_bfm.masks import ALL_TYPES, MASK_FAMILIES, MASK_TYPES, check_types, family_of, types_without
from insightface_bfm.masks.batched import MaskAugment
from insightface_bfm.train.recipe import Recipe
from insightface_bfm.train.trainer import Trainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_families_partition_the_types():
    listed = [t for types in MASK_FAMILIES.values() for t in types]
    assert sorted(listed) == sorted(MASK_TYPES) and len(set(listed)) == len(listed)
    for family, types in MASK_FAMILIES.items():
        assert check_types([family]) == types
        assert all(family_of(t) == family for t in types)
        rest = types_without(family)
        assert set(rest) == set(MASK_TYPES) - set(types) and rest
    # expanded in place; a repeated type keeps its weight, as plain type lists always did
    assert check_types("respirator,surgical,n95") == ("n95", "kn95", "surgical", "n95")
    with pytest.raises(ValueError, match="families"):
        check_types(["visor"])
    with pytest.raises(ValueError, match="mask family 'wrap'"):
        types_without("wrap")
    with pytest.raises(ValueError, match="mask type 'visor'"):
        family_of("visor")


def test_masked_pair_plans_and_bfm_mask_take_families(tmp_path):
    from click.testing import CliRunner

    from insightface_bfm.cli import main
    from insightface_bfm.errors import DatasetError
    from insightface_bfm.evaluation.masked_pairs import plan_masks

    names = [f"p{i}.jpg" for i in range(40)]
    plan = plan_masks(names, names, "both", seed=0, types=["fabric"])
    assert plan["types"] == ["cloth", "dark"]
    assert {e["style"]["type"] for e in plan["entries"]} == {"cloth", "dark"}
    with pytest.raises(DatasetError, match="families"):
        plan_masks(names, names, "one", types=["visor"])
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    import cv2
    for i in range(6):
        cv2.imwrite(str(src / f"{i}.jpg"), np.full((112, 112, 3), 120, np.uint8))
    args = ["mask", str(tmp_path / "src"), str(tmp_path / "dst"), "--types", "respirator"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (tmp_path / "dst" / "mask_manifest.jsonl").read_text().splitlines()]
    drawn = {f["style"]["type"] for x in lines[1:] for f in x.get("faces", [x])}
    assert drawn <= set(MASK_FAMILIES["respirator"]) and drawn


def test_mask_augment_checks_its_placement():
    with pytest.raises(ValueError, match="kps_jitter"):
        MaskAugment(kps_jitter=-1)
    with pytest.raises(ValueError, match="worn_low"):
        MaskAugment(worn_low=2)
    with pytest.raises(ValueError, match="colours"):
        MaskAugment(colours="rainbow")


def test_any_colours_spread_every_palette_over_every_shape():
    n = 400

    def darkest(colours):  # base colours of surgical masks: how dark does any get?
        style = MaskAugment(types=["surgical"], colours=colours).sample_styles(
            n, generator=torch.Generator().manual_seed(0))
        return float(style["base"].mean(dim=1).min())

    assert darkest("own") > 100  # surgical palettes: blue, white, green, pink
    assert darkest("any") < 60   # with every type's colours some surgical masks are black
    # the shapes are still the asked-for types, and the default draw is unchanged by the option
    own = MaskAugment(types=["surgical"]).sample_styles(n, generator=torch.Generator().manual_seed(0))
    anyc = MaskAugment(types=["surgical"], colours="any").sample_styles(
        n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(own["type"], anyc["type"]) and torch.equal(own["shape"], anyc["shape"])


def test_mask_augment_draws_only_the_family_asked_for():
    g = torch.Generator().manual_seed(0)
    aug = MaskAugment(types=["respirator"])
    style = aug.sample_styles(200, generator=g)
    drawn = {MASK_TYPES[i] for i in style["type"].tolist()}
    assert drawn == set(MASK_FAMILIES["respirator"])


def _recipe(tmp_path, **data):
    return Recipe.from_dict({
        "mode": "bfm",
        "model": {"backbone": "r18", "embedding_size": 16, "s": 16.0, "m": 0.2,
                  "backbone_options": {"width": 0.0625, "layers": [1, 1, 1, 1]}},
        "data": {"path": "synthetic:4:2:0", "num_workers": 0, **data},
        "optim": {"batch_size": 4, "epochs": 1, "milestones": []},
        "train": {"output": str(tmp_path / "run"), "progress": False},
    })


def test_recipe_places_the_trainers_masks(tmp_path):
    trainer = Trainer(_recipe(tmp_path, mask_types=["fabric"], mask_kps_jitter=3.0, mask_worn_low=0.25,
                              mask_colours="any"))
    aug = trainer.mask_augment
    assert (aug.types, aug.kps_jitter, aug.worn_low, aug.colours) == (("cloth", "dark"), 3.0, 0.25, "any")
    d = Trainer(_recipe(tmp_path)).mask_augment
    assert (d.types, d.kps_jitter, d.worn_low, d.colours) == (MASK_TYPES, 1.0, 0.0, "own")
    for bad, match in (({"mask_kps_jitter": -1}, r"data\.mask_kps_jitter"),
                       ({"mask_worn_low": 1.5}, r"data\.mask_worn_low"),
                       ({"mask_colours": "all"}, r"data\.mask_colours"),
                       ({"mask_types": ["wrap"]}, r"data\.mask_types\[0\]' must be one of .* or a family")):
        with pytest.raises(BFMError, match=match):
            _recipe(tmp_path, **bad)


def test_jitter_spreads_where_the_masks_sit():
    # the masks' horizontal centre varies more across samples with a larger jitter
    x = torch.zeros(64, 3, 112, 112)

    def centres(jitter):
        _, region = MaskAugment(kps_jitter=jitter)(x, generator=torch.Generator().manual_seed(1))
        cols = region[:, 0].sum(dim=1)  # (B, W): coverage per column
        return (cols * torch.arange(112.0)).sum(1) / cols.sum(1)

    assert centres(3.0).std() > 2.0 * centres(1.0).std()
    assert centres(0.0).std() < 0.5 * centres(1.0).std()


def test_holdout_routes(tmp_path):
    from insightface_bfm.train.holdout import evaluate_holdout

    trainer = Trainer(_recipe(tmp_path))
    settings = {"pairs": 20, "folds": 2, "batch_size": 8}
    by_route = {route: evaluate_holdout(trainer.model, "synthetic:4:3:5", route=route, **settings)
                for route in ("classifier", "truth", "partial")}
    assert [by_route["truth"][f"case{c}"]["routed_partial"] for c in (1, 2, 3)] == [0.0, 1.0, 1.0]
    assert [by_route["partial"][f"case{c}"]["routed_partial"] for c in (1, 2, 3)] == [1.0, 1.0, 1.0]
    # the same E_P embeddings in cases 2 and 3 whether the truth or "always E_P" routes
    for c in (2, 3):
        assert by_route["truth"][f"case{c}"] == by_route["partial"][f"case{c}"]
    # the route matters: with C answering "unmasked" for every face, the classifier routes nothing
    # to E_P, the truth routes cases 2 and 3 there
    model = trainer.model
    model.mask_probability = lambda x: torch.zeros(len(x))
    blind = evaluate_holdout(model, "synthetic:4:3:5", route="classifier", **settings)
    assert [blind[f"case{c}"]["routed_partial"] for c in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert (blind["classifier_recall"], blind["classifier_specificity"]) == (0.0, 1.0)
    r = by_route["classifier"]
    assert 0.0 <= r["classifier_recall"] <= 1.0 and 0.0 <= r["classifier_specificity"] <= 1.0
    balanced = (r["classifier_recall"] + r["classifier_specificity"]) / 2
    assert r["classifier_accuracy"] == pytest.approx(balanced)
    with pytest.raises(ValueError, match="route"):
        evaluate_holdout(trainer.model, "synthetic:4:3:5", route="oracle", **settings)
    # a threshold per extractor: where every pair of a case goes one way (the true mask state
    # routes), each case has one extractor and the same accuracy as under one threshold
    per = evaluate_holdout(trainer.model, "synthetic:4:3:5", route="truth", thresholds="per_extractor",
                           **settings)
    assert all(per[f"case{c}"] == by_route["truth"][f"case{c}"] for c in (1, 2, 3))
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_holdout(trainer.model, "synthetic:4:3:5", thresholds="two", **settings)


def test_holdout_per_mask_set_embeds_the_bare_faces_once(tmp_path):
    from insightface_bfm.train.holdout import evaluate_holdout, evaluate_holdout_per_mask_set

    model = Trainer(_recipe(tmp_path)).model
    settings = {"pairs": 20, "folds": 2, "batch_size": 8, "route": "truth"}
    sets = {"medical": MASK_FAMILIES["medical"], "fabric": MASK_FAMILIES["fabric"], "all": None}
    expected = {name: evaluate_holdout(model, "synthetic:4:3:5", mask_types=types, **settings)
                for name, types in sets.items()}
    runs = []
    embed = model.embed
    model.embed = lambda x, which: runs.append((which, len(x))) or embed(x, which)
    assert evaluate_holdout_per_mask_set(model, "synthetic:4:3:5", sets, **settings) == expected
    # E_F and E_P once on the bare faces (case 1; a bare face meets a masked one in case 2), E_P on
    # each set's masked faces (the true mask state routes cases 2 and 3 to E_P); never E_F on a
    # masked face, which no case reads
    full = sum(n for which, n in runs if which == "full")
    partial = sum(n for which, n in runs if which == "partial")
    assert full > 0 and partial == (1 + len(sets)) * full and full + partial == sum(n for _, n in runs)


def test_contact_sheet_shows_every_kind():
    lfw = shared_path("data", "lfw112", "landmarks.tsv").parent
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mask_contact_sheet import LABEL_W, contact_sheet, pick_faces

    sheet = contact_sheet(lfw, faces=2, seed=0)
    rows = 2 * len(ALL_TYPES) + 3 + 2  # ... worn low, off template, any colours; lit by both renderers
    assert sheet.shape == (112 * rows, LABEL_W + 2 * 112, 3)
    bare = np.concatenate(pick_faces(lfw, 2)[0], 1)
    mouth = np.r_[50:62, 162:174]  # the middle columns of both faces (an occluder may sit off-centre)
    for r in range(rows):  # every row covers the mouth of both faces and leaves the eyes
        row = sheet[112 * r: 112 * (r + 1), LABEL_W:].astype(int)
        assert np.abs(row[80:100, mouth] - bare[80:100, mouth]).mean() > 20, r
        assert np.abs(row[40:50] - bare[40:50]).mean() < 3, r


def test_leave_one_family_out_smoke(tmp_path, capsys):
    shared_path("data", "rmfd_dev")
    shared_path("models", "mobilefacenet_128.onnx")
    out = tmp_path / "lofo"
    script = ROOT / "benchmarks" / "mask_families.py"  # its main() in this process (conftest.run_benchmark)
    args = ["--out", str(out), "--threads", "1",
            "--max-ids", "8", "--val-ids", "6", "--pairs", "16", "--max-rmfd", "3", "--families", "medical",
            "--set", "train.max_steps=1", "--set", "optim.batch_size=4"]
    run_benchmark(script, args)
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"all", "medical"}
    assert models["medical"]["trained_on"] == list(types_without("medical"))
    assert models["all"]["trained_on"] == "every family"
    for row in models.values():
        assert set(row["families"]) == set(MASK_FAMILIES) and 0.0 <= row["c_specificity"] <= 1.0
    assert results["data"]["people_overlap_with_devtest"] == 0
    assert "| medical |" in (out / "results.md").read_text()
    # a second run reuses what it measured
    capsys.readouterr()
    run_benchmark(script, args)
    assert capsys.readouterr().out.count("measured before, reused") == 2
    # occluders added to every training (never to the measured masks), each mask type weighted twice
    run_benchmark(script, args + ["--add-types", "hand", "--mask-repeat", "2"])
    assert "reused" not in capsys.readouterr().out
    for name, types in (("all", MASK_TYPES), ("medical", types_without("medical"))):
        recipe = yaml.safe_load((out / "runs" / name / "recipe.yaml").read_text())
        assert recipe["data"]["mask_types"] == [*types, *types, "hand"]
    assert json.loads((out / "results.json").read_text())["added_types"] == ["hand"]
