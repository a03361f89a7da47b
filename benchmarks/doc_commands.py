"""Run the slow code blocks of README.md and docs/ as written, and time them.

The test suite runs every quick block (``tests/test_docs.py``); blocks whose first line is
``# slow: WHY`` (training runs, the pack build) are run here, in the same kind of sandbox
(``tests/doc_blocks.py``) but from a fresh ``git clone`` of this repository with its own virtual
environment, so ``pip install -e .`` and ``bfm-train recipes/...`` run as a new user's would.
``--gpu`` adds the blocks marked ``# needs: GPU`` (on a machine with one).

    python benchmarks/doc_commands.py --list                 # what would run
    python benchmarks/doc_commands.py --match quickstart     # the blocks whose text has 'quickstart'
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from doc_blocks import REPO, all_blocks, make_sandbox, run_block  # noqa: E402

SHARED = REPO.parent / "shared"


def selected(gpu: bool, match: str | None):
    for block in all_blocks():
        kind, what = block.marker
        if kind == "slow" or (gpu and kind == "needs" and what.startswith("GPU")):
            if match is None or match in block.code or match in block.page:
                yield block


def fresh_clone_sandbox(base: Path):
    """A sandbox whose clone is a real ``git clone`` with its own venv first on PATH."""
    cwd, env = make_sandbox(base, SHARED)
    clone = base / "fresh"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(env, PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv))
    # installed up front as the README says, so that any selection of blocks (--match) finds it
    subprocess.run(["bash", "-c", 'pip install -q torch==2.13.0 && pip install -q -e ".[train,dev]"'],
                   cwd=clone, env=env, check=True)
    env.pop("PYTHONPATH", None)  # the clone's own install, not this repository's
    (clone / "t1.jpg").write_bytes((cwd / "t1.jpg").read_bytes())  # ../shared is the sandbox's too
    return clone, env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="List the blocks that would run, and stop.")
    p.add_argument("--gpu", action="store_true", help="Also run the blocks marked '# needs: GPU'.")
    p.add_argument("--match", help="Only blocks whose code or page contains this text.")
    args = p.parse_args(argv)
    blocks = list(selected(args.gpu, args.match))
    if args.list or not blocks:
        for b in blocks:
            print(f"{b.where}: {b.marker[1]}")
        print(f"{len(blocks)} block(s)")
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bfm_docs_") as tmp:
        cwd, env = fresh_clone_sandbox(Path(tmp))
        for b in blocks:
            t = time.perf_counter()
            res = run_block(b, cwd, env, timeout=None)
            took = time.perf_counter() - t
            print(f"{b.where}: rc {res.returncode} in {took:.0f} s  ({b.marker[1]})")
            tail = (res.stdout + res.stderr).strip().splitlines()[-25:]
            print("    " + "\n    ".join(tail))
            failed += res.returncode != 0
    print(f"{len(blocks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
