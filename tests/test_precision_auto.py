"""`bf16: auto` and `tf32: auto` (Axolotl's meaning): accepted by validate on any machine, decided
when the run starts on the machine that trains — bf16 where a GPU computes in it, else fp32; TF32
where an Ampere-or-newer NVIDIA GPU has it — printed with the plan and recorded in
config.resolved.yml as what was used (the auto kept in a comment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_command, toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.resolve.precision import Machine, bf16_auto, decide_auto
from trainer.resolve.validate import load_config

A100 = Machine(accelerator="cuda", cuda_gpus=1, capability=(8, 0), bf16=True, tf32=True, gpu_name="A100")
V100 = Machine(
    accelerator="cuda", cuda_gpus=1, capability=(7, 0), bf16=False, tf32=False, gpu_name="Tesla V100"
)
CPU = Machine(accelerator=None)


def config_file(tmp_path: Path, tiny_model: Path, toy_data: Path, **keys: Any) -> Path:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **keys)
    return write_yaml(tmp_path / "cfg.yml", config)


def test_validate_accepts_auto_on_any_machine(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, bf16="auto", tf32="auto")
    done = run_command("validate", cfg)
    assert done.returncode == 0, done.stderr
    assert "bf16: auto, tf32: auto (decided when the run starts" in done.stdout
    resolved = load_config(str(cfg))
    assert (resolved.config.bf16, resolved.config.tf32) == ("auto", "auto")  # undecided until a run
    assert resolved.skipped == []


def test_auto_with_fp16_and_other_words_are_refused(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, bf16="auto", fp16=True)
    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg), skip_machine_checks=True)  # a config rule: the same on every machine
    [problem] = err.value.problems
    assert problem.path == ("fp16",) and not problem.machine
    assert problem.message == "set bf16: auto or fp16, not both (auto turns bf16 on where the GPU has it)"

    cfg = config_file(tmp_path, tiny_model, toy_data, bf16="maybe")
    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg))
    [problem] = err.value.problems
    assert problem.path == ("bf16",)
    assert (
        problem.message
        == "input should be a valid boolean, unable to interpret input or 'auto' (got 'maybe')"
    )


def test_the_decision_for_a_described_machine(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """The function that decides, given each machine's description (no GPU needed to test a GPU)."""
    config = load_config(str(config_file(tmp_path, tiny_model, toy_data, bf16="auto", tf32="auto"))).config
    assert bf16_auto(A100) is True
    assert bf16_auto(V100) is False and bf16_auto(CPU) is False

    on, said = decide_auto(config, A100)
    assert (on.bf16, on.tf32) == (True, True)
    assert said == {
        "bf16": "auto -> on (A100 (compute capability 8.0) computes in bf16)",
        "tf32": "auto -> on (A100 (compute capability 8.0) has TF32 matmuls)",
    }
    old, said = decide_auto(config, V100)  # Axolotl's fallback on a GPU without bf16: fp16 AMP
    assert (old.bf16, old.fp16, old.tf32) == (False, True, False)
    assert said["bf16"] == (
        "auto -> off (Tesla V100 (compute capability 7.0) has no bf16): fp16 mixed precision instead"
    )
    no_fp16 = load_config(str(config_file(tmp_path, tiny_model, toy_data, bf16="auto", fp16=False))).config
    old, said = decide_auto(no_fp16, V100)  # fp16: false written out keeps full precision
    assert (old.bf16, old.fp16) == (False, False)
    assert said["bf16"] == "auto -> off (Tesla V100 (compute capability 7.0) has no bf16): training in fp32"
    cpu, said = decide_auto(config, CPU)
    assert (cpu.bf16, cpu.tf32) == (False, False)
    assert said == {
        "bf16": "auto -> off (no GPU with bf16): training in fp32",
        "tf32": "auto -> off (no NVIDIA GPU of compute capability 8.0+)",
    }
    assert cpu.plugin("adapter") is config.plugin("adapter")  # the chosen plugins come along
    fixed = config.model_copy(update={"bf16": True, "tf32": False})
    assert decide_auto(fixed, CPU) == (fixed, {})  # nothing to decide: the config as it is


def test_cpu_run_with_auto_trains_in_fp32_and_says_so(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    if CPU.accelerator != Machine().accelerator:
        pytest.skip("documents a machine without a GPU")
    import torch

    from trainer.runtime.run import train

    cfg = config_file(tmp_path, tiny_model, toy_data, bf16="auto", tf32="auto", max_steps=2)
    lines: list[str] = []
    built = train(load_config(str(cfg)), log=lines.append)

    assert "bf16: auto -> off (no GPU with bf16): training in fp32" in lines
    assert "tf32: auto -> off (no NVIDIA GPU of compute capability 8.0+)" in lines
    assert built.args.bf16 is False and built.args.fp16 is False and not built.args.tf32
    assert built.trainer.accelerator.mixed_precision == "no"  # no autocast: fp32 throughout
    assert {p.dtype for p in built.trainer.model.parameters()} == {torch.float32}

    written = (tmp_path / "out" / "config.resolved.yml").read_text(encoding="utf-8")
    assert (
        "\nbf16: false  # auto -> off (no GPU with bf16): training in fp32 (the config says bf16: auto)\n"
    ) in written
    tf32 = (
        "tf32: false  # auto -> off (no NVIDIA GPU of compute capability 8.0+) (the config says tf32: auto)"
    )
    assert f"\n{tf32}\n" in written
    assert yaml.safe_load(written)["bf16"] is False  # what was used; the file re-runs as is
    assert load_config(str(tmp_path / "out" / "config.resolved.yml")).config.bf16 is False


def test_estimate_counts_auto_as_bf16(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    from trainer.resolve.memory import estimate

    auto = estimate(load_config(str(config_file(tmp_path, tiny_model, toy_data, bf16="auto"))))
    bf16 = estimate(load_config(str(config_file(tmp_path, tiny_model, toy_data, bf16=True))))
    assert (auto.weights, auto.activations) == (bf16.weights, bf16.activations)
    assert "bf16: auto counted as bf16 (a GPU that has it; fp32 elsewhere)" in auto.notes


def test_qlora_compute_dtype_follows_auto(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    qlora = {"type": "qlora", "r": 4, "compute_dtype": "bfloat16"}
    cfg = config_file(tmp_path, tiny_model, toy_data, bf16="auto", adapter=qlora)
    with pytest.raises(ConfigErrors) as err:
        load_config(str(cfg), skip_machine_checks=True)
    [problem] = err.value.problems
    assert problem.path == ("adapter", "compute_dtype")
    assert "bf16: auto decides the precision on the machine that trains" in problem.message
    unset = config_file(tmp_path, tiny_model, toy_data, bf16="auto", adapter={"type": "qlora", "r": 4})
    load_config(str(unset), skip_machine_checks=True)
