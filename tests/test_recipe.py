"""Recipes: every shipped one loads, and every mistake is one line naming the file and key."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from insightface_bfm.errors import RecipeError
from insightface_bfm.train.recipe import Recipe, apply_override, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = ("paper_casia_r50.yaml", "finetune_r50.yaml", "baseline1_casia_r50.yaml",
           "baseline2_casia_r50.yaml", "quickstart.yaml")


def write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def base(**sections):
    data = {"data": {"path": "synthetic:4:2"}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return data


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_loads(name):
    # Paths of the paper recipes point at the user's CASIA copy: validate everything else.
    r = load_recipe(RECIPES / name, check_paths=name == "quickstart.yaml")
    assert isinstance(r, Recipe)
    assert r.source.endswith(name)


def test_the_issue_recipes_ship():
    assert set(SHIPPED) <= {p.name for p in RECIPES.glob("*.yaml")}


def test_paper_recipe_is_the_papers_setting():
    r = load_recipe(RECIPES / "paper_casia_r50.yaml", check_paths=False)
    assert (r.mode, r.model.backbone, r.model.head) == ("bfm", "r50", "arcface")
    assert (r.optim.lr, r.optim.momentum, r.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert (r.optim.batch_size, r.optim.epochs) == (128, 100)
    assert (r.optim.milestones, r.optim.gamma) == ([30, 60, 90], 0.1)
    assert (r.loss.mask, r.loss.full, r.loss.guided, r.loss.partial) == (1.0, 1.0, 1.0, 1.0)
    assert r.loss.pair_reduction == "sum"  # eqs. 1 and 5 as printed
    assert r.data.mask_prob == 1.0
    assert load_recipe(RECIPES / "baseline1_casia_r50.yaml", check_paths=False).mode == "baseline1"
    assert load_recipe(RECIPES / "baseline2_casia_r50.yaml", check_paths=False).mode == "baseline2"


def test_quickstart_compares_the_three_modes():
    r = load_recipe(RECIPES / "quickstart.yaml")
    assert r.compare == ["baseline1", "baseline2", "bfm"]
    assert r.eval.holdout.startswith("synthetic:") and r.data.path.startswith("synthetic:")
    # held-out identities come from another seed, hence are disjoint from the training ones
    assert r.eval.holdout.split(":")[3] != r.data.path.split(":")[3]


def test_unknown_key_names_file_path_and_suggestion(tmp_path):
    path = write(tmp_path, base(optim={"learning_rat": 0.1}))
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    # nothing close: the valid keys of the section are listed
    assert str(e.value).startswith(f"{path}: unknown key 'optim.learning_rat' (valid: lr, momentum, ")
    path = write(tmp_path, base(optim={"milestone": [1]}))
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown key 'optim\.milestone' \(did you mean 'milest"):
        load_recipe(path)
    # a key that lives in another section is pointed there
    with pytest.raises(RecipeError, match=r"unknown key 'train\.lr' \(did you mean 'optim\.lr'\?\)"):
        load_recipe(write(tmp_path, base(train={"lr": 0.1})))
    with pytest.raises(RecipeError, match=r"unknown key 'optimm' \(did you mean 'optim'\?\)"):
        load_recipe(write(tmp_path, base(optimm={})))


@pytest.mark.parametrize("sections, message", [
    ({"optim": {"lr": "fast"}}, r"'optim\.lr' must be a number, got 'fast' \(str\)"),
    ({"optim": {"batch_size": 12.5}}, r"'optim\.batch_size' must be an integer"),
    ({"optim": {"milestones": [30, "x"]}}, r"'optim\.milestones\[1\]' must be an integer"),
    ({"optim": {"milestones": [60, 30]}}, r"'optim\.milestones' must be increasing"),
    ({"train": {"amp": "fp8"}}, r"'train\.amp' must be one of none, bf16, fp16, got 'fp8'"),
    ({"train": {"channels_last": "yes"}}, r"'train\.channels_last' must be true or false"),
    ({"train": {"device": "tpu"}}, r"'train\.device' must be auto, cpu, cuda or cuda:N"),
    ({"model": {"backbone": "r200"}}, r"'model\.backbone' must be one of"),
    ({"model": "r50"}, r"'model' is a section"),
    ({"data": {"mask_prob": 1.5}}, r"'data\.mask_prob' must be <= 1"),
    ({"data": {"mask_types": ["surgical", "visor"]}}, r"'data\.mask_types\[1\]' must be one of"),
    ({"data": {"mask_types": []}}, r"'data\.mask_types' is empty"),
    ({"model": {"sample_rate": 0.1}}, r"'model\.sample_rate' below 1 needs 'model\.partial_fc: true'"),
    ({"mode": "bfm", "compare": ["bfm"]}, r"either 'mode'"),
    ({"compare": ["bfm", "baseline3"], "eval": {"holdout": "synthetic:4:2:1"}},
     r"'compare\[1\]' must be one of"),
    ({"compare": ["bfm"]}, r"'compare' needs 'eval\.holdout'"),
    ({"init": {"freeze_full": True}}, r"'init\.freeze_full' needs 'init\.full'"),
])
def test_wrong_types_and_values_are_named_by_key(tmp_path, sections, message):
    path = write(tmp_path, base(**sections))
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_missing_dataset_and_init_paths(tmp_path):
    missing = tmp_path / "casia"
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, {"data": {"path": str(missing)}}))
    assert str(e.value) == f"{tmp_path / 'r.yaml'}: 'data.path': dataset path {missing} does not exist"
    with pytest.raises(RecipeError, match=r"'data\.path' is required"):
        load_recipe(write(tmp_path, {"optim": {"lr": 0.1}}))
    with pytest.raises(RecipeError, match=r"'data\.path': 'synthetic:x:2' must be synthetic:N_IDS"):
        load_recipe(write(tmp_path, {"data": {"path": "synthetic:x:2"}}))
    with pytest.raises(RecipeError, match=r"'init\.full': .*backbone\.pth does not exist"):
        load_recipe(write(tmp_path, base(init={"full": str(tmp_path / "backbone.pth")})))
    with pytest.raises(RecipeError, match=r"'eval\.holdout': dataset path"):
        load_recipe(write(tmp_path, base(eval={"holdout": str(tmp_path / "lfw")})))


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: [0.1\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: not valid YAML at line"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"nope\.yaml: cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match=r"a recipe is a mapping of sections, got list"):
        load_recipe(path)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, base())
    r = load_recipe(path, ["optim.lr=0.01", "optim.milestones=[2, 4]", "train.amp=bf16", "model.m=null"])
    assert (r.optim.lr, r.optim.milestones, r.train.amp, r.model.m) == (0.01, [2, 4], "bf16", None)
    with pytest.raises(RecipeError, match=r"unknown key 'optim\.lr_schedul'"):
        load_recipe(path, ["optim.lr_schedul=1"])
    with pytest.raises(RecipeError, match=r"--set expects key\.path=value"):
        load_recipe(path, ["optim.lr"])
    data = {"optim": 3}
    with pytest.raises(RecipeError, match=r"'optim' is not a section"):
        apply_override(data, "optim.lr=1")


def test_defaults_and_round_trip():
    r = Recipe.from_dict(base())
    assert r.mode == "bfm" and r.optim.lr == 0.1 and r.optim.milestones == [30, 60, 90]
    again = Recipe.from_dict(r.to_dict())
    assert again.to_dict() == r.to_dict()
    assert r.with_mode("baseline2").mode == "baseline2"
    # list defaults are not shared between instances
    r.optim.milestones.append(99)
    assert Recipe.from_dict(base()).optim.milestones == [30, 60, 90]


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path):
    from insightface_bfm.cli import main

    path = write(tmp_path, base(train={"sed": 1}))
    result = CliRunner().invoke(main, ["train", str(path)])
    assert result.exit_code == 2
    assert f"Error: {path}: unknown key 'train.sed' (did you mean 'seed'?)" in result.output
    result = CliRunner().invoke(main, ["train", str(write(tmp_path, base())), "--set", "optim.lr=abc"])
    assert result.exit_code == 2 and "'optim.lr' must be a number" in result.output
