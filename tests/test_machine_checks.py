"""Machine checks (`Problem.machine`): what the config asks of this machine — a GPU, its generation,
one process per GPU, GPU packages — apart from what is wrong with the config itself.
`validate --skip-machine-checks` turns the first kind into notes printed after the plan, for a config
written on one machine (a laptop) to train on another; every config error still fails. Plugins mark
theirs by returning them from `check_machine()`. (The GPU presets in examples/: test_examples.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_command, toy_config, write_yaml
from trainer.api import Attention, Contribution, TrainConfig
from trainer.config.errors import ConfigErrors
from trainer.resolve.precision import Machine
from trainer.resolve.registry import Entry, Registry
from trainer.resolve.validate import load_config

A100S = Machine(accelerator="cuda", cuda_gpus=2, capability=(8, 0), bf16=True, tf32=True, gpu_name="A100")
CPU = Machine(accelerator=None)


def config_file(tmp_path: Path, tiny_model: Path, toy_data: Path, **keys: Any) -> Path:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **keys)
    return write_yaml(tmp_path / "cfg.yml", config)


class NeedsGpu(Attention):
    """A third-party kernel: the config is wrong without 16-bit precision (anywhere), the machine is
    wrong without a GPU."""

    name = "needs_gpu"
    packed_inputs = "position_ids"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        return [] if config.bf16 else ["needs_gpu runs in 16-bit only: set bf16"]

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        return ["needs_gpu needs a CUDA GPU; none is visible"]

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(model_kwargs={"attn_implementation": "sdpa"})


def registry_with_needs_gpu() -> Registry:
    registry = Registry()
    for entry in Registry.discover().all_entries():
        if entry.distribution == "trainer":
            registry.add(entry)
    registry.add(Entry("attention", "needs_gpu", f"{__name__}:NeedsGpu", "gpu-plugins", "0.1"))
    return registry


def test_a_plugins_check_machine_is_a_machine_problem(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    registry = registry_with_needs_gpu()
    cfg = config_file(tmp_path, tiny_model, toy_data, attention="needs_gpu", bf16=True)
    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg), registry=registry)
    [problem] = err.value.problems
    assert (problem.path, problem.machine) == (("attention",), True)
    line = cfg.read_text(encoding="utf-8").splitlines().index("attention: needs_gpu") + 1
    assert problem.render() == f"{cfg}:{line}  attention: needs_gpu needs a CUDA GPU; none is visible"

    resolved = load_config(str(cfg), registry=registry, skip_machine_checks=True)
    assert [p.render() for p in resolved.skipped] == [problem.render()]

    # its check() is about the config: an error with or without the flag (the machine's said once)
    without_bf16 = config_file(tmp_path, tiny_model, toy_data, attention="needs_gpu")
    with pytest.raises(ConfigErrors) as err:
        load_config(str(without_bf16), registry=registry, skip_machine_checks=True)
    assert [(p.path, p.message, p.machine) for p in err.value.problems] == [
        (("attention",), "needs_gpu runs in 16-bit only: set bf16", False)
    ]


def test_the_cores_machine_checks_on_described_machines(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """One process per GPU, fp16 and CUDA-only optimizers: errors on the machine that lacks them,
    nothing on the one that has them, notes with the flag."""
    ddp = {"type": "ddp", "num_processes": 4}
    cfg = config_file(
        tmp_path,
        tiny_model,
        toy_data,
        distributed=ddp,
        fp16=True,
        optimizer="galore_adamw_8bit",
        adapter="galore",
    )
    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg), machine=A100S, skip_machine_checks=False)
    found = {p.path: p for p in err.value.problems if p.machine}
    assert (
        "4 processes per node but this machine has 2 GPU(s)"
        in found[("distributed", "num_processes")].message
    )
    assert ("fp16",) not in found and all(p.machine for p in err.value.problems if p.path == ("optimizer",))

    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg), machine=CPU)
    paths = {p.path for p in err.value.problems if p.machine}
    assert {("fp16",), ("optimizer",)} <= paths  # no GPU: fp16 and the 8-bit GaLore refused
    assert ("distributed", "num_processes") not in paths  # CPU: any number of gloo processes

    quiet = config_file(tmp_path, tiny_model, toy_data, fp16=True)
    assert load_config(str(quiet), machine=A100S).skipped == []
    skipped = load_config(str(quiet), machine=CPU, skip_machine_checks=True).skipped
    assert [(p.path, p.machine) for p in skipped] == [(("fp16",), True)]


def test_skip_flag_still_fails_config_errors(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(
        tmp_path,
        tiny_model,
        toy_data,
        fp16=True,  # a machine check here (no GPU): set aside
        warmup_ratio=0.1,  # a config error anywhere (a cross-key rule)
        warmup_steps=10,
        datasets=[{"path": str(tmp_path / "missing.jsonl"), "type": "completion"}],  # the machine's files
    )
    if Machine().accelerator is not None:
        pytest.skip("documents a machine without a GPU")
    plain = run_command("validate", cfg)
    assert plain.returncode == 2
    assert "fp16: fp16 mixed precision needs a GPU" in plain.stderr
    assert plain.stderr.startswith("(2 of the errors below are machine checks: "), plain.stderr
    assert "datasets[0].path: dataset" in plain.stderr

    skip = run_command("validate", "--skip-machine-checks", cfg)
    assert skip.returncode == 2, skip.stdout
    lines = skip.stderr.strip().splitlines()
    assert lines[0] == "1 config error:", skip.stderr  # the machine checks are not among them
    assert "warmup_steps: set warmup_ratio or warmup_steps, not both" in lines[1]
    assert "fp16" not in skip.stderr and "does not exist" not in skip.stderr

    typo = run_command("validate", "--skip-machine-checks", cfg, "learning_rat=0.1", "warmup_steps=null")
    assert typo.returncode == 2
    assert "learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)" in typo.stderr


def test_skip_flag_notes_follow_the_plan(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, attention="flash_attention_2", bf16=True)
    done = run_command("validate", cfg, "max_steps=3", "--skip-machine-checks")  # flags anywhere
    assert done.returncode == 0, done.stderr
    plan, _, notes = done.stdout.partition("skipped on this machine")
    assert ": OK" in plan and "memory per device" in plan
    if notes.startswith(": nothing"):  # a machine that runs flash-attention 2
        return
    assert notes.startswith(" (1 machine check failing here"), done.stdout
    assert notes.splitlines()[1].startswith(f"  {cfg}:")
    assert "attention: flash_attention_2" in notes.splitlines()[1]


def test_train_has_no_skip_flag(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    done = run_command("train", "--skip-machine-checks", config_file(tmp_path, tiny_model, toy_data))
    assert done.returncode == 2
    assert "--skip-machine-checks is validate's: a run trains on this machine" in done.stderr
    assert not (tmp_path / "out").exists()
