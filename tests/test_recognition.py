"""``bfm analyze``, ``bfm compare``, ``bfm gallery`` and the labelled pictures, on real photos.

The pack: the shared SCRFD, the shared MobileFaceNet as E_F and (negated) as E_P, and the
"darkness" stand-in classifier (a dark lower face = masked; see bfm_inference_helpers), so the
routing is visible with dark masks. Real-pack numbers are in the README (not CI: no pack there).
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import make_standin_pack, one_line_error
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.drawing import ROUTE_COLOURS
from insightface_bfm.matching import Gallery

THRESHOLD = 1.2  # squared L2; MobileFaceNet's LFW threshold is about 1.2-1.4
THRESHOLD_PARTIAL = 1.3  # E_P's own (the pack's verification_distance_partial)


def bfm(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    from conftest import shared_path

    rec = shared_path("models", "mobilefacenet_128.onnx")
    det = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    base = tmp_path_factory.mktemp("recognition")
    make_standin_pack(base / "pack", rec, det, verification_distance=THRESHOLD,
                      verification_distance_partial=THRESHOLD_PARTIAL)
    return base / "pack"


@pytest.fixture(scope="module")
def t1():
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


def _colour_pixels(img, colour, tol=30):
    return int(np.all(np.abs(img.astype(int) - np.array(colour)) <= tol, axis=-1).sum())


def test_analyze_t1_then_its_masked_copy(pack, t1, tmp_path):
    res = bfm("analyze", t1, "--pack", pack, "--json", tmp_path / "a.jsonl", "--draw", tmp_path / "draw")
    assert res.exit_code == 0, res.output
    assert f"{t1}: 6 faces" in res.output and res.output.count(" unmasked ") == 6
    (record,) = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert record["image"] == str(t1) and len(record["faces"]) == 6
    for face in record["faces"]:
        assert set(face) == {"bbox", "det_score", "masked", "mask_score", "extractor"}
        assert len(face["bbox"]) == 4 and face["det_score"] > 0.5
        assert face["masked"] is False and face["extractor"] == "full" and face["mask_score"] < 0.5
    plain = cv2.imread(str(tmp_path / "draw" / "t1.jpg"))
    assert _colour_pixels(plain, ROUTE_COLOURS["full"]) > 2000
    assert _colour_pixels(plain, ROUTE_COLOURS["partial"]) < 200

    # a masked copy of the single file (dark masks: what the stand-in classifier sees)
    res = bfm("mask", t1, tmp_path / "masked", "--raw", "--detector", pack, "--types", "dark", "--quiet")
    assert res.exit_code == 0, res.output
    masked = tmp_path / "masked" / "t1.jpg"
    res = bfm("analyze", masked, "--pack", pack, "--json", tmp_path / "m.jsonl",
              "--draw", tmp_path / "draw_m", "--embedding")
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(record["faces"]) == 6
    assert all(f["masked"] and f["extractor"] == "partial" for f in record["faces"])
    assert all(len(f["embedding"]) == 128 for f in record["faces"])
    drawn = cv2.imread(str(tmp_path / "draw_m" / "t1.jpg"))
    assert _colour_pixels(drawn, ROUTE_COLOURS["partial"]) > 2000
    assert _colour_pixels(drawn, ROUTE_COLOURS["full"]) < 200


def test_draw_on_library_and_cli_agree(pack, t1, tmp_path):
    from insightface_bfm import FaceAnalysis

    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    img = cv2.imread(str(t1))
    faces = app.get(img)
    picture = app.draw_on(img, faces)
    res = bfm("analyze", t1, "--pack", pack, "--draw", tmp_path / "d", "--quiet")
    assert res.exit_code == 0, res.output
    from insightface_bfm.imaging import encode_image

    # the CLI writes exactly the library's picture (JPEG-encoded the same way)
    assert (tmp_path / "d" / "t1.jpg").read_bytes() == encode_image(picture, ".jpg")
    # faces C has not seen keep insightface's plain drawing (red box), no route colour
    bare = [{k: f[k] for k in ("bbox", "kps", "det_score")} for f in faces]
    from insightface.app.common import Face

    plain = app.draw_on(img, [Face(**b) for b in bare])
    green = ROUTE_COLOURS["full"]
    assert _colour_pixels(plain, green, tol=10) < _colour_pixels(picture, green, tol=10) / 10


def test_analyze_inputs_and_errors(pack, tmp_path, shared):
    lfw = shared("data", "lfw112")
    crops = [lfw / "Al_Pacino" / "Al_Pacino_0001.jpg", lfw / "Al_Pacino" / "Al_Pacino_0002.jpg"]
    res = bfm("analyze", "-", "--pack", pack, "--aligned", "--json", tmp_path / "s.jsonl", "--quiet",
              input="\n".join(map(str, crops)))
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == list(map(str, crops))
    assert all(len(r["faces"]) == 1 and r["faces"][0]["bbox"] is None for r in records)

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    one_line_error(bfm("analyze", blank, "--pack", pack), "blank.png", "no face found")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    one_line_error(bfm("analyze", broken, "--pack", pack), "broken.jpg", "corrupt")
    one_line_error(bfm("analyze", tmp_path / "absent.jpg", "--pack", pack), "absent.jpg", "no such file")
    one_line_error(bfm("analyze", blank, "--pack", tmp_path / "nopack"), "nopack")
    one_line_error(bfm("analyze", blank, "--pack", pack, "--aligned"), "blank.png", "112x112")
    # inside a folder, a broken image is skipped and a faceless one answered with no faces
    folder = tmp_path / "folder"
    folder.mkdir()
    raw = shared("data", "lfw_raw", "Al_Pacino", "Al_Pacino_0001.jpg")
    for p in (blank, broken, raw):
        (folder / p.name).write_bytes(p.read_bytes())
    res = bfm("analyze", folder, "--pack", pack, "--json", tmp_path / "f.jsonl")
    assert res.exit_code == 0, res.output
    assert "2 images" in res.output and "1 without a face" in res.output and "1 unreadable" in res.output


def test_compare_same_different_masked_and_errors(pack, tmp_path, shared):
    lfw = shared("data", "lfw112")
    a1, a2 = (lfw / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 2))
    b = lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    res = bfm("compare", a1, a2, "--pack", pack, "--aligned", "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert set(r) >= {"case", "extractor", "similarity", "distance", "threshold", "same"}
    assert (r["case"], r["extractor"], r["same"], r["threshold"]) == (1, "full", True, THRESHOLD)
    assert r["distance"] == pytest.approx(2 - 2 * r["similarity"], abs=1e-5)
    res = bfm("compare", a1, b, "--pack", pack, "--aligned")
    assert res.exit_code == 1 and "different people" in res.output, res.output
    # one face masked (a dark mask, which the stand-in C sees): case 2 through E_P
    res = bfm("mask", a2, tmp_path / "m", "--types", "dark", "--quiet")
    assert res.exit_code == 0, res.output
    res = bfm("compare", a1, tmp_path / "m" / a2.name, "--pack", pack, "--aligned", "--json")
    r = json.loads(res.output)
    assert (r["case"], r["extractor"]) == (2, "partial") and r["face_b"]["masked"] is True
    # E_P's pairs are held against E_P's own threshold
    assert r["threshold"] == THRESHOLD_PARTIAL and r["same"] == (r["distance"] <= THRESHOLD_PARTIAL)
    assert res.exit_code == (0 if r["same"] else 1)
    # --threshold decides; raw photos go through the detector
    raw = shared("data", "lfw_raw", "Al_Pacino", "Al_Pacino_0001.jpg")
    res = bfm("compare", raw, raw, "--pack", pack, "--threshold", "0.01")
    assert res.exit_code == 0 and "same person" in res.output, res.output
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    one_line_error(bfm("compare", raw, blank, "--pack", pack), "blank.png", "no face found")
    one_line_error(bfm("compare", raw, tmp_path / "absent.jpg", "--pack", pack), "absent.jpg")


def _lfw_split(lfw, out, n=50):
    """The first ``n`` LFW people with two photos: the first enrolled, the second a probe."""
    people = [d for d in sorted(lfw.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2][:n]
    for d in people:
        first, second = sorted(d.glob("*.jpg"))[:2]
        for kind, img in (("enrol", first), ("probe", second)):
            (out / kind / d.name).mkdir(parents=True, exist_ok=True)
            (out / kind / d.name / img.name).symlink_to(img)
    return out / "enrol", out / "probe"


def _top1(path):
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    hits = [r["faces"][0]["matches"][0]["identity"] == Path(r["image"]).parent.name for r in records]
    return len(records), float(np.mean(hits)), records


def test_gallery_lfw_50_identities_top1(pack, tmp_path, shared):
    enrol_dir, probe_dir = _lfw_split(shared("data", "lfw112"), tmp_path / "lfw")
    g = tmp_path / "g.npz"
    res = bfm("gallery", "enrol", g, enrol_dir, "--pack", pack, "--aligned", "--quiet")
    assert res.exit_code == 0 and "50 enrolled" in res.output, res.output
    # idempotent: a rerun, or the same image under another name, adds nothing
    (tmp_path / "again").mkdir()
    first = sorted(enrol_dir.rglob("*.jpg"))[0]
    (tmp_path / "again" / "Someone_Else.jpg").write_bytes(first.read_bytes())
    res = bfm("gallery", "enrol", g, enrol_dir, "--pack", pack, "--aligned", "--quiet")
    assert "0 enrolled, 50 already there" in res.output, res.output
    res = bfm("gallery", "enrol", g, tmp_path / "again", "--pack", pack, "--aligned", "--quiet")
    assert "0 enrolled, 1 already there" in res.output and "50 entries of 50 identities" in res.output
    assert not list(tmp_path.glob(".*"))  # no lock or temporary file left beside the gallery

    res = bfm("gallery", "search", g, probe_dir, "--pack", pack, "--aligned", "-k", "3", "--quiet",
              "--json", tmp_path / "s.jsonl", "--draw", tmp_path / "drawn")
    assert res.exit_code == 0, res.output
    n, top1, records = _top1(tmp_path / "s.jsonl")
    face = records[0]["faces"][0]
    assert set(face) >= {"bbox", "det_score", "masked", "mask_score", "extractor", "identity", "matches"}
    assert len(face["matches"]) == 3
    assert set(face["matches"][0]) == {"identity", "similarity", "distance", "extractor"}
    sims = [m["similarity"] for m in face["matches"]]
    assert sims == sorted(sims, reverse=True)
    assert n == 50 and top1 >= 0.98  # measured: 50/50
    assert len(list((tmp_path / "drawn").rglob("*.jpg"))) == 50
    # masked copies of the probes (all five mask types, seed 0)
    res = bfm("mask", probe_dir, tmp_path / "probe_masked", "--quiet")
    assert res.exit_code == 0, res.output
    res = bfm("gallery", "search", g, tmp_path / "probe_masked", "--pack", pack, "--aligned", "--quiet",
              "--json", tmp_path / "m.jsonl")
    n, top1_masked, records = _top1(tmp_path / "m.jsonl")
    assert n == 50 and top1_masked >= 0.80  # measured: 42/50 with this stand-in pack
    for record in records:  # known when the best hit is within the threshold of its extractor
        best = record["faces"][0]["matches"][0]
        limit = THRESHOLD_PARTIAL if best["extractor"] == "partial" else THRESHOLD
        assert (record["faces"][0]["identity"] != "unknown") == (best["distance"] <= limit)
    assert "partial" in {r["faces"][0]["matches"][0]["extractor"] for r in records}
    # under a strict threshold the answer is "unknown", the matches stay
    res = bfm("gallery", "search", g, sorted(probe_dir.rglob("*.jpg"))[0], "--pack", pack, "--aligned",
              "--threshold", "0.0001", "--quiet", "--json", tmp_path / "u.jsonl")
    (record,) = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert record["faces"][0]["identity"] == "unknown" and record["faces"][0]["matches"]

    res = bfm("gallery", "list", g, "--json")
    info = json.loads(res.output)
    assert info["entries"] == 50 and len(info["identities"]) == 50 and info["embedding_size"] == 128
    name = sorted(info["identities"])[0]
    res = bfm("gallery", "remove", g, name)
    assert res.exit_code == 0 and f"removed {name}: 1 entry" in res.output
    assert name not in json.loads(bfm("gallery", "list", g, "--json").output)["identities"]
    one_line_error(bfm("gallery", "remove", g, name), name, "no identity")


def test_gallery_bad_input(pack, tmp_path, shared):
    lfw = shared("data", "lfw112")
    crop = lfw / "Al_Pacino" / "Al_Pacino_0001.jpg"
    one_line_error(bfm("gallery", "search", tmp_path / "none.npz", crop, "--pack", pack, "--aligned"),
                   "none.npz", "not found")
    one_line_error(bfm("gallery", "list", tmp_path / "none.npz"), "none.npz", "not found")
    wrong = Gallery()
    wrong.enrol_embeddings(["x"], np.ones((1, 64)), np.ones((1, 64)), [False])
    wrong.save(tmp_path / "wrong.npz")
    one_line_error(bfm("gallery", "search", tmp_path / "wrong.npz", crop, "--pack", pack, "--aligned"),
                   "wrong.npz", "64-D", "128-D")
    one_line_error(bfm("gallery", "enrol", tmp_path / "wrong.npz", crop, "--pack", pack, "--aligned"),
                   "wrong.npz", "64-D")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    one_line_error(bfm("gallery", "list", tmp_path / "junk.npz"), "junk.npz", "not a gallery")
    # a gallery enrolled by another pack (other weights, same size) is refused
    other = Gallery(128)
    other.info["pack"] = {"name": "other", "embedding_size": 128, "full_sha256": "0" * 64,
                          "partial_sha256": "1" * 64}
    other.enrol_embeddings(["x"], np.ones((1, 128)), np.ones((1, 128)), [False])
    other.save(tmp_path / "other.npz")
    one_line_error(bfm("gallery", "search", tmp_path / "other.npz", crop, "--pack", pack, "--aligned"),
                   "other.npz", "'other'")
    one_line_error(bfm("gallery", "enrol", tmp_path / "g.npz", tmp_path / "missing_dir", "--pack", pack),
                   "missing_dir")
