"""Attention plugins: validate-time reasons for kernels this machine cannot run, packing rules, and
(on a CUDA machine) packed-example isolation for the GPU kernels; those tests skip here with the
plugin's own reason."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_command, toy_config, write_yaml
from trainer.api import Attention, Contribution
from trainer.config.errors import ConfigErrors
from trainer.config.schema import TrainConfig
from trainer.resolve.registry import Entry, Registry, default_registry
from trainer.resolve.validate import load_config


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return run_command("validate", path, cwd=REPO)


def config_file(tmp_path: Path, tiny_model: Path, toy_data: Path, **overrides: Any) -> Path:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **overrides)
    return write_yaml(tmp_path / "cfg.yml", config)


def unavailable_reason(name: str, **overrides: Any) -> str | None:
    """The plugin's own validate-time reason on this machine, or None when it can run."""
    plugin = default_registry().entry("attention", name).load()()
    config = TrainConfig.model_validate(
        {
            "base_model": "m",
            "datasets": [{"path": "d.jsonl", "type": "completion"}],
            "output_dir": "o",
            **overrides,
        }
    )
    problems = [*plugin.missing_requirements(), *plugin.check(config), *plugin.check_machine(config)]
    return "; ".join(str(p) for p in problems) or None


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("flash_attention_2", "flash_attention_2 is unavailable: the 'flash_attn' package is not installed"),
        (
            "flash_attention_3",
            "flash_attention_3 is unavailable: the 'flash_attn_interface' module is not installed",
        ),
        (
            "flex_attention",
            "flex_attention cannot train here: PyTorch's FlexAttention has no backward pass on CPU",
        ),
    ],
)
def test_kernels_this_machine_cannot_run_fail_validate_with_one_line(
    tmp_path, tiny_model, toy_data, kernel, expected
):
    if unavailable_reason(kernel, bf16=True) is None:
        pytest.skip(f"{kernel} can run on this machine")
    result = validate(config_file(tmp_path, tiny_model, toy_data, attention=kernel, bf16=True))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "attention" in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert errors[0].strip().startswith(f"{tmp_path / 'cfg.yml'}:")  # names the line
    assert "Traceback" not in result.stderr
    if kernel == "flash_attention_2":
        assert "trainer[flash-attn]" in errors[0]


def test_group_by_length_with_packing_is_refused(tmp_path, tiny_model, toy_data):
    result = validate(config_file(tmp_path, tiny_model, toy_data, sample_packing=True, group_by_length=True))
    assert result.returncode == 2
    assert "group_by_length: has nothing to group with sample_packing" in result.stderr


class NoPackingKernel(Attention):
    """A third-party kernel that does not say how it keeps packed examples apart."""

    name = "no_packing"

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(model_kwargs={"attn_implementation": "sdpa"})


def test_packing_needs_a_kernel_that_isolates_examples(tmp_path, tiny_model, toy_data):
    registry = Registry()
    for entry in default_registry().all_entries():
        registry.add(entry)
    registry.add(
        Entry("attention", "no_packing", "tests.test_attention:NoPackingKernel", "thirdparty", "1.0")
    )
    plain = config_file(tmp_path, tiny_model, toy_data, attention="no_packing")
    assert load_config(str(plain), registry=registry).attention.entry.name == "no_packing"
    packed = config_file(tmp_path, tiny_model, toy_data, attention="no_packing", sample_packing=True)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(packed), registry=registry)
    assert "attention plugin 'no_packing' cannot keep packed examples apart" in str(caught.value)


# ---- GPU kernels: run where they can, skip with the plugin's reason elsewhere ---------------------


@pytest.mark.parametrize("kernel", ["flex_attention", "flash_attention_2", "flash_attention_3"])
def test_gpu_kernel_packed_logits_equal_each_example_alone(tiny_model, kernel):
    reason = unavailable_reason(kernel, bf16=True)
    if reason:
        pytest.skip(reason)
    import torch
    from transformers import AutoModelForCausalLM

    from tests.test_packing import packed_vs_alone_error, random_examples
    from trainer.data.collate import Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=kernel, dtype=torch.bfloat16)
    model = model.cuda().eval()
    examples = random_examples(model.config.vocab_size, [7, 30, 5, 18, 11, 2])
    collate = Collator(pad_token_id=2, packed_inputs="position_ids")
    original_call = model.forward

    def on_gpu(**batch: Any) -> Any:
        return original_call(**{k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()})

    model.forward = on_gpu  # type: ignore[method-assign]
    error = packed_vs_alone_error(model, collate, [examples[:3], examples[3:]])
    assert error < 5e-2, error  # bf16 kernels: rounding, not leakage (leakage moves logits by > 1)


def test_packing_refuses_persistent_dataloader_workers(tmp_path, tiny_model, toy_data):
    trainer_args = {"dataloader_num_workers": 1, "dataloader_persistent_workers": True}
    cfg = config_file(tmp_path, tiny_model, toy_data, sample_packing=True, trainer_args=trainer_args)
    result = validate(cfg)
    assert result.returncode == 2
    assert (
        "trainer_args.dataloader_persistent_workers: persistent workers keep the first epoch" in result.stderr
    )
