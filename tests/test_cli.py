import subprocess
import sys

from click.testing import CliRunner

from insightface_bfm.cli import COMMANDS, main


def test_help_lists_every_command_without_importing_torch():
    # `bfm --help` must stay light: the inference install has no torch.
    code = (
        "import sys; from click.testing import CliRunner; from insightface_bfm.cli import main;"
        "r = CliRunner().invoke(main, ['--help']); print(r.output);"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_every_command_resolves():
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output, result.exception)


def test_public_api_does_not_import_torch():
    code = (
        "import sys, insightface_bfm as b;"
        "[getattr(b, n) for n in ('FaceAnalysis', 'compare', 'Gallery', 'render_mask', 'open_dataset')];"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfm_train_script_usage_and_one_line_errors(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("mode: bfm\noptim: {lr_schedul: 3}\n")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-c", "from insightface_bfm.cli import train_main; train_main()", *a],
        capture_output=True, text=True,
    )
    assert "Usage: bfm-train [OPTIONS] RECIPE" in run("--help").stdout
    result = run(str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "lr_schedul" in lines[0], result.stderr
