"""Open-set (1:N) search: thresholds chosen at a target FPIR, stored in the pack, used by
``Gallery.identify``/``search`` and ``bfm gallery search``; ``bfm models calibrate``; ``bfm eval --open-set``.

The real-face part uses the test pack of test_recognition.py (the shared MobileFaceNet as E_F, negated
as E_P, the "darkness" stand-in classifier) on a few LFW DevTest people; the numbers of a real pack
are measured by benchmarks/open_set_lfw.py (docs/guides/open-set.md).
"""

import json
import shutil

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import make_standin_pack
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.errors import BFMError, PackError
from insightface_bfm.evaluation.open_set import (
    ImpostorMeetings,
    OpenSetScores,
    choose_search_thresholds,
    decide,
    fmr_for,
    plan_searches,
)
from insightface_bfm.matching import Gallery
from insightface_bfm.zoo.packs import PackThresholds, load_pack


def bfm(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# the commands as a user types them (PACK, FACES, ... replaced by the test's paths)
CALIBRATE = "bfm models calibrate PACK --faces FACES --fpir 0.1 --gallery-size 10 --cache CACHE"
EVAL = "bfm eval FACES --open-set --model PACK --cache CACHE --out REPORT"
SEARCH = "bfm gallery search GALLERY PHOTO --pack PACK --aligned --fpir 0.05"


def doc_command(line, **paths):
    import shlex

    return [str(paths.get(a, a)) for a in shlex.split(line)[1:]]


# -- the threshold choice, on scores made up to show it ----------------------------------------------

def _meetings(n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    return ImpostorMeetings(rng.normal(0.1, 0.1, n), rng.normal(0.1, 0.1, n // 10), rng.normal(0.15, 0.1, n))


def test_thresholds_let_the_target_false_match_rate_through_per_probe_group():
    meetings = _meetings()
    chosen = choose_search_thresholds(meetings, 0.01, 100)
    fmr = fmr_for(0.01, 100)
    assert chosen["fmr"] == fmr and fmr == pytest.approx(1.005e-4, rel=1e-3)
    t_f, t_p = 1 - chosen["distance"] / 2, 1 - chosen["distance_partial"] / 2
    masked = (meetings.masked_partial >= t_p).sum()
    bare = (meetings.bare_full >= t_f).sum() + (meetings.bare_partial >= t_p).sum()
    n_bare = meetings.bare_full.size + meetings.bare_partial.size
    assert int(fmr * meetings.masked_partial.size) - 1 <= masked <= int(fmr * meetings.masked_partial.size)
    assert int(fmr * n_bare) - 1 <= bare <= int(fmr * n_bare)
    # the curve: looser (larger distances) at higher false match rates, the chosen pair on it
    curve = chosen["curve"]
    assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in zip(curve, curve[1:]))
    assert [fmr, chosen["distance"], chosen["distance_partial"]] in curve
    assert curve[0][0] == 1e-5  # rarer rates are not measurable with 200,000 meetings


def test_fpir_model_matches_strangers_searching_a_gallery():
    """For independent impostor scores, a stranger searching N entries is named with probability
    1 - (1 - FMR)^N: strangers simulated against galleries of 100 are named at the target rate."""
    rng = np.random.default_rng(1)
    meetings = ImpostorMeetings(rng.normal(0, 0.1, 400_000), np.zeros(0), rng.normal(0, 0.1, 400_000))
    chosen = choose_search_thresholds(meetings, 0.01, 100)
    best = rng.normal(0, 0.1, (20_000, 100)).max(axis=1)  # 20,000 strangers, 100 entries each
    assert np.mean(best >= 1 - chosen["distance"] / 2) == pytest.approx(0.01, abs=0.003)


def test_too_few_meetings_for_the_rate_is_one_clear_error():
    with pytest.raises(BFMError, match="measure rates down to"):
        choose_search_thresholds(_meetings(n=50_000), 0.01, 1000)  # needs 1e-5 per meeting
    with pytest.raises(BFMError, match=r"must be in \(0, 1\)"):
        choose_search_thresholds(_meetings(), 1.5)


def test_decision_is_the_best_entry_within_its_extractors_threshold():
    # one unmasked probe: its mate at 0.5 through E_F, a non-mate at 0.6 through E_P
    s = OpenSetScores(np.array(["bare"]), np.array([True]), np.array([False]),
                      np.array([[0.5, -np.inf]]), np.array([[0.1, 0.6]]))
    assert decide(s, 0.4, 0.7) == (np.array([True]), np.array([True]))  # E_P's 0.6 is below its 0.7
    assert decide(s, 0.4, 0.55) == (np.array([True]), np.array([False]))  # now the non-mate wins
    assert decide(s, 0.55, 0.7)[0].tolist() == [False]  # nobody within: unknown


def test_plan_enrols_first_faces_and_keeps_strangers_out_of_the_gallery():
    files = {f"p{i}": [f"p{i}/{j}.jpg" for j in range(1 + i % 3)] for i in range(12)}
    folds = plan_searches(files, seed=1)
    assert len(folds) == 2
    enrolled_sets = [{g[0] for g in p.gallery} for p in folds]
    assert not enrolled_sets[0] & enrolled_sets[1] and enrolled_sets[0] | enrolled_sets[1] == set(files)
    for plan, enrolled in zip(folds, enrolled_sets):
        gallery_keys = {g[1] for g in plan.gallery}
        for identity, key, mated in plan.probes:
            assert mated == (identity in enrolled) and key not in gallery_keys
    (one,) = plan_searches(files, enrolled=5, strangers=4, max_probes=1)
    assert len(one.gallery) == 5 and all(len(files[g[0]]) >= 2 for g in one.gallery)  # searchable first
    searched = [q[0] for q in one.probes]
    assert len({q[0] for q in one.probes if not q[2]}) == 4 and len(searched) == len(set(searched)) == 9
    with pytest.raises(BFMError, match="4 strangers wanted"):
        plan_searches(files, enrolled=10, strangers=4)


def test_thresholds_for_other_fpirs_and_gallery_sizes_read_the_stored_curve():
    curve = ((1e-5, 0.7, 0.8), (1e-3, 1.1, 1.2))
    th = PackThresholds(verification_distance=1.2, search_distance=0.9, search_distance_partial=1.0,
                        search_fpir=0.01, search_gallery_size=1000, search_curve=curve)
    # FPIR 1% in a gallery of 10: 1.005e-3 per meeting -> the looser end; of 1000: 1.005e-5
    expected = 0.7 + 0.4 * np.log10(1.005) / 2
    assert th.search_distances_at(0.01, 1000)["full"] == pytest.approx(expected, abs=1e-3)
    mid = th.search_distances_at(fmr_to_fpir := 1 - (1 - 1e-4) ** 100, 100)  # 1e-4: halfway in log FMR
    assert fmr_to_fpir > 0 and mid["full"] == pytest.approx(0.9) and mid["partial"] == pytest.approx(1.0)
    clamped = []
    strict = th.search_distances_at(0.001, 10**6, clamped)  # 1e-9 per meeting: never measured
    assert clamped == [True] and strict == {"full": 0.7, "partial": 0.8}
    with pytest.raises(PackError, match="no open-set calibration"):
        PackThresholds(verification_distance=1.2).search_distances_at(0.01, 10)


def test_a_smaller_gallery_searches_with_the_stored_thresholds_a_larger_one_with_stricter():
    from types import SimpleNamespace

    from insightface_bfm.app import FaceAnalysis

    curve = ((1e-6, 0.6, 0.7), (1e-5, 0.7, 0.8), (1e-3, 1.1, 1.2))
    th = PackThresholds(verification_distance=1.2, search_distance=0.9, search_distance_partial=1.0,
                        search_fpir=0.01, search_gallery_size=1000, search_curve=curve)
    app = SimpleNamespace(pack=SimpleNamespace(name="p", thresholds=th))
    stored = th.search_distances_at()
    # the independence model is not conservative: a smaller gallery is never searched more loosely
    assert FaceAnalysis.search_thresholds(app, gallery_size=30) == stored
    assert th.search_distances_at(gallery_size=30)["full"] > stored["full"]  # what the curve alone says
    larger = FaceAnalysis.search_thresholds(app, gallery_size=100_000)
    assert larger["full"] < stored["full"] and larger["partial"] < stored["partial"]


# -- Gallery: thresholds per extractor -------------------------------------------------------------

def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_gallery_search_with_threshold_leaves_strangers_unknown():
    g = Gallery(2)
    g.enrol_embeddings(["ann", "bob"], [_unit([1, 0]), _unit([0, 1])], [_unit([1, 0]), _unit([0, 1])],
                       [False, True])
    probe = {"masked": False, "embedding_full": _unit([1, 0.3]), "embedding_partial": _unit([0.3, 1])}
    # ann met through E_F (cos 0.958), bob through E_P (masked entry; cos 0.958 too)
    assert [m.identity for m in g.search(probe, k=2)] == ["ann", "bob"]  # today's call: unchanged
    assert g.search(probe, k=2, threshold=0.05) == []  # distance 0.083 > 0.05: nobody
    hits = g.search(probe, k=2, threshold={"full": 0.1, "partial": 0.05})
    assert [(m.identity, m.extractor) for m in hits] == [("ann", "full")]
    found = g.identify(probe, {"full": 0.05, "partial": 0.1}, k=2)
    assert found.identity == "bob" and found.match.extractor == "partial" and len(found.candidates) == 2
    assert g.identify(probe, 0.01).identity is None and g.identify(probe, 0.01).match is None
    with pytest.raises(BFMError, match=r"in \[0, 4\]"):
        g.search(probe, threshold=-1)


# -- a real-face pack: calibrate, evaluate, search ------------------------------------------------

@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from conftest import shared_path

    rec = shared_path("models", "mobilefacenet_128.onnx")
    det = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    lfw = shared_path("data", "lfw112")
    base = tmp_path_factory.mktemp("open_set")
    make_standin_pack(base / "plain", rec, det, verification_distance=1.2,
                      verification_distance_partial=1.3)
    shutil.copytree(base / "plain", base / "calibrated")
    lines = [ln.split("\t") for ln in (lfw / "peopleDevTest.txt").read_text().splitlines()[1:] if ln.strip()]
    names = [n for n, k in lines if 2 <= int(k) <= 3][:12]
    faces = base / "faces"
    faces.mkdir()
    for n in names:
        (faces / n).symlink_to(lfw / n, target_is_directory=True)
    return base, faces, names


def test_calibrate_then_eval_open_set_then_search(setting):
    base, faces, names = setting
    pack, cache = base / "calibrated", base / "cache"
    weights = {f: d for f, d in load_pack(pack).files.items()}

    r = CliRunner().invoke(main, doc_command(CALIBRATE, PACK=pack, FACES=faces, CACHE=cache))
    assert r.exit_code == 0, r.output
    assert "open-set thresholds for galleries of 10 at FPIR 0.1: squared L2" in r.output
    assert "12 identities" in r.output
    loaded = load_pack(pack)  # every checksum still holds: only the manifest changed
    assert loaded.files == weights
    th = loaded.thresholds
    assert th.search_fpir == 0.1 and th.search_gallery_size == 10
    assert 0 < th.search_distance < 4 and 0 < th.search_distance_partial < 4
    cal = loaded.manifest["bfm"]["thresholds"]["search_calibration"]
    assert cal["folds"] == 2 and cal["rates_gallery_size"] == 6
    assert cal["rates"]["all"]["stranger_searches"] > 0

    # bfm eval --open-set: the same searches (seed 0, two folds) give the very rates stored above
    out = base / "report"
    r = CliRunner().invoke(main, doc_command(EVAL, PACK=pack, FACES=faces, CACHE=cache, REPORT=out))
    assert r.exit_code == 0, r.output
    assert "| open-set, stored (FPIR 0.1, N=10) |" in r.output and "| 1:1 verification |" in r.output
    results = json.loads((out / "open_set.json").read_text())
    assert results["at"]["open-set for N=6 (FPIR 0.1)"]["rates"] == cal["rates"]
    assert set(results["at"]["1:1 verification"]["rates"]) == {"bare", "masked", "all"}
    det = cv2.imread(str(out / "det.png"))
    assert det.shape == (480, 900, 3) and (det < 128).any()
    r = bfm("eval", faces / names[0] / "x.csv", "--open-set", "--model", pack)
    assert r.exit_code == 2

    # bfm gallery search: the calibrated pack answers with its open-set thresholds, silently;
    # the plain one warns in one line and keeps its 1:1 threshold
    gallery, few = base / "g.npz", base / "few_people"
    few.mkdir()
    for n in names[:3]:
        (few / n).symlink_to(faces / n, target_is_directory=True)
    r = bfm("gallery", "enrol", gallery, few, "--pack", pack, "--aligned", "--quiet")
    assert r.exit_code == 0, r.output
    probe = next((faces / names[0]).iterdir())
    for flags in ([], ["--threshold", "1.0"]):
        r = CliRunner().invoke(main, [str(a) for a in ["gallery", "search", gallery, probe, "--pack", pack,
                                                       "--aligned", *flags]])
        assert r.exit_code == 0 and "Warning:" not in r.stderr, r.output + r.stderr
    r = CliRunner().invoke(main, doc_command(SEARCH, GALLERY=gallery, PHOTO=probe, PACK=pack))
    assert r.exit_code == 0 and "Warning:" not in r.stderr and names[0] in r.stdout, r.output
    r = CliRunner().invoke(main, [str(a) for a in ["gallery", "search", gallery, probe, "--pack", pack,
                                                   "--aligned", "--fpir", "0.00001", "--quiet"]])
    assert r.exit_code == 0 and r.stderr.count("Warning:") == 1 and "strictest" in r.stderr, r.stderr
    r = CliRunner().invoke(main, [str(a) for a in ["gallery", "search", gallery, probe, "--pack",
                                                   base / "plain", "--aligned", "--quiet"]])
    assert r.exit_code == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and "no open-set thresholds" in warnings[0]
    assert "bfm models calibrate" in warnings[0]


def test_calibrate_refuses_too_few_faces_before_embedding(setting):
    base, faces, names = setting
    people = base / "few.txt"
    people.write_text("\n".join(names[:4]) + "\n")
    r = bfm("models", "calibrate", base / "plain", "--faces", faces, "--people", people, "--fpir", "0.01")
    assert r.exit_code == 2 and "impostor meetings per probe type, at least" in r.output, r.output
    assert "search_distance" not in (base / "plain" / "manifest.json").read_text()
