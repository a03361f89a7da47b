"""The manual runs: every code block of README.md and docs/ is executed here, run by the test or
benchmark it names, or skipped with the reason its first line gives (``doc_blocks``); the generated
references cover every recipe key and command-line option; the README stays a front door."""

from collections import defaultdict

import click
import pytest
from doc_blocks import REPO, all_blocks, block_runs, make_pack_root, make_sandbox, ran_by_file, run_blocks

BLOCKS = all_blocks()
RUN_PAGES = defaultdict(list)
for _block in BLOCKS:
    if _block.marker[0] == "run":
        RUN_PAGES[_block.page].append(_block)
MARKED = [b for b in BLOCKS if b.marker[0] != "run"]


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    from conftest import shared_path

    shared = shared_path()
    return make_pack_root(tmp_path_factory.mktemp("doc_pack"), shared)


@pytest.mark.parametrize("page", sorted(RUN_PAGES))
def test_page_blocks_run_as_written(page, pack_root, tmp_path):
    from conftest import shared_path

    cwd, env = make_sandbox(tmp_path, shared_path(), pack_root)
    for blocks in block_runs(RUN_PAGES[page]):  # consecutive python blocks in one interpreter
        res = run_blocks(blocks, cwd, env)
        where, code = ", ".join(b.where for b in blocks), "".join(b.code for b in blocks)
        assert res.returncode == 0, (
            f"{where} failed ({res.returncode}):\n{code}\n--- stdout\n{res.stdout[-2000:]}"
            f"\n--- stderr\n{res.stderr[-3000:]}")


@pytest.mark.parametrize("block", MARKED, ids=[b.where for b in MARKED])
def test_marked_block(block):
    kind, what = block.marker
    if kind == "run by":
        problem = ran_by_file(block)
        assert problem is None, problem
        return
    assert what, f"{block.where}: '# {kind}:' without a reason"
    if kind == "needs":
        assert what.startswith(("GPU", "data:")), f"{block.where}: '# needs:' is 'GPU ...' or 'data: ...'"
        pytest.skip(f"{block.where} needs {what}")
    pytest.skip(f"{block.where} is slow ({what}): run by benchmarks/doc_commands.py")


def test_every_page_is_in_the_nav():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # mkdocs' !!python tags
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    on_disk = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert on_disk == listed, (on_disk - listed, listed - on_disk)


def test_recipe_reference_describes_every_key():
    from insightface_bfm.train.recipe_docs import reference_markdown, reference_rows, undocumented_keys

    assert undocumented_keys() == []
    text = reference_markdown()
    rows = reference_rows()
    assert len(rows) > 60
    for row in rows:
        assert f"| `{row.key}` |" in text, row.key
    assert "| `optim.lr` | float | `0.1` | >= 0.0 |" in text


def _commands(command, path):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path.split()[-1])
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), f"{path} {name}")


def test_cli_reference_describes_every_command_and_option():
    from insightface_bfm.cli import main

    missing = []
    seen = 0
    for path, command in _commands(main, "bfm"):
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                seen += 1
                if not param.help:
                    missing.append(f"{path} {param.opts[0]}")
    assert seen > 50
    assert missing == [], f"commands or options without help (the generated reference needs it): {missing}"


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 15000, len(text.encode())
    first = " ".join(text.split("\n## ")[0].split())
    assert "pip install torch==2.13.0" in first and "python -m pytest" in first
    assert "Balanced Feature Matching" in first and "Basel Face Model" in first
