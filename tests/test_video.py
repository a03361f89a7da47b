"""``bfm analyze VIDEO``: tracks, mask state over time and identity by vote, on a real clip.

The clip is a real video written by OpenCV from two raw LFW photos: one person walks across the
picture and puts on a dark mask at frame 8 (the per-image renderer, type "dark", which the
"darkness" stand-in classifier of the test pack sees), the other stands still. The commands are
those of docs/guides/video.md, read from the page and run as written.
"""

import json
import re
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from bfm_inference_helpers import make_clip, make_standin_pack, one_line_error
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.recognition.tracking import Tracker, box_iou

DOC = Path(__file__).resolve().parents[1] / "docs" / "guides" / "video.md"
WALKER, STANDER = "Amanda_Bynes", "Bill_Sizemore"
FRAMES, MASK_FROM = 12, 8


def bfm(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A pack installed as `bfm` under a root, the clip, and photos of the two people to enrol."""
    from conftest import shared_path

    from insightface_bfm.recognition.analyze import open_app

    rec = shared_path("models", "mobilefacenet_128.onnx")
    det = shared_path("models", "scrfd_2.5g_bnkps.onnx")
    raw = shared_path("data", "lfw_raw")
    base = tmp_path_factory.mktemp("video")
    pack = make_standin_pack(base / "root" / "models" / "bfm", rec, det, verification_distance=1.2,
                             verification_distance_partial=1.3).path
    work = base / "work"
    (work / "people").mkdir(parents=True)
    for person in (WALKER, STANDER):  # the second photo of each is enrolled; the first is in the clip
        shutil.copy(raw / person / f"{person}_0002.jpg", work / "people" / f"{person}.jpg")
    app = open_app(str(pack))
    make_clip(work / "clip.mp4", raw / WALKER / f"{WALKER}_0001.jpg", raw / STANDER / f"{STANDER}_0001.jpg",
              app, frames=FRAMES, mask_from=MASK_FROM)
    return {"root": base / "root", "work": work}


def guide_commands():
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
              if b.startswith("# run by: tests/test_video.py")]
    assert blocks, "the video guide has lost its runnable block"
    return [shlex.split(line) for b in blocks for line in b.splitlines() if line.startswith("bfm ")]


def test_the_guide_on_a_real_clip(scene, monkeypatch):
    monkeypatch.chdir(scene["work"])
    monkeypatch.setenv("INSIGHTFACE_BFM_ROOT", str(scene["root"]))
    outputs = []
    for argv in guide_commands():
        res = CliRunner().invoke(main, argv[1:])
        assert res.exit_code == 0, (argv, res.output)
        outputs.append(res.output)
    assert "2 enrolled" in outputs[0]

    *frames, last = [json.loads(line) for line in Path("clip.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in frames] == list(range(0, FRAMES, 2))  # --every 2
    assert [f["time"] for f in frames] == [i / 10 for i in range(0, FRAMES, 2)]  # 10 frames/s
    summary = last["summary"]
    assert (summary["frames"], summary["analysed"], summary["every"]) == (FRAMES, FRAMES // 2, 2)
    tracks = {t["track"]: t for t in summary["tracks"]}
    assert len(tracks) == 2, summary
    # which track walks: its box moves right frame after frame
    xs = {tid: [face["bbox"][0] for f in frames for face in f["faces"] if face["track"] == tid]
          for tid in tracks}
    walker = max(xs, key=lambda tid: xs[tid][-1] - xs[tid][0])
    stander = next(tid for tid in tracks if tid != walker)
    assert len(xs[walker]) == len(xs[stander]) == FRAMES // 2  # one face per track per analysed frame
    assert xs[walker] == sorted(xs[walker]) and xs[walker][-1] - xs[walker][0] > 100
    # the mask appears at frame 8: the walker's state flips there, routed to E_P from then on
    assert tracks[walker]["mask_changes"] == [{"frame": MASK_FROM, "masked": True}]
    assert tracks[walker]["segments"] == [{"first": 0, "last": MASK_FROM - 2, "masked": False},
                                          {"first": MASK_FROM, "last": FRAMES - 2, "masked": True}]
    assert tracks[stander]["mask_changes"] == [] and tracks[stander]["masked_frames"] == 0
    for f in frames:
        (face,) = [x for x in f["faces"] if x["track"] == walker]
        assert face["masked"] == (f["frame"] >= MASK_FROM)
        assert face["extractor"] == ("partial" if f["frame"] >= MASK_FROM else "full")
        assert {"identity", "matches", "mask_score", "bbox"} <= set(face)
    # the identity by vote, from the gallery
    assert tracks[walker]["identity"] == WALKER and tracks[stander]["identity"] == STANDER
    assert tracks[stander]["votes"] == {STANDER: FRAMES // 2}
    # measured 4 of 6: the unmasked frames; the stand-in E_P puts the masked face too far ("unknown")
    assert tracks[walker]["votes"][WALKER] > FRAMES // 4
    assert f"{WALKER} (" in outputs[1] and "masked 8-10" in outputs[1]
    # the labelled video: every frame, the size of the clip
    drawn = cv2.VideoCapture("clip_labelled.mp4")
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    ok, frame = drawn.read()
    assert ok and frame.shape == (300, 640, 3)
    drawn.release()
    assert not [p.name for p in Path(".").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_video_errors_are_one_line(scene, tmp_path):
    root = scene["root"]
    one_line_error(bfm("analyze", tmp_path / "absent.mp4", "--root", root), "absent.mp4", "no such video")
    (tmp_path / "notes.mp4").write_text("not a video")
    one_line_error(bfm("analyze", tmp_path / "notes.mp4", "--root", root, "--quiet"), "notes.mp4",
                   "OpenCV cannot read")
    clip = scene["work"] / "clip.mp4"
    one_line_error(bfm("analyze", clip, "--every", "0", "--root", root), "--every 0")
    for args in (["analyze", clip, clip], ["analyze", "--camera", "0", clip],
                 ["analyze", scene["work"] / "people", "--every", "2"],
                 ["analyze", scene["work"] / "people", "--gallery", "g.npz"], ["analyze"]):
        res = bfm(*args)
        assert res.exit_code == 2 and "Error" in res.output, (args, res.output)


def test_tracker_links_by_overlap_and_by_embedding():
    """No models: boxes and vectors by hand."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 128))

    def face(x, emb, extractor="full", masked=False):
        return {"bbox": np.array([x, 10, x + 100, 130], np.float32), "embedding": emb, "extractor": extractor,
                "masked": masked, "mask_score": float(masked)}

    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    tracker = Tracker()
    first = tracker.update(0, [face(0, a), face(300, b)])
    # a small move keeps both tracks; a jump far away is linked on the embedding alone
    again = tracker.update(1, [face(20, a), face(600, b)])
    assert [t.id for t in again] == [t.id for t in first]
    # overlapping boxes but disagreeing embeddings: not the same face (a new track)
    other = tracker.update(2, [face(25, -a)])
    assert other[0].id not in {t.id for t in first}
    # a face turning masked changes extractor: linked on overlap alone, its state flips
    masked = tracker.update(3, [face(30, -a * 3, extractor="partial", masked=True)])
    assert masked[0].id in {first[0].id, other[0].id}
    track = masked[0]
    assert track.summary()["segments"][-1]["masked"] is True
    # unseen for more than max_missed analysed frames: closed; a new face then starts a new track
    for i in range(4, 16):
        tracker.update(i, [])
    assert tracker.open == [] and len(tracker.tracks()) == 3
    assert tracker.update(16, [face(0, a)])[0].id == 4
