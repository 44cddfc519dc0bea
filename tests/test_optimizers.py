"""`optimizer:` beyond the name check: a missing library is a validate-time error naming what to
install, and the common optimizers really step on CPU. Also the start-time precision checks
(trainer.resolve.precision): what bf16, fp16 and tf32 do on a machine without a GPU.

Measured on CPU (torch 2.13 CPU build, transformers 5.23, accelerate 1.15, bitsandbytes 0.50.2):
adamw_torch, adamw_torch_fused (torch's fused CPU kernel), adafactor, sgd, adamw_8bit,
paged_adamw_8bit, paged_adamw_32bit and lion_8bit all train on CPU (bitsandbytes' CPU backend; the
paged variants fall back to ordinary CPU memory). bf16 trains under CPU autocast; fp16 would be
silently ignored by accelerate on CPU and tf32 is refused by transformers, so both are start-time
errors with the config line.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_api, run_command, toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.config.schema import OPTIMIZERS
from trainer.resolve.validate import load_config, optimizer_requirements


def config_for(model: Path, data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    settings = {"max_train_samples": 16, "max_steps": 2}
    return toy_config(model, data / "train.jsonl", out, **{**settings, **overrides})


def line_of(path: Path, key: str) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return f"{path}:{next(i for i, text in enumerate(lines, 1) if text.startswith(key + ':'))}"


# ---- missing libraries: validate-time errors ---------------------------------------------------


@pytest.fixture
def missing(monkeypatch: pytest.MonkeyPatch):
    """Make find_spec report the given top-level modules as not installed."""

    def hide(*modules: str) -> None:
        real = importlib.util.find_spec

        def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
            return None if name in modules else real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


@pytest.mark.parametrize(
    ("optimizer", "module", "install"),
    [
        ("adamw_8bit", "bitsandbytes", "pip install 'trainer[bnb]'"),
        ("paged_adamw_32bit", "bitsandbytes", "pip install 'trainer[bnb]'"),
        ("lion_8bit", "bitsandbytes", "pip install 'trainer[bnb]'"),
        ("rmsprop_bnb_8bit", "bitsandbytes", "pip install 'trainer[bnb]'"),
        ("ademamix", "bitsandbytes", "pip install 'trainer[bnb]'"),
        ("galore_adamw", "galore_torch", "pip install 'trainer[galore]'"),
        ("apollo_adamw", "apollo_torch", "pip install apollo-torch"),
        ("adalomo", "lomo_optim", "pip install lomo-optim"),
        ("schedule_free_adamw", "schedulefree", "pip install schedulefree"),
        ("grokadamw", "grokadamw", "pip install grokadamw"),
        ("adamw_torch_4bit", "torchao", "pip install 'torchao>=0.4'"),
    ],
)
def test_missing_library_is_a_validate_error_naming_the_install(
    optimizer, module, install, missing, tiny_model, toy_data, tmp_path
) -> None:
    missing(module)
    extra: dict[str, Any] = {}
    if optimizer.startswith("galore_"):
        extra["adapter"] = {"type": "galore"}
    if optimizer.startswith("apollo_"):
        extra["trainer_args"] = {"optim_target_modules": ["attn", "mlp"]}
    path = write_yaml(
        tmp_path / "cfg.yml", config_for(tiny_model, toy_data, tmp_path / "o", optimizer=optimizer, **extra)
    )
    with pytest.raises(ConfigErrors) as err:
        load_config(str(path))
    (problem,) = err.value.problems
    assert problem.render() == (
        f"{line_of(path, 'optimizer')}  optimizer: '{optimizer}' needs the '{module}' package, which is not "
        f"installed: {install}"
    )


def test_galore_8bit_names_both_packages(missing, tiny_model, toy_data, tmp_path) -> None:
    missing("bitsandbytes", "galore_torch")
    config = config_for(tiny_model, toy_data, tmp_path / "o", optimizer="galore_adamw_8bit", adapter="galore")
    with pytest.raises(ConfigErrors) as err:
        load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
    bnb, galore = sorted(p.message for p in err.value.problems if "package" in p.message)
    assert all(p.machine for p in err.value.problems)  # what is installed here, not the config
    assert "'bitsandbytes' package" in bnb and "trainer[bnb]" in bnb
    assert "'galore_torch' package" in galore and "trainer[galore]" in galore


def test_every_optimizer_name_is_classified() -> None:
    """Each of transformers' optimizers either needs only torch or names the package it needs (a new
    name in transformers that needs a library shows up here)."""
    torch_only = {
        "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
    }  # fmt: skip
    for name in OPTIMIZERS:
        needs = optimizer_requirements(name)
        assert bool(needs) == (name not in torch_only), name
        for module, install in needs:
            assert module.isidentifier() and install, name


def test_installed_libraries_pass(tiny_model, toy_data, tmp_path) -> None:
    for optimizer in ("adamw_torch", "sgd", "adamw_8bit", "paged_adamw_8bit", "lion_8bit"):
        config = config_for(tiny_model, toy_data, tmp_path / "o", optimizer=optimizer)
        load_config(str(write_yaml(tmp_path / f"{optimizer}.yml", config)))


# ---- optimizers that train on CPU -------------------------------------------------------------

CPU_OPTIMIZERS = [
    "adamw_torch", "adamw_torch_fused", "adafactor", "sgd",
    "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
]  # fmt: skip


@pytest.fixture(scope="module")
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.mark.parametrize("optimizer", CPU_OPTIMIZERS)
def test_optimizer_trains_two_steps_on_cpu(optimizer, one_thread, tiny_model, toy_data, tmp_path) -> None:
    torch = one_thread
    if "8bit" in optimizer or optimizer.startswith("paged_"):
        pytest.importorskip("bitsandbytes")
    built = run_api(tmp_path, config_for(tiny_model, toy_data, tmp_path / "out", optimizer=optimizer))

    inner = built.trainer.optimizer.optimizer
    expected = {"adafactor": "Adafactor", "sgd": "SGD", "lion_8bit": "Lion"}.get(optimizer, "AdamW")
    assert type(inner).__name__ == expected
    library = "bitsandbytes" if ("8bit" in optimizer or optimizer.startswith("paged_")) else None
    if library:
        assert type(inner).__module__.startswith("bitsandbytes")
    if optimizer == "adamw_torch_fused":
        assert inner.defaults["fused"] is True  # torch's fused AdamW has a CPU kernel
    q_proj = dict(built.trainer.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    state = inner.state[q_proj]
    if optimizer == "sgd":
        assert not any(torch.is_tensor(v) and v.dim() for v in state.values())  # no momentum: no state
    elif library:
        dtype = torch.uint8 if "8bit" in optimizer else torch.float32
        assert state["state1"].dtype == dtype and tuple(state["state1"].shape) == (256, 256)
    else:
        assert state  # AdamW moments / Adafactor factors
    losses = [h["loss"] for h in built.trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert built.trainer.state.global_step == 2


# ---- precision at start -----------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_command("train", *args, cwd=cwd)


def test_fp16_and_tf32_on_cpu_exit_2_with_the_config_line(one_thread, tiny_model, toy_data, tmp_path) -> None:
    from trainer.resolve.precision import accelerator_type

    if accelerator_type() is not None:
        pytest.skip("documents a machine without a GPU")
    path = write_yaml(
        tmp_path / "cfg.yml", config_for(tiny_model, toy_data, tmp_path / "out", fp16=True, tf32=True)
    )
    done = cli(str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "2 config errors:"
    assert lines[1].startswith(f"  {line_of(path, 'fp16')}  fp16: fp16 mixed precision needs a GPU")
    assert "silently train in fp32" in lines[1]
    assert lines[2].startswith(f"  {line_of(path, 'tf32')}  tf32: tf32 needs an NVIDIA GPU of the Ampere")
    assert "this machine has no GPU" in lines[2]
    assert not (tmp_path / "out").exists()  # refused before output_dir was touched

    done = cli(str(tmp_path / "cfg.yml"), "fp16=false", "tf32=false", "max_steps=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


def test_bf16_on_cpu_trains_under_cpu_autocast(one_thread, tiny_model, toy_data, tmp_path) -> None:
    torch = one_thread
    from trainer.resolve.precision import accelerator_type

    if accelerator_type() is not None:
        pytest.skip("documents a machine without a GPU")
    config = config_for(tiny_model, toy_data, tmp_path / "fp32", max_steps=1)
    fp32 = run_api(tmp_path / "a", config)
    bf16 = run_api(tmp_path / "b", {**config, "bf16": True, "output_dir": str(tmp_path / "bf16")})

    accelerator = bf16.trainer.accelerator
    assert accelerator.mixed_precision == "bf16" and accelerator.native_amp  # torch.autocast("cpu", bf16)
    assert accelerator.device.type == "cpu"
    first = next(h["loss"] for h in fp32.trainer.state.log_history if "loss" in h)
    other = next(h["loss"] for h in bf16.trainer.state.log_history if "loss" in h)
    assert math.isfinite(other)
    assert other != first and abs(other - first) < 0.05  # same batch, bf16 matmuls: close, not equal
    assert next(bf16.trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32


@pytest.mark.parametrize(("major", "bf16_ok"), [(7, False), (8, True)])
def test_precision_rules_on_cuda(major, bf16_ok, tiny_model, toy_data, tmp_path) -> None:
    """The CUDA branches, on a described machine (a V100 or an A100) rather than this one."""
    from trainer.resolve.precision import Machine, check_optimizer_device, check_precision

    gpu = Machine(
        accelerator="cuda",
        cuda_gpus=1,
        capability=(major, 0),
        bf16=bf16_ok,
        tf32=major >= 8,
        gpu_name="Tesla V100" if major < 8 else "A100",
    )
    cpu = Machine(accelerator=None)
    path = write_yaml(
        tmp_path / "cfg.yml", config_for(tiny_model, toy_data, tmp_path / "o", bf16=True, tf32=True)
    )
    config = load_config(str(path), skip_machine_checks=True).config
    if bf16_ok:  # validate itself asks the described machine
        assert load_config(str(path), machine=gpu).skipped == []
    found = {p.path: p.message for p in check_precision(config, gpu)}
    if bf16_ok:
        assert found == {}
    else:
        assert set(found) == {("bf16",), ("tf32",)}
        assert "Tesla V100 (compute capability 7.0)" in found[("bf16",)]
        assert "compute capability 8.0+" in found[("tf32",)]
    fp16 = config.model_copy(update={"bf16": False, "tf32": False, "fp16": True})
    assert check_precision(fp16, gpu) == []
    assert [p.path for p in check_precision(fp16, cpu)] == [("fp16",)]
    assert all(p.machine for p in check_precision(fp16, cpu))
    galore8 = config.model_copy(update={"optimizer": "galore_adamw_8bit"})
    assert check_optimizer_device(galore8, gpu) == []
    assert [p.path for p in check_optimizer_device(galore8, cpu)] == [("optimizer",)]
