"""Every subcommand of the console script builds its parser and prints --help (no entry point is untested)."""

import subprocess
import sys

import pytest

from triflow3d.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: triflow3d" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_module_runs():
    out = subprocess.run([sys.executable, "-m", "triflow3d", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("triflow3d ")
