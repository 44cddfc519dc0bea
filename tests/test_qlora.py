"""The `qlora` adapter: LoRA on a 4-bit bitsandbytes base, trained for real (tiny Llama, CPU, offline).

The base linear layers are Linear4bit (nf4 or fp4) and never change, only the adapters train (the
count PEFT should give), the loss falls, and the output is a plain PEFT adapter: on a fresh 4-bit base
it reproduces the trained model exactly, and on the unquantized base it is close (quantization error).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from tests.conftest import logits_of, run_api, toy_config  # noqa: E402
from trainer.config.errors import ConfigErrors  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402

R = 8


def qlora_config(model: Path, data: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    adapter = {"type": "qlora", "r": R, "alpha": 16, "dropout": 0.0}
    settings = {"max_train_samples": 160, "max_steps": 20, "adapter": adapter}
    return toy_config(model, data, output_dir, **{**settings, **overrides})


def quantized_base(model_dir: Path, output_dir: Path) -> Any:
    """A fresh 4-bit load of the base, quantized as the run's resolved config says."""
    from transformers import AutoModelForCausalLM

    resolved = load_config(str(output_dir / "config.resolved.yml"))
    kwargs = resolved.adapter.plugin.contribute(resolved.config).model_kwargs
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def four_bit_layers(model: Any) -> dict[str, Any]:
    """name (without PEFT's prefixes) -> Linear4bit module."""
    return {
        name.removeprefix("base_model.model.").removesuffix(".base_layer"): module
        for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    }


def packed(layer: Any) -> dict[str, Any]:
    """Every tensor that defines a 4-bit weight: the packed codes and the (double-)quantization state."""
    state = layer.weight.quant_state.as_dict(packed=True)
    return {"codes": layer.weight.data, **{k: v for k, v in state.items() if torch.is_tensor(v)}}


def train_losses(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def nf4_run(tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("qlora")
    out = tmp / "out"
    built = run_api(tmp, qlora_config(tiny_model, toy_data / "train.jsonl", out))
    return built, out


def test_base_is_4bit_nf4_and_only_lora_trains(nf4_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    built, _ = nf4_run
    trained = built.trainer.model
    assert isinstance(trained, PeftModel)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    linears = {
        name: m for name, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"
    }
    layers = four_bit_layers(trained)
    assert set(layers) == set(linears)  # every linear layer but the output head is 4-bit
    assert all(layer.weight.quant_type == "nf4" for layer in layers.values())
    assert all(layer.weight.quant_state.nested for layer in layers.values())  # double_quant
    assert all(layer.compute_dtype == torch.float32 for layer in layers.values())  # no bf16/fp16

    trainable = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    expected = sum(R * (m.in_features + m.out_features) for m in linears.values())
    assert sum(p.numel() for p in trainable.values()) == expected
    # float32 run: the adapters stay float32 (TRL casts a quantized model's adapters to bf16)
    assert all(p.dtype == torch.float32 for p in trainable.values())


def test_lora_moves_and_quantized_base_is_bit_identical(nf4_run, tiny_model):
    from transformers import AutoModelForCausalLM

    built, out = nf4_run
    trained = built.trainer.model
    lora_b = {n: p for n, p in trained.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values())  # PEFT initialises B to zero

    fresh = four_bit_layers(quantized_base(tiny_model, out))
    after = four_bit_layers(trained)
    for name, layer in after.items():
        before, now = packed(fresh[name]), packed(layer)
        assert before.keys() == now.keys()
        for key in now:
            assert torch.equal(before[key], now[key]), (name, key)
    # and the layers that stay unquantized (embeddings, norms) did not move either
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    for name, value in trained.named_parameters():
        if not value.requires_grad and value.dtype == torch.float32:
            assert torch.equal(value, initial[name.removeprefix("base_model.model.")]), name


def test_loss_falls(nf4_run):
    _, out = nf4_run
    losses = train_losses(out)
    assert len(losses) == 20
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses  # measured: 5.37 -> 4.50


def test_output_is_a_peft_adapter_that_reloads(nf4_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    built, out = nf4_run
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "config.resolved.yml"} <= files
    assert "model.safetensors" not in files and "pytorch_model.bin" not in files
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == R
    assert adapter_config["base_model_name_or_path"] == str(tiny_model)

    trained = logits_of(built.trainer.model, built.tokenizer)
    reloaded = PeftModel.from_pretrained(quantized_base(tiny_model, out), out)
    assert isinstance(four_bit_layers(reloaded)["model.layers.0.self_attn.q_proj"], bnb.nn.Linear4bit)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), trained, atol=1e-4)

    # On the unquantized float32 base the adapter computes nearly the same thing; the gap is the base's
    # 4-bit quantization error. Measured: max |diff| 0.03 with the adapter; the bare base's own
    # fp32-vs-nf4 gap is 0.24, and training moved the logits by up to 3.2 (logit std ~0.43).
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    moved = (trained - logits_of(base, built.tokenizer)).abs().max().item()
    on_fp32 = PeftModel.from_pretrained(base, out)
    gap = (logits_of(on_fp32, built.tokenizer) - trained).abs().max().item()
    print(f"adapter on the fp32 base vs the trained 4-bit model: max |logit diff| {gap:.4f}; ", end="")
    print(f"training moved the logits by up to {moved:.2f}")
    assert 0 < gap < 0.1
    assert gap < moved / 10


def test_resolved_config_records_the_quantization(nf4_run, tiny_model):
    _, out = nf4_run
    written = yaml.safe_load((out / "config.resolved.yml").read_text())
    assert written["base_model"] == str(tiny_model)
    assert written["adapter"] == {
        **written["adapter"],
        "type": "qlora",
        "r": R,
        "bits": 4,
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": None,  # follows bf16/fp16: float32 here
        "quant_storage": None,  # uint8 here (not under fsdp)
    }
    assert load_config(str(out / "config.resolved.yml")).to_dict() == written


def test_fp4_with_gradient_checkpointing(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    adapter = {
        "type": "qlora",
        "r": 4,
        "quant_type": "fp4",
        "double_quant": False,
        "target_modules": ["q_proj"],
    }
    config = qlora_config(
        tiny_model, toy_data / "train.jsonl", out, adapter=adapter, max_steps=3, gradient_checkpointing=True
    )
    built = run_api(tmp_path, config)
    layers = four_bit_layers(built.trainer.model)
    assert layers and all(layer.weight.quant_type == "fp4" for layer in layers.values())
    assert not any(layer.weight.quant_state.nested for layer in layers.values())
    lora_b = {n: p for n, p in built.trainer.model.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 2 and all(p.abs().max() > 0 for p in lora_b.values())  # q_proj of 2 layers
    assert all(torch.isfinite(torch.tensor(train_losses(out))))


def test_bf16_run_computes_in_bfloat16(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    adapter = {"type": "qlora", "r": 4, "target_modules": ["v_proj"], "quant_storage": "bfloat16"}
    config = qlora_config(tiny_model, toy_data / "train.jsonl", out, adapter=adapter, max_steps=2, bf16=True)
    built = run_api(tmp_path, config)
    layers = four_bit_layers(built.trainer.model)
    assert layers and all(layer.compute_dtype == torch.bfloat16 for layer in layers.values())  # from bf16
    assert all(layer.weight.dtype == torch.bfloat16 for layer in layers.values())  # quant_storage
    trainable = [p for p in built.trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.bfloat16 for p in trainable)  # TRL's QLoRA recipe
    assert len(train_losses(out)) == 2


# ---- validation ----------------------------------------------------------------------------------


CONFIG = """
base_model: {model}
datasets:
  - path: {data}
    type: prompt_completion
    completion_field: generation
output_dir: {out}
{extra}
adapter:
  type: qlora
  r: 8
{adapter}
"""


def problems(write_config, tiny_model, toy_data, tmp_path, adapter: str, extra: str = "") -> list[str]:
    text = CONFIG.format(
        model=tiny_model, data=toy_data / "train.jsonl", out=tmp_path / "out", extra=extra, adapter=adapter
    )
    path = write_config(text)
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path), skip_machine_checks=True)  # the config's own (fp16 here: no GPU)
    return [p.render().replace(str(path), "cfg.yml") for p in caught.value.problems]


def test_unknown_quant_type_and_bits_are_located(write_config, tiny_model, toy_data, tmp_path):
    found = problems(write_config, tiny_model, toy_data, tmp_path, "  quant_type: nf3\n  bits: 8")
    assert found == [
        "cfg.yml:11  adapter.quant_type: unknown value 'nf3' (did you mean 'nf4'?); "
        "expected one of 'nf4' or 'fp4'",
        "cfg.yml:12  adapter.bits: unknown value 8; expected one of 4",
    ]


@pytest.mark.parametrize(
    ("extra", "dtype", "message"),
    [
        ("bf16: true", "float16", "'float16' needs fp16: true, but the config sets bf16"),
        ("fp16: true", "bfloat16", "'bfloat16' needs bf16: true, but the config sets fp16"),
        ("", "bfloat16", "'bfloat16' needs bf16: true, but the config sets neither bf16 nor fp16"),
    ],
)
def test_compute_dtype_must_match_mixed_precision(
    write_config, tiny_model, toy_data, tmp_path, extra, dtype, message
):
    found = problems(write_config, tiny_model, toy_data, tmp_path, f"  compute_dtype: {dtype}", extra)
    assert found == [f"cfg.yml:11  adapter.compute_dtype: {message} (or leave it unset)"]


@pytest.mark.parametrize(
    ("extra", "dtype"), [("bf16: true", "bfloat16"), ("bf16: true", None), ("", "float32")]
)
def test_consistent_compute_dtype_is_accepted(write_config, tiny_model, toy_data, tmp_path, extra, dtype):
    import torch as _torch

    adapter = f"  compute_dtype: {dtype}" if dtype else ""
    text = CONFIG.format(
        model=tiny_model, data=toy_data / "train.jsonl", out=tmp_path / "out", extra=extra, adapter=adapter
    )
    resolved = load_config(str(write_config(text)))
    quantization = resolved.adapter.plugin.contribute(resolved.config).model_kwargs["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant and quantization.bnb_4bit_quant_storage == _torch.uint8
    assert quantization.bnb_4bit_compute_dtype == getattr(_torch, dtype or "bfloat16")
