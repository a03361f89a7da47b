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
