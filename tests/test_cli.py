"""``python -m infermatrix <command>``: one entry point, every tool a subcommand, plugins add theirs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infermatrix.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_core_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert f"python -m infermatrix {name}" in capsys.readouterr().out


def test_the_listing_names_core_and_plugin_commands_and_an_unknown_one_is_refused() -> None:
    listing = subprocess.run([sys.executable, "-m", "infermatrix", "--help"], capture_output=True, text=True)
    assert listing.returncode == 0
    assert all(f"  {name} " in listing.stdout for name in COMMANDS)
    assert "  fidelity " in listing.stdout  # announced by the openvino backend, its code beside it
    unknown = subprocess.run([sys.executable, "-m", "infermatrix", "nosuch"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'nosuch'" in unknown.stderr
