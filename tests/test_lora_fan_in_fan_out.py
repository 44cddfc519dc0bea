"""LoRA's fan_in_fan_out (Axolotl's lora_fan_in_fan_out) on a tiny GPT-2, whose attention and MLP
weights are Conv1D layers stored (in, out): training with fan_in_fan_out: true moves the adapters,
lowers the loss, and the saved adapter loads back on the base with the same outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import logits_of, run_api, toy_config


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 (Conv1D projections) with the tiny Llama's byte-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out)
    for name in Path(tiny_model).iterdir():
        if "token" in name.name or name.name == "special_tokens_map.json":
            shutil.copy(name, out / name.name)
    return out


def test_fan_in_fan_out_trains_conv1d_and_loads_back(tiny_gpt2: Path, toy_data: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    out = tmp_path / "out"
    adapter = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "c_fc"],
               "fan_in_fan_out": True}  # fmt: skip
    config = toy_config(tiny_gpt2, toy_data / "train.jsonl", out, adapter=adapter, max_steps=12)
    built = run_api(tmp_path, config)
    model = built.trainer.model
    attention = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(attention.base_layer, Conv1D) and attention.fan_in_fan_out is True
    b: Any = attention.lora_B["default"].weight
    assert b.abs().sum() > 0  # B starts at zero: it trained
    losses = [e["loss"] for e in built.trainer.state.log_history if "loss" in e]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["fan_in_fan_out"] is True and sorted(saved["target_modules"]) == ["c_attn", "c_fc"]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), out)
    expected = logits_of(model, built.tokenizer)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), expected, atol=1e-5)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_gpt2), built.tokenizer)
    assert not torch.allclose(base, expected, atol=1e-4)  # the adapter changes the outputs
