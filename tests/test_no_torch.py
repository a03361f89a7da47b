"""An inference-only install (no torch): training commands answer --help and otherwise fail with one
line naming the [train] extra, never a traceback.

Each command runs in a fresh interpreter whose import system cannot find torch or safetensors (a
meta-path finder answering ModuleNotFoundError for them, as `import torch` does where it is not
installed), so the code paths are those of a venv without the extra.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCK = """
import sys
class NoTraining:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "safetensors"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoTraining())
"""


def run(entry: str, args: list[str]):
    code = BLOCK + f"""
from insightface_bfm.cli import {entry}
sys.argv = [{entry!r}] + {args!r}
{entry}() if {entry!r} == "train_main" else {entry}(prog_name="bfm")
assert "torch" not in sys.modules
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notorch")
    (tmp / "run").mkdir()
    (tmp / "faces" / "a").mkdir(parents=True)
    (tmp / "base.onnx").write_bytes(b"x")
    return tmp


def commands(tmp):
    return {
        "bfm-train": ("train_main", ["recipes/quickstart.yaml"]),
        "bfm train": ("main", ["train", "recipes/quickstart.yaml"]),
        "bfm export": ("main", ["export", str(tmp / "run"), str(tmp / "out")]),
        "bfm models build": ("main", ["models", "build", "p", "--faces", str(tmp / "faces"), "--base",
                                      str(tmp / "base.onnx"), "--detector", str(tmp / "base.onnx")]),
    }


@pytest.mark.parametrize("name", ["bfm-train", "bfm train", "bfm export", "bfm models build"])
def test_training_commands_without_torch(name, places):
    entry, args = commands(places)[name]
    r = run(entry, args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f'Error: {name} needs the training extra (torch is not installed): '
                     'pip install "insightface-bfm[train]" (in a clone of the repository: '
                     'pip install -e ".[train]")'], r.stderr
    assert "Traceback" not in r.stderr + r.stdout

    h = run(entry, [*args[: 2 if name == "bfm models build" else 1], "--help"])
    assert h.returncode == 0 and "Usage:" in h.stdout and "Traceback" not in h.stderr, h.stderr


def test_evaluating_a_checkpoint_without_torch_names_the_extra(places):
    """`bfm eval --model RUN_DIR` (an inference command) needs torch only for a training checkpoint."""
    import cv2
    import numpy as np

    cv2.imwrite(str(places / "faces" / "a" / "1.jpg"), np.zeros((112, 112, 3), np.uint8))
    pairs = places / "faces" / "pairs.csv"
    pairs.write_text("left,right,same\na/1.jpg,a/1.jpg,1\n")
    r = run("main", ["eval", str(pairs), "--model", str(places / "run")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "needs the [train] extra" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert 'pip install -e ".[train]"' in r.stderr  # the hint for a clone too


def test_serve_is_torch_free_and_names_its_extra(tmp_path):
    """`bfm serve` never imports torch (test_serve.py runs the whole service with torch unimportable);
    without FastAPI it fails with one line naming the [serve] extra."""
    h = run("main", ["serve", "--help"])
    assert h.returncode == 0 and "--api-key" in h.stdout, h.stderr
    no_fastapi = BLOCK.replace('("torch", "safetensors")', '("torch", "safetensors", "fastapi")')
    code = no_fastapi + "from insightface_bfm.cli import main\nmain(args=['serve'], prog_name='bfm')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    expected = ('Error: bfm serve needs the serve extra (fastapi is not installed): '
                'pip install "insightface-bfm[serve]"')
    assert r.stderr.strip().splitlines() == [expected]
