"""The `kernels` plugin kind and its built-in `liger` (Liger Kernel through transformers' own
`use_liger_kernel` switch): validate-time refusals on a machine that cannot run it, option errors,
the exact SFTConfig fields it contributes, discovery, the JSON Schema, and (on a CUDA GPU with
liger-kernel installed) a short bf16 run against plain PyTorch."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from plugins.kernels.liger import Liger, LigerOptions
from tests.conftest import REPO, run_command, toy_config, write_yaml
from trainer.config.schema import TrainConfig
from trainer.resolve.registry import Registry, default_registry

LIGER_INSTALLED = importlib.util.find_spec("liger_kernel") is not None

LIGER_KWARGS = {
    "rope",
    "rms_norm",
    "swiglu",
    "geglu",
    "layer_norm",
    "cross_entropy",
    "fused_linear_cross_entropy",
}
"""Every keyword the apply_liger_kernel_to_<model> functions of liger-kernel 0.8.5 take (besides
`model`); `_apply_liger_kernel_to_instance` passes each model's function the ones it has."""


def cuda_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def refusal_here() -> str | None:
    """Why validate refuses `kernels: [liger]` on this machine, or None where it can run."""
    if not LIGER_INSTALLED:
        return "liger is unavailable: needs the 'liger_kernel' package: pip install 'trainer[liger]'"
    if not cuda_visible():
        return "liger needs a CUDA GPU; none is visible"
    return None


def trl_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", importlib.metadata.version("trl"))
    assert found
    return (int(found.group(1)), int(found.group(2))) >= (major, minor)


def config_file(tmp_path: Path, tiny_model: Path, toy_data: Path, **keys: Any) -> Path:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **keys)
    return write_yaml(tmp_path / "cfg.yml", config)


def validate(path: Path, *overrides: str) -> tuple[int, str, str]:
    """`python -m trainer.cli.validate`, in process: exit status, stdout, stderr."""
    done = run_command("validate", path, *overrides)
    return done.returncode, done.stdout, done.stderr


PROBE = """
import json, runpy, sys
sys.argv = ["trainer.cli.validate", *sys.argv[1:]]
try:
    runpy.run_module("trainer.cli.validate", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    print(json.dumps({"code": stop.code, "torch": "torch" in sys.modules}))
"""


def test_validate_refuses_liger_here_in_one_line(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, kernels=["liger"])
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(cfg)],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = json.loads(result.stdout.splitlines()[-1])
    reason = refusal_here()
    if reason is None:  # a CUDA GPU and liger-kernel: nothing to refuse
        assert found["code"] == 0, result.stderr
        assert "kernels[0]" in result.stdout and "liger [trainer" in result.stdout
        return
    assert found["code"] == 2
    assert "Traceback" not in result.stderr
    note, *lines = result.stderr.strip().splitlines()
    assert note.startswith("(1 of the errors below is a machine check: "), result.stderr
    assert lines[0] == "1 config error:" and len(lines) == 2, result.stderr
    assert re.fullmatch(rf"  {re.escape(str(cfg))}:\d+  kernels\[0\]: {re.escape(reason)}.*", lines[1]), (
        lines[1]
    )
    if not LIGER_INSTALLED:  # the package check alone: validate still does not import torch
        assert "Triton GPU kernels" in lines[1]
        assert found["torch"] is False


def test_unknown_option_in_the_liger_block(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, kernels=[{"type": "liger", "rms_nrom": False}])
    code, _, err = validate(cfg)
    assert code == 2
    message = "kernels[0].rms_nrom: unknown key 'rms_nrom' (did you mean 'rms_norm'?)"
    assert re.search(rf"{re.escape(str(cfg))}:\d+  {re.escape(message)}", err), err
    assert "Traceback" not in err


def test_cross_entropy_and_fused_linear_cross_entropy_exclude_each_other(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    block = {"type": "liger", "cross_entropy": True, "fused_linear_cross_entropy": True}
    cfg = config_file(tmp_path, tiny_model, toy_data, kernels=[block])
    code, _, err = validate(cfg)
    assert code == 2
    assert (
        "kernels[0].cross_entropy: liger: cross_entropy and fused_linear_cross_entropy cannot both be true"
    ) in err, err
    if trl_at_least(1, 15):  # its SFTTrainer computes the loss with its own fused LM head
        assert "kernels[0].fused_linear_cross_entropy: liger: TRL " in err, err
        assert "SFTTrainer refuses it" in err
    code, _, err = validate(cfg, "kernels[0].fused_linear_cross_entropy=false")
    assert "kernels[0].cross_entropy" not in err and "kernels[0].fused_linear" not in err, err


def test_contribution_is_exact_and_sftconfig_takes_it(
    tiny_model: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import plan

    # this machine may lack the GPU or the package: the run is only planned, never trained
    monkeypatch.setattr(Liger, "missing_requirements", lambda self: [])
    monkeypatch.setattr(Liger, "check", lambda self, config: [])
    monkeypatch.setattr(Liger, "check_machine", lambda self, config: [])
    cfg = config_file(
        tmp_path, tiny_model, toy_data, kernels=[{"type": "liger", "rope": False, "cross_entropy": True}]
    )
    resolved = load_config(str(cfg))
    (chosen,) = resolved.kernels
    assert chosen.path == ("kernels", 0) and chosen in resolved.plugins()
    assert chosen.plugin.contribute(resolved.config).sft_args == {
        "use_liger_kernel": True,
        "liger_kernel_config": {"rope": False, "cross_entropy": True, "fused_linear_cross_entropy": False},
    }
    assert resolved.to_dict()["kernels"] == [
        {
            "type": "liger",
            "rms_norm": None,
            "rope": False,
            "swiglu": None,
            "geglu": None,
            "layer_norm": None,
            "cross_entropy": True,
            "fused_linear_cross_entropy": False,
        }
    ]
    again = load_config(str(write_yaml(tmp_path / "resolved.yml", resolved.to_dict())))
    assert again.to_dict() == resolved.to_dict()  # the resolved block (nulls included) reloads as is
    merged, args = plan(resolved)  # every contribution merged, then trl.SFTConfig(**...)
    assert merged.owners["sft_args.use_liger_kernel"] == "kernels plugin 'liger' (trainer)"
    assert args.use_liger_kernel is True
    assert args.liger_kernel_config == {
        "rope": False,
        "cross_entropy": True,
        "fused_linear_cross_entropy": False,
    }

    bare = Liger().contribute(resolved.config).sft_args  # `kernels: [liger]`: Liger's per-model defaults
    assert bare == {
        "use_liger_kernel": True,
        "liger_kernel_config": {"cross_entropy": False, "fused_linear_cross_entropy": False},
    }
    every = LigerOptions(
        **dict.fromkeys(LIGER_KWARGS - {"cross_entropy", "fused_linear_cross_entropy"}, True)
    )
    assert set(Liger(every).contribute(resolved.config).sft_args["liger_kernel_config"]) == LIGER_KWARGS


def test_option_names_are_liger_keywords() -> None:
    """Each option is passed as is to Liger's apply function: the names must be its keywords."""
    assert set(LigerOptions.model_fields) == LIGER_KWARGS
    for name, field in LigerOptions.model_fields.items():
        assert field.description, name
    if LIGER_INSTALLED:  # the real signatures, where the package is here
        import inspect

        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

        taken = {p for fn in MODEL_TYPE_TO_APPLY_LIGER_FN.values() for p in inspect.signature(fn).parameters}
        assert set(LigerOptions.model_fields) <= taken


def test_check_with_the_package_present(
    tiny_model: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CUDA GPU, and a local model whose model_type Liger does not patch, each in one line (a stand-in
    liger_kernel module, so this runs wherever the tests do)."""
    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a),
    )
    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": None, "qwen2": None}  # type: ignore[attr-defined]
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    plugin = Liger()
    assert plugin.missing_requirements() == []
    config = TrainConfig.model_validate(toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out"))
    assert plugin.check_machine(config) == [  # a machine check: --skip-machine-checks notes it
        "liger needs a CUDA GPU; none is visible (Liger's kernels are Triton GPU kernels: remove liger "
        "from kernels on this machine)"
    ]
    assert plugin.check(config) == []  # llama: patched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert plugin.check_machine(config) == []

    other = tmp_path / "gpt2-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    assert plugin.check(config.model_copy(update={"base_model": str(other)})) == [
        f"liger has no kernels for model_type 'gpt2' ({other}); it patches: llama, qwen2"
    ]
    # a hub id: no local config.json to read, nothing to say before the run
    assert plugin.check(config.model_copy(update={"base_model": "org/some-model"})) == []


def test_plugins_command_lists_liger() -> None:
    result = run_command("plugins", cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in result.stdout.splitlines()[1:]}
    assert rows[("kernels", "liger")] == ["trainer", "0.1.0", "ok"], result.stdout
    assert Registry.discover().entry("kernels", "liger").target == "plugins.kernels.liger:Liger"


def test_unknown_kernel_lists_the_known_ones(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tiny_model, toy_data, kernels=["ligre"])
    code, _, err = validate(cfg)
    assert code == 2
    known = ", ".join(default_registry().names("kernels"))
    assert "liger" in known.split(", ")
    assert f"kernels[0].type: unknown kernel 'ligre' (did you mean 'liger'?); known: {known}" in err, err
    code, _, err = validate(cfg, "kernels={type: liger}")
    assert code == 2 and "kernels: must be a list of kernel blocks" in err


def test_schema_offers_liger_in_kernels() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from trainer.cli.schema import build_schema

    schema = build_schema(Registry.discover(), builtin=True)
    choices = schema["properties"]["kernels"]["items"]["anyOf"]
    assert {"const": "liger"} in choices
    base = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "completion"}], "output_dir": "o"}
    jsonschema.validate({**base, "kernels": ["liger", {"type": "liger", "rope": False}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**base, "kernels": [{"type": "liger", "rms_nrom": False}]}, schema)


# ---- on a CUDA GPU with liger-kernel ---------------------------------------------------------------

TRAIN = """
import json, sys
from trainer.resolve.validate import load_config
from trainer.runtime.run import train

built = train(load_config(sys.argv[1]), log=lambda *_: None)
norms = [m._get_name() for m in built.trainer.model.modules() if type(m).__name__.endswith("RMSNorm")]
history = built.trainer.state.log_history
print(json.dumps({"norms": norms, "losses": [h["loss"] for h in history if "loss" in h]}))
"""


def _gpu_ready() -> bool:
    try:
        return cuda_visible()
    except ImportError:
        return False


@pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU: Liger's kernels are Triton GPU kernels")
@pytest.mark.skipif(not LIGER_INSTALLED, reason="needs liger-kernel: pip install 'trainer[liger]'")
def test_liger_trains_like_plain_pytorch_in_bf16(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    """A few bf16 steps with and without Liger: the same losses within bf16 noise, and every RMSNorm
    of the trained model runs Liger's kernel. Each run in its own process: Liger also patches the
    transformers classes, process-wide."""
    results = {}
    for name, kernels in (("plain", []), ("liger", ["liger"])):
        config = toy_config(
            tiny_model, toy_data / "train.jsonl", tmp_path / name, bf16=True, max_steps=6,
            learning_rate=1.0e-3, kernels=kernels,
        )  # fmt: skip
        cfg = write_yaml(tmp_path / f"{name}.yml", config)
        result = subprocess.run(
            [sys.executable, "-c", TRAIN, str(cfg)],
            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        results[name] = json.loads(result.stdout.splitlines()[-1])
    plain, liger = results["plain"], results["liger"]
    assert plain["norms"] and set(plain["norms"]) == {"LlamaRMSNorm"}
    assert len(liger["norms"]) == len(plain["norms"]) and set(liger["norms"]) == {"LigerRMSNorm"}
    assert len(liger["losses"]) == len(plain["losses"]) >= 6
    assert liger["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-2)  # same weights, same batch
    assert liger["losses"] == pytest.approx(plain["losses"], rel=5e-2)
