"""`bfm eval` and `bfm align` end to end on a tiny real set (40 LFW pairs, the shared MobileFaceNet)."""

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.data.binsets import save_bin
from insightface_bfm.evaluation.embedders import pair_embeddings
from insightface_bfm.evaluation.masked_pairs import plan_masks
from insightface_bfm.matching import pair_case, pair_extractor

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 pairs of LFW fold 1 (20 same, 20 different, interleaved) as CSV, LFW lines and .bin."""
    from conftest import shared_path

    lfw = shared_path("data", "lfw112")
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    picked = [x for pair in zip(lines[:20], lines[300:320]) for x in pair]
    rows = []
    for line in picked:
        f = line.split("\t")
        if len(f) == 3:
            rows.append((f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[0]}/{f[0]}_{int(f[2]):04d}.jpg", 1))
        else:
            rows.append((f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{f[2]}/{f[2]}_{int(f[3]):04d}.jpg", 0))
    d = tmp_path_factory.mktemp("tiny")
    (d / "pairs.csv").write_text("left,right,same\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows))
    images = [(lfw / p).read_bytes() for a, b, _ in rows for p in (a, b)]
    save_bin(d / "tiny.bin", images, [bool(s) for _, _, s in rows])
    model = shared_path("models", "mobilefacenet_128.onnx")
    return {"dir": d, "lfw": lfw, "model": model, "rows": rows, "cache": d / "cache"}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_eval_csv_writes_json_markdown_and_roc(tiny, tmp_path):
    out = tmp_path / "out"
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tiny["model"],
            "--out", out, "--quiet", "--cache", tiny["cache"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["n_pairs"] == 40 and res["n_same"] == 20
    assert res["folds"] == "10 balanced folds (a share of each kind of pair)"
    assert res["accuracy"] >= 0.9 and 0.9 <= res["auc"] <= 1.0
    assert res["tar_at_far"]["0.001"]["tar"] is None and "20" in res["tar_at_far"]["0.001"]["reason"]
    assert res["n_faces_embedded"] == len({p for a, b, _ in tiny["rows"] for p in (a, b)})
    md = (out / "results.md").read_text()
    assert "| pairs | mobilefacenet_128.onnx | 40 |" in md and "needs >= 1000" in md
    roc = cv2.imread(str(out / "roc.png"))
    assert roc.shape == (480, 640, 3) and (roc < 128).any()
    assert "accuracy (10-fold)" in r.output


def test_bin_gives_the_same_numbers_as_csv(tiny, tmp_path):
    r1 = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tiny["model"],
             "--out", tmp_path / "a", "--quiet", "--flip")
    r2 = run("eval", tiny["dir"] / "tiny.bin", "--model", tiny["model"], "--out", tmp_path / "b", "--quiet",
             "--flip")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["format"] == "bin" and a["flip"] and b["flip"]
    for key in ("accuracy", "std", "auc", "eer", "fold_thresholds"):
        assert a[key] == b[key]


def test_lfw_lines_with_fold_header(tiny, tmp_path):
    lines = (tiny["lfw"] / "pairs.txt").read_text().splitlines()
    p = tmp_path / "pairs.txt"
    p.write_text("2\t10\n" + "\n".join(lines[1:11] + lines[301:311] + lines[11:21] + lines[311:321]) + "\n")
    r = run("eval", p, "--images", tiny["lfw"], "--model", tiny["model"], "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["folds"] == "2 folds given by the pairs file" and len(res["fold_accuracies"]) == 2


def test_masked_pairs_are_rebuilt_exactly(tiny, tmp_path):
    base = ["eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tiny["model"], "--quiet"]
    r = run(*base, "--mask-pairs", "both", "--seed", "7", "--out", tmp_path / "m1")
    assert r.exit_code == 0, r.output
    m1 = json.loads((tmp_path / "m1" / "results.json").read_text())
    manifest = json.loads((tmp_path / "m1" / "mask_manifest.json").read_text())
    assert manifest["mode"] == "both" and manifest["seed"] == 7 and len(manifest["entries"]) == 80
    assert {e["side"] for e in manifest["entries"]} == {0, 1} and "type" in manifest["entries"][0]["style"]
    assert m1["cases"]["3"]["n_pairs"] == 40 and m1["case_source"] == "labels"
    assert m1["n_faces_embedded"] == 80
    # the same seed plans the same manifest; the manifest rebuilds the same pixels, hence numbers
    assert plan_masks([a for a, _, _ in tiny["rows"]], [b for _, b, _ in tiny["rows"]], "both", 7) == manifest
    r = run(*base, "--mask-manifest", tmp_path / "m1" / "mask_manifest.json", "--out", tmp_path / "m3")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "m3" / "results.json").read_text())
    assert (res["accuracy"], res["auc"], res["fold_thresholds"]) == (
        m1["accuracy"], m1["auc"], m1["fold_thresholds"])
    # a different seed is a different set; one-side masking makes Case 2
    r = run(*base, "--mask-pairs", "one", "--seed", "8", "--out", tmp_path / "one")
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["cases"]["2"]["n_pairs"] == 40 and one["n_faces_embedded"] < 80
    assert run(*base, "--out", tmp_path / "c", "--cache", tiny["cache"]).exit_code == 0
    clean = json.loads((tmp_path / "c" / "results.json").read_text())
    assert m1["auc"] <= clean["auc"]  # masks cost the plain model something


def test_bfm_pack_is_routed_by_its_classifier(tiny, tmp_path):
    from bfm_inference_helpers import make_export

    from insightface_bfm.zoo.packs import build_pack

    make_export(tmp_path / "export", tiny["model"], classifier_mode="darkness")
    build_pack(tmp_path / "export", tmp_path / "pack")
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tmp_path / "pack",
            "--mask-pairs", "one", "--mask-types", "dark", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["routed"] and res["case_source"] == "classifier"
    # recount the cases with the stand-in classifier's rule (lower face darker than -0.2 in [-1, 1])
    from insightface_bfm.evaluation.masked_pairs import render

    manifest = json.loads((tmp_path / "o" / "mask_manifest.json").read_text())

    def dark(img):
        return (img[64:].astype(np.float64)[..., ::-1] - 127.5).mean() / 127.5 < -0.2

    expected = {}
    for k, (a, b, _) in enumerate(tiny["rows"]):
        left = cv2.imread(str(tiny["lfw"] / a))
        right = render(cv2.imread(str(tiny["lfw"] / b)), manifest["entries"][k], manifest["seed"])
        case = str(1 + dark(left) + dark(right))
        expected[case] = expected.get(case, 0) + 1
    assert {c: v["n_pairs"] for c, v in res["cases"].items()} == expected
    assert expected.get("2", 0) >= 20  # dark masks on the second faces are mostly found
    assert "| 2: one masked | classifier |" in (tmp_path / "o" / "results.md").read_text()
    # the set's own labels can be asked for instead
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tmp_path / "pack",
            "--mask-pairs", "one", "--mask-types", "dark", "--cases", "labels", "--out", tmp_path / "l",
            "--quiet")
    res = json.loads((tmp_path / "l" / "results.json").read_text())
    assert res["case_source"] == "labels" and list(res["cases"]) == ["2"]
    # one threshold per extractor: the same pairs and distances, E_F's and E_P's thresholds
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tmp_path / "pack",
            "--mask-pairs", "one", "--mask-types", "dark", "--thresholds", "per_extractor",
            "--out", tmp_path / "p", "--quiet")
    assert r.exit_code == 0, r.output
    per = json.loads((tmp_path / "p" / "results.json").read_text())
    one = json.loads((tmp_path / "o" / "results.json").read_text())
    assert (per["threshold_rule"], one["threshold_rule"]) == ("per_extractor", "one")
    assert len(per["fold_thresholds_partial"]) == 10 and "fold_thresholds_partial" not in one
    # written as the 0.01 steps they are (no 1.6400000000000001)
    assert all(t == float(f"{t:.2f}") for t in per["fold_thresholds"] + per["fold_thresholds_partial"])
    assert per["auc"] == one["auc"]  # the ROC is the routed distances' either way
    assert "one threshold per extractor" in (tmp_path / "p" / "results.md").read_text()


def test_pair_rule_matches_matching_module():
    rng = np.random.default_rng(0)
    n = 6
    emb = {"full": rng.normal(size=(n, 4)), "partial": rng.normal(size=(n, 4)),
           "mask_score": np.array([0.1, 0.9, 0.2, 0.7, 0.5, 0.49])}
    left, right = np.array([0, 0, 1, 2, 4, 5]), np.array([2, 1, 3, 5, 0, 3])
    a, b, cases = pair_embeddings(emb, left, right, 0.5)
    for k, (i, j) in enumerate(zip(left, right)):
        mi, mj = emb["mask_score"][i] >= 0.5, emb["mask_score"][j] >= 0.5
        which = pair_extractor(mi, mj)
        assert np.array_equal(a[k], emb[which][i]) and np.array_equal(b[k], emb[which][j])
        assert cases[k] == pair_case(mi, mj)


def test_user_errors_exit_2(tiny, tmp_path):
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tmp_path / "nothing")
    assert r.exit_code == 2 and "Error:" in r.output and "no such model" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("left,right,same\nNobody/x.jpg,Nobody/y.jpg,1\n" * 12)
    r = run("eval", bad, "--images", tiny["lfw"], "--model", tiny["model"], "--quiet")
    assert r.exit_code == 2 and "Nobody/x.jpg" in r.output
    r = run("eval", tiny["dir"] / "pairs.csv", "--images", tiny["lfw"], "--model", tiny["model"],
            "--cases", "classifier", "--quiet")
    assert r.exit_code == 2 and "no mask classifier" in r.output


def test_align_command(tmp_path):
    from conftest import shared_path

    raw = shared_path("data", "lfw_raw")
    src = tmp_path / "src" / "Al_Pacino"
    src.mkdir(parents=True)
    for name in ("Al_Pacino_0001.jpg", "Al_Pacino_0002.jpg"):
        shutil.copyfile(raw / "Al_Pacino" / name, src / name)
    scrfd = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    args = ["align", tmp_path / "src", tmp_path / "dst", "--detector", scrfd, "--det-size", "320",
            "--policy", "center", "--quiet"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "2 aligned, 0 already there, 0 missed" in r.output
    assert cv2.imread(str(tmp_path / "dst" / "Al_Pacino" / "Al_Pacino_0001.jpg")).shape == (112, 112, 3)
    assert "0 aligned, 2 already there" in run(*args).output
    r = run("align", tmp_path / "src", tmp_path / "dst2")
    assert r.exit_code == 2 and "exactly one" in r.output


def test_checkpoint_is_evaluated_through_torch(tiny, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: one thread is faster than two contending
    try:
        _checkpoint_checks(torch, tiny, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _checkpoint_checks(torch, tiny, tmp_path):
    import yaml

    from insightface_bfm.evaluation.embedders import open_embedder
    from insightface_bfm.imaging import to_network_input
    from insightface_bfm.train.checkpoint import save_checkpoint
    from insightface_bfm.train.model import BFMModel

    recipe = {"mode": "bfm", "model": {"backbone": "mbf", "embedding_size": 64},
              "data": {"path": "synthetic:10:2"}}
    model = BFMModel(recipe, num_classes=10).eval()
    save_checkpoint(tmp_path / "run", 3, model.state_dict(), {"step": 3}, yaml.safe_dump(recipe))
    embedder = open_embedder(tmp_path / "run", flip=True)
    assert embedder.routed and type(embedder).__name__ == "CheckpointEmbedder"
    crops = np.stack([cv2.imread(str(tiny["lfw"] / a)) for a, _, _ in tiny["rows"][:2]])
    out = embedder.embed(crops)
    with torch.no_grad():
        x = torch.from_numpy(to_network_input(crops))
        xf = torch.from_numpy(to_network_input(np.ascontiguousarray(crops[:, :, ::-1])))
        assert np.allclose(out["full"], (model.full(x) + model.full(xf)).numpy(), atol=1e-4)
        assert np.allclose(out["partial"], (model.partial(x) + model.partial(xf)).numpy(), atol=1e-4)
        assert np.allclose(out["mask_score"], model.mask_probability(x).numpy(), atol=1e-5)
    small = tmp_path / "small.csv"
    small.write_text("\n".join((tiny["dir"] / "pairs.csv").read_text().splitlines()[:5]) + "\n")
    r = run("eval", small, "--images", tiny["lfw"], "--model", tmp_path / "run", "--folds", "2",
            "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["n_pairs"] == 4 and res["routed"] and res["case_source"] == "classifier"
    assert "checkpoint" in res["model_description"]


def test_onnx_evaluation_never_imports_torch(tiny, tmp_path):
    import subprocess
    import sys

    small = tmp_path / "small.csv"
    small.write_text("\n".join((tiny["dir"] / "pairs.csv").read_text().splitlines()[:5]) + "\n")
    code = (
        "import sys\n"
        "from insightface_bfm.cli import main\n"
        f"args = ['eval', {str(small)!r}, '--images', {str(tiny['lfw'])!r},\n"
        f"        '--model', {str(tiny['model'])!r}, '--folds', '2', '--mask-pairs', 'one', '--quiet']\n"
        "try:\n"
        "    main.main(args=args, standalone_mode=False)\n"
        "finally:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one masked" in done.stdout
