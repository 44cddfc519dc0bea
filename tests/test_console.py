"""The `trainer` console script (`trainer train cfg.yml`, one subcommand per command) and how every
command ends when its reader closes the pipe (`| head -1`): quietly, status 141."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_command, toy_config, write_yaml
from trainer.cli.main import COMMANDS
from trainer.cli.main import main as console


def test_every_command_module_is_a_subcommand() -> None:
    modules = {p.stem for p in (REPO / "trainer" / "cli").glob("*.py")} - {"__init__", "common", "main"}
    assert set(COMMANDS) == modules


def test_installed_script_runs_the_same_command(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    script = shutil.which("trainer")
    assert script, "the console script is installed with the package (pip install -e .)"
    cfg = write_yaml(tmp_path / "cfg.yml", toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out"))
    done = subprocess.run([script, "validate", str(cfg)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == run_command("validate", cfg).stdout  # the same report as python -m
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "trainer 0.1.0"


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        console(["--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert all(f"  {name} " in help_text for name in COMMANDS)
    with pytest.raises(SystemExit) as stop:
        console([])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("usage: trainer COMMAND")
    with pytest.raises(SystemExit) as stop:
        console(["valdate", "cfg.yml"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("trainer: unknown command 'valdate' (did you mean 'validate'?)")


@pytest.mark.parametrize("command", [["trainer.cli.plugins"], ["trainer.cli.schema", "--builtin"]])
def test_a_closed_pipe_ends_a_command_quietly(command: list[str]) -> None:
    """The reader is gone before the command writes (as `| head -1` leaves it): exit 141, no
    traceback and no 'Exception ignored' at interpreter exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
