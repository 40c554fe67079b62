import subprocess
import sys

from click.testing import CliRunner

from krewe import __version__
from krewe.cli import main


def test_help_and_version() -> None:
    runner = CliRunner()
    assert "krewe" in runner.invoke(main, ["--help"]).output
    assert runner.invoke(main, ["--version"]).output == f"krewe, version {__version__}\n"


def test_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "krewe", "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and __version__ in done.stdout
