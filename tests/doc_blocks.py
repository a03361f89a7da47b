"""The code blocks of README.md and docs/: found, classified by their first line, and run in a sandbox.

Every ``bash``/``sh``/``console``/``python`` block is one of four kinds (its first line says which):

- no marker: run as written by ``tests/test_docs.py`` in the sandbox below (must take seconds);
- ``# slow: WHY``: run as written by ``benchmarks/doc_commands.py`` (training runs, the pack build);
- ``# run by: PATH``: the test or benchmark at PATH runs these commands (each command line appears in
  that file verbatim, or that file reads the block from its page);
- ``# needs: GPU ...`` / ``# needs: data: ...``: skipped, with that reason; a user brings it.

The sandbox looks like a user's fresh clone with a pack installed: the working folder ``clone/``
holds a link to every top-level entry of the repository and ``../shared`` points to the shared
data; ``$INSIGHTFACE_BFM_ROOT`` holds a pack named ``bfm`` (the shared SCRFD, the shared
MobileFaceNet as E_F and, negated, as E_P, and a classifier calling a dark lower face masked:
``bfm_inference_helpers``); ``$HOME`` is a temporary folder; insightface's ``t1.jpg`` is in the
working folder. The blocks of one page run in order in one sandbox; consecutive python blocks
run in one interpreter (``run_blocks``), each in a namespace of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = {"bash": "bash", "sh": "bash", "console": "bash", "shell": "bash",
             "python": "python", "py": "python"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*$")
MARKER = re.compile(r"^#\s*(?P<kind>slow|run by|needs)\s*:\s*(?P<what>.*)$")


@dataclass
class Block:
    page: str  # relative to the repository, e.g. "docs/guides/app.md"
    line: int  # 1-based line of the opening fence
    language: str  # "bash" or "python"
    code: str

    @property
    def marker(self) -> tuple[str, str]:
        """(kind, what) of the first line: ("run", "") for a block run by tests/test_docs.py."""
        first = self.code.lstrip("\n").splitlines()[0].strip() if self.code.strip() else ""
        m = MARKER.match(first)
        return (m["kind"], m["what"].strip()) if m else ("run", "")

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def command_lines(self) -> list[str]:
        """The commands of the block: continuation lines joined, comments and blank lines dropped,
        a shell command's trailing comment cut, whitespace collapsed."""
        text = self.code.replace("\\\n", " ")
        out = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if self.language == "bash":
                line = re.sub(r"\s+#\s.*$", "", line)
            out.append(" ".join(line.split()))
        return out


def doc_pages() -> list[Path]:
    return [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))


def page_blocks(page: Path) -> list[Block]:
    rel = str(page.relative_to(REPO))
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent, start = m["fence"], len(m["indent"]), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        language = LANGUAGES.get(m["lang"].lower())
        if language:
            blocks.append(Block(rel, start + 1, language, "\n".join(body) + "\n"))
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in doc_pages() for b in page_blocks(page)]


def ran_by_file(block: Block) -> str | None:
    """Why a ``# run by: PATH`` claim does not hold, or None when it does."""
    target = REPO / block.marker[1].split("::")[0].strip()
    if not target.is_file():
        return f"{block.where}: '# run by: {block.marker[1]}' names no file"
    text = " ".join(target.read_text().split())
    if block.page in text:
        return None  # the file reads the block from its page
    missing = [c for c in block.command_lines() if c not in text]
    if missing:
        return f"{block.where}: {target.relative_to(REPO)} does not contain {missing[0]!r}"
    return None


# -- the sandbox -------------------------------------------------------------------------------

def make_pack_root(root: Path, shared: Path) -> Path:
    """``root/models/bfm``: the stand-in pack of the tests, from the shared detector and recogniser."""
    sys.path.insert(0, str(REPO / "tests"))
    from bfm_inference_helpers import make_standin_pack

    make_standin_pack(root / "models" / "bfm", shared / "models" / "mobilefacenet_128.onnx",
                      shared / "models" / "scrfd_2.5g_bnkps.onnx", verification_distance=1.2,
                      verification_distance_partial=1.3)
    shutil.rmtree(root / "models" / ".bfm_export")
    return root


def make_sandbox(base: Path, shared: Path, pack_root: Path | None = None) -> tuple[Path, dict]:
    """A clone-like working folder under ``base`` and the environment to run blocks with."""
    import insightface

    clone = base / "clone"
    clone.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in {".git", "runs", "site"} and not entry.name.startswith(".venv"):
            (clone / entry.name).symlink_to(entry)
    (base / "shared").symlink_to(shared)
    shutil.copyfile(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg", clone / "t1.jpg")
    root = base / "root"
    if pack_root is not None:
        shutil.copytree(pack_root, root, symlinks=True)
    else:
        make_pack_root(root, shared)
    home = base / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), INSIGHTFACE_BFM_ROOT=str(root), PYTHONPATH=str(REPO),
               MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return clone, env


def run_block(block: Block, cwd: Path, env: dict, timeout: float | None = 120) -> subprocess.CompletedProcess:
    if block.language == "bash":
        args = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        args = ["python", "-c", block.code]  # the python first on PATH: the sandbox's
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# Runs python blocks given as JSON [[where, code], ...] in order, each in a fresh namespace, marking
# where each begins on stdout and stderr; a failing block's traceback names it (its code's filename).
_PYTHON_RUNNER = """
import json, sys
for where, code in json.loads(sys.argv[1]):
    print(f"--- {where}", flush=True)
    print(f"--- {where}", file=sys.stderr, flush=True)
    exec(compile(code, where, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
"""


def block_runs(blocks: list[Block]) -> list[list[Block]]:
    """A page's blocks in order, consecutive python blocks together: one interpreter runs them
    (each imports what it uses; a fresh interpreter per block cost seconds of imports each)."""
    runs: list[list[Block]] = []
    for block in blocks:
        if runs and block.language == "python" and runs[-1][-1].language == "python":
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs


def run_blocks(blocks: list[Block], cwd: Path, env: dict,
               timeout: float | None = 120) -> subprocess.CompletedProcess:
    """One block as ``run_block`` runs it, or several python blocks in one interpreter."""
    if len(blocks) == 1:
        return run_block(blocks[0], cwd, env, timeout)
    assert all(b.language == "python" for b in blocks), [b.where for b in blocks]
    payload = json.dumps([[b.where, b.code] for b in blocks])
    return subprocess.run(["python", "-c", _PYTHON_RUNNER, payload], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=None if timeout is None else timeout * len(blocks))
