"""Every subcommand of the console script builds its parser and prints --help (no entry point is untested)."""

import os
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


def test_openmp_threads_sleep_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main([])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # read by libgomp when a command imports torch
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main([])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_module_does_not_import_torch():
    code = "import sys, triflow3d.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"  # else OMP_WAIT_POLICY would be set too late
