"""One run per output (lock), SIGTERM handled as Ctrl-C, single-file and stdin inputs of
``bfm mask`` / ``bfm align``; locks and signals checked with real subprocesses."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest
from bfm_inference_helpers import make_face_folder
from click.testing import CliRunner

from insightface_bfm.cli import main
from insightface_bfm.data.align import align_folder
from insightface_bfm.errors import BFMError
from insightface_bfm.imaging import collect_images
from insightface_bfm.masks.masked_sets import MANIFEST, read_manifest
from insightface_bfm.runlock import LOCK_NAME, output_lock

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _faces_folder(root, n):
    return make_face_folder(root, n, identities=3, name="img{i:03d}.png")


# A run that is slow on purpose (each image waits), so a test can stop it part-way.
SLOW_MASK = textwrap.dedent("""
    import sys, time
    from insightface_bfm.masks import masked_sets
    real = masked_sets.mask_image
    def slow(*a, **k):
        time.sleep(0.1)
        return real(*a, **k)
    masked_sets.mask_image = slow
    print("started", flush=True)
    masked_sets.mask_dataset(sys.argv[1], sys.argv[2], seed=1, progress=False)
""")

SLOW_ALIGN = textwrap.dedent("""
    import sys, time
    import numpy as np
    from insightface_bfm.data.align import align_folder
    from insightface_bfm.imaging import ARCFACE_KPS
    class SlowDetector:  # finds one face at the template position of a 112x112 image
        def detect(self, img, max_num=0):
            time.sleep(0.1)
            return np.array([[0, 0, 111, 111, 0.9]], np.float32), ARCFACE_KPS[None].copy()
    print("started", flush=True)
    align_folder(sys.argv[1], sys.argv[2], SlowDetector(), progress=False)
""")


def _start(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _written(dst):
    return sorted(p for p in dst.rglob("*.png"))


@pytest.mark.parametrize("kind", ["mask", "align"])
def test_sigterm_flushes_and_leaves_no_temporary_files_then_resume(tmp_path, kind):
    src = _faces_folder(tmp_path / "src", 20)
    dst = tmp_path / "dst"
    proc = _start(SLOW_MASK if kind == "mask" else SLOW_ALIGN, src, dst)
    _wait_for(lambda: len(_written(dst)) >= 3, proc)
    # while it runs, a second run into the same DST is refused with one line naming the holder
    if kind == "mask":
        res = CliRunner().invoke(main, ["mask", str(src), str(dst)])
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()
        assert len(line) == 1 and f"pid {proc.pid}" in line[0] and "in use" in line[0], res.output
    else:
        with pytest.raises(BFMError, match=f"in use by pid {proc.pid}"):
            align_folder(src, dst, detector=None, progress=False)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Terminated" in err, err
    written = _written(dst)
    assert 3 <= len(written) < 20
    leftovers = [p.name for p in dst.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME]
    assert leftovers == [], leftovers
    if kind == "mask":  # the manifest was flushed on SIGTERM and lists every image written
        _, entries = read_manifest(dst / MANIFEST)
        assert {e["image"] for e in entries} == {p.relative_to(dst).as_posix() for p in written}
    else:
        listed = (dst / "landmarks.tsv").read_text().splitlines()[1:]
        assert {ln.split("\t")[0] for ln in listed} == {p.relative_to(dst).as_posix() for p in written}
    # a rerun resumes: the rest is done, the finished images are skipped
    proc = _start(SLOW_MASK if kind == "mask" else SLOW_ALIGN, src, dst)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(_written(dst)) == 20 and not (dst / LOCK_NAME).exists()


def test_lock_names_holder_and_is_released(tmp_path):
    dst = tmp_path / "out"
    holder = _start(
        "import sys, time\nfrom insightface_bfm.runlock import output_lock\n"
        "with output_lock(sys.argv[1], 'bfm test'):\n    print('held', flush=True); time.sleep(60)\n",
        dst,
    )
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(BFMError, match=rf"in use by pid {holder.pid} .*'bfm test'"):
            with output_lock(dst, "second"):
                pass
        # the real `bfm mask` into the held DST: one line on stderr, exit 2
        src = _faces_folder(tmp_path / "src", 1)
        res = subprocess.run([sys.executable, "-c", "from insightface_bfm.cli import main; main()", "mask",
                              str(src), str(dst)], env=_env(), capture_output=True, text=True)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert res.stderr.startswith(f"Error: {dst}: in use by pid {holder.pid}"), res.stderr
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves no stale lock: the next run takes it
    with output_lock(dst, "third") as path:
        assert json.loads(path.read_text())["command"] == "third"
    assert not (dst / LOCK_NAME).exists()


def test_mask_single_file_and_stdin_list(tmp_path):
    src = _faces_folder(tmp_path / "src", 4)
    one = src / "id0" / "img000.png"
    res = CliRunner().invoke(main, ["mask", str(one), str(tmp_path / "one"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted([MANIFEST, "img000.png"])
    listed = [src / "id0" / "img000.png", src / "id1" / "img001.png"]
    res = CliRunner().invoke(main, ["mask", "-", str(tmp_path / "list"), "--quiet"],
                             input="\n".join(map(str, listed)) + "\n")
    assert res.exit_code == 0, res.output
    # named files keep their names; two of one name keep their paths under their common folder
    written = sorted(p.relative_to(tmp_path / "list").as_posix() for p in (tmp_path / "list").rglob("*.png"))
    assert written == ["img000.png", "img001.png"]
    twin = tmp_path / "twin" / "id0" / "img000.png"
    twin.parent.mkdir(parents=True)
    twin.write_bytes(listed[0].read_bytes())
    found = collect_images(["-"], stdin=io.StringIO(f"{listed[0]}\n{twin}\n"))
    assert sorted(n.as_posix() for _, n, _ in found) == ["src/id0/img000.png", "twin/id0/img000.png"]
    res = CliRunner().invoke(main, ["mask", str(one), str(one.parent), "--quiet"])
    assert res.exit_code == 2 and "overwrite the source" in res.output
    res = CliRunner().invoke(main, ["mask", str(tmp_path / "nope.png"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "nope.png" in res.output and len(res.output.strip().splitlines()) == 1


def test_align_single_file(tmp_path, shared):
    raw = shared("data", "lfw_raw", "Al_Pacino", "Al_Pacino_0001.jpg")
    det = shared("models", "scrfd_2.5g_bnkps.onnx")
    res = CliRunner().invoke(main, ["align", str(raw), str(tmp_path / "a"), "--detector", str(det),
                                    "--det-size", "320", "--threshold", "0.3", "--quiet"])
    assert res.exit_code == 0, res.output
    crop = cv2.imread(str(tmp_path / "a" / "Al_Pacino_0001.jpg"))
    assert crop.shape == (112, 112, 3)
    res = CliRunner().invoke(main, ["align", "-", str(tmp_path / "b"), "--detector", str(det), "--quiet"],
                             input=f"{raw}\n")
    assert res.exit_code == 0 and (tmp_path / "b" / "Al_Pacino_0001.jpg").is_file(), res.output


def test_collect_images_names_and_errors(tmp_path):
    src = _faces_folder(tmp_path / "src", 3)
    (src / "notes.txt").write_text("x")
    found = collect_images([src, src / "id0" / "img000.png"])
    names = [n.as_posix() for _, n, _ in found]
    assert names == ["id0/img000.png", "id1/img001.png", "id2/img002.png"]  # the file given twice counts once
    assert [named for *_, named in found] == [False, False, False]
    with pytest.raises(BFMError, match="notes.txt: not an image"):
        collect_images([src / "notes.txt"])
    other = tmp_path / "other" / "id0"
    other.mkdir(parents=True)
    (other / "img000.png").write_bytes((src / "id0" / "img000.png").read_bytes())
    with pytest.raises(BFMError, match="both would be named"):
        collect_images([src, tmp_path / "other"])


# `bfm gallery enrol` under SIGTERM: a stand-in app (the gallery code only needs its pack's identity
# and get_aligned), slow on purpose, one crop per network run.
SLOW_ENROL = textwrap.dedent("""
    import sys, time, zlib
    from types import SimpleNamespace
    import numpy as np
    from insightface.app.common import Face
    from insightface_bfm.recognition import gallery as gallery_files

    class SlowApp:
        pack = SimpleNamespace(name="stand-in", embedding_size=8, files={"f": "1", "p": "2"},
                               full="f", partial="p")
        def get_aligned(self, crops, embed="routed"):
            time.sleep(0.1 * len(crops))
            faces = []
            for crop in crops:
                v = np.random.default_rng(zlib.crc32(crop.tobytes())).normal(size=8)
                faces.append(Face(masked=False, mask_score=0.0, extractor="full", embedding_full=v,
                                  embedding_partial=-v, embedding=v))
            return faces
    gallery_files.BATCH = 1
    gallery_files.SAVE_EVERY_S = 0.3
    print("started", flush=True)
    print(gallery_files.enrol_folder(SlowApp(), sys.argv[2], sys.argv[1], aligned=True, progress=False))
""")


def test_gallery_enrol_sigterm_saves_and_resumes(tmp_path):
    from insightface_bfm.matching import Gallery

    src = _faces_folder(tmp_path / "people", 24)
    g = tmp_path / "g.npz"
    proc = _start(SLOW_ENROL, src, g)
    _wait_for(lambda: g.exists() and len(Gallery.load(g)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Terminated" in err, err
    done = len(Gallery.load(g))
    assert 3 <= done < 24
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no lock, no temporary
    proc = _start(SLOW_ENROL, src, g)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{24 - done} enrolled, {done} already there" in out, out
    final = Gallery.load(g)
    assert len(final) == 24 and sorted(set(final.identities)) == ["id0", "id1", "id2"]
