"""LoRA / QLoRA on mixture-of-experts models, trained for real on tiny MoE models built here (CPU).

- `target_parameters`: LoRA on the fused 3D expert weights of a Qwen3-MoE; only LoRA weights move,
  the expert weights stay, the loss falls, and the saved adapter reloads with PeftModel.
- `quantize_moe_experts`: the expert weights become 4-bit (about a quarter of their bf16 bytes) and
  compute what bitsandbytes' own quantize/dequantize of them gives; training with LoRA on them runs
  and the adapter reloads on the plain base.
- `llama4_linearized_experts`: Llama 4's fused experts as one nn.Linear per expert compute the same
  outputs, and a QLoRA run on them holds them in 4 bits.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from plugins.adapters import moe_experts  # noqa: E402
from tests.conftest import logits_of, run_api, toy_config  # noqa: E402
from trainer.config.errors import ConfigErrors  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def _save(model: Any, tiny_model: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_moe(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3-MoE (8 experts, top-2) with the repo's byte tokenizer."""
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=8,
        num_experts_per_tok=2, decoder_sparse_step=1, max_position_embeddings=512, initializer_range=0.1,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, dtype="float32",
    )  # fmt: skip
    config.head_dim = 16
    torch.manual_seed(0)
    return _save(Qwen3MoeForCausalLM(config), tiny_model, tmp_path_factory.mktemp("moe") / "tiny-qwen3-moe")


@pytest.fixture(scope="module")
def tiny_llama4(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama 4 text model (4 experts, top-1, a shared expert), its experts' weights
    drawn large enough to matter in the output."""
    from transformers import AutoTokenizer, Llama4ForCausalLM, Llama4TextConfig

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = Llama4TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=32, intermediate_size_mlp=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=1, interleave_moe_layer_step=1, max_position_embeddings=512,
        initializer_range=0.1,
        router_aux_loss_coef=0.0,  # TRL's aux-loss path reads Llama4ForCausalLM's backbone wrongly
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, dtype="float32",
    )  # fmt: skip
    torch.manual_seed(0)
    model = Llama4ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".experts." in name:
                param.normal_(0, 0.2)
    return _save(model, tiny_model, tmp_path_factory.mktemp("llama4") / "tiny-llama4")


def _load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _expert_weights(model: Any) -> dict[str, Any]:
    return {
        n.removeprefix("base_model.model.").replace(".base_layer", ""): p.detach().clone()
        for n, p in model.named_parameters()
        if p.ndim >= 3
    }


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def _config(model: Path, toy_data: Path, out: Path, adapter: dict[str, Any], **extra: Any) -> dict[str, Any]:
    settings = {
        "max_train_samples": 96,
        "max_steps": 20,
        "micro_batch_size": 8,
        "learning_rate": 1e-2,
        **extra,
    }
    return toy_config(model, toy_data / "train.jsonl", out, adapter=adapter, **settings)


# --- target_parameters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tiny_moe: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("moe-lora")
    adapter = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    built = run_api(tmp, _config(tiny_moe, toy_data, tmp / "out", {**adapter, "target_parameters": EXPERTS}))
    return built, tmp / "out"


def test_target_parameters_train_only_lora_on_the_experts(lora_run, tiny_moe):
    built, out = lora_run
    model = built.trainer.model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    expert_lora = [n for n in trainable if ".mlp.experts." in n and "lora_B" in n]
    assert len(expert_lora) == 4  # gate_up_proj and down_proj, 2 layers
    assert all(trainable[n].abs().max() > 0 for n in expert_lora)  # B starts at zero: it trained
    # the expert base weights did not move
    before = _expert_weights(_load(tiny_moe))
    after = _expert_weights(model.get_base_model())
    assert before.keys() == after.keys() and before
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    losses = _losses(out)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    saved = json.loads((out / "adapter_config.json").read_text())
    assert sorted(saved["target_parameters"]) == sorted(EXPERTS) and saved["lora_dropout"] == 0.0


def test_target_parameters_adapter_reloads_with_the_same_logits(lora_run, tiny_moe):
    from peft import PeftModel

    built, out = lora_run
    trained = logits_of(built.trainer.model, built.tokenizer)
    base = _load(tiny_moe)
    moved = (trained - logits_of(base, built.tokenizer)).abs().max().item()
    reloaded = PeftModel.from_pretrained(base, out)
    assert torch.allclose(logits_of(reloaded, built.tokenizer), trained, atol=1e-5)
    assert moved > 0.1


def test_target_parameters_missing_is_a_load_error(tiny_moe, toy_data, tmp_path):
    adapter = {"type": "lora", "r": 4, "target_modules": ["q_proj"], "target_parameters": ["experts.w1"]}
    with pytest.raises(ConfigErrors) as caught:
        run_api(tmp_path, _config(tiny_moe, toy_data, tmp_path / "out", adapter))
    (problem,) = caught.value.problems
    assert problem.path == ("adapter", "target_parameters")
    assert "'experts.w1' names no parameter of Qwen3MoeForCausalLM" in problem.message
    assert "experts.gate_up_proj" in problem.message


@pytest.mark.parametrize(
    ("adapter", "key", "words"),
    [
        ({"type": "lora", "target_parameters": EXPERTS, "dropout": 0.1}, "dropout", "must be 0"),
        ({"type": "lora", "target_parameters": EXPERTS, "use_dora": True}, "use_dora", "target_parameters"),
        ({"type": "lora", "target_parameters": EXPERTS, "init": "pissa"}, "init", "default or gaussian"),
        ({"type": "lora", "target_parameters": EXPERTS, "fan_in_fan_out": True},
         "fan_in_fan_out", "target_parameters"),
        ({"type": "lora", "target_parameters": []}, "target_parameters", "at least one"),
        ({"type": "lora", "quantize_moe_experts": True}, "quantize_moe_experts", "load_in_8bit"),
        ({"type": "qlora", "quantize_moe_experts": True, "llama4_linearized_experts": True},
         "quantize_moe_experts", "drop quantize_moe_experts"),
        ({"type": "lora", "llama4_linearized_experts": True},
         "llama4_linearized_experts", "model_type llama4"),
    ],
)  # fmt: skip
def test_bad_moe_settings_are_validation_errors(tiny_moe, toy_data, tmp_path, adapter, key, words):
    import yaml

    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(_config(tiny_moe, toy_data, tmp_path / "out", adapter)))
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(path), skip_machine_checks=True)
    found = [p for p in caught.value.problems if p.path == ("adapter", key)]
    assert found and words in found[0].message, caught.value.problems


def test_unset_dropout_is_zero_with_target_parameters(tiny_moe, toy_data, tmp_path):
    import yaml

    path = tmp_path / "cfg.yml"
    adapter = {"type": "lora", "target_parameters": EXPERTS}
    path.write_text(yaml.safe_dump(_config(tiny_moe, toy_data, tmp_path / "out", adapter)))
    resolved = load_config(str(path), skip_machine_checks=True)
    assert resolved.adapter.plugin.contribute(resolved.config).peft_config.lora_dropout == 0.0


# --- quantize_moe_experts -----------------------------------------------------------------------------


def test_quantized_experts_are_4bit_and_compute_their_dequantized_weights(tiny_moe):
    import bitsandbytes.functional as F

    plain = _load(tiny_moe)
    quantized = copy.deepcopy(plain)
    bf16_bytes = 2 * sum(p.numel() for p in _expert_weights(plain).values())
    assert moe_experts.quantize_experts(quantized, 4, "nf4", double_quant=True) == 4
    experts = quantized.model.layers[0].mlp.experts
    assert experts.parametrizations.gate_up_proj.original.dtype == torch.uint8
    assert not any(p.ndim >= 3 for p in quantized.parameters())  # no 16/32-bit expert weight is left
    ratio = bf16_bytes / moe_experts.expert_bytes(quantized)
    assert 3.4 < ratio < 4.0, ratio  # 0.5 byte a weight plus the (double-quantized) block scales

    # Reference computed another way: the plain model with its expert weights replaced by bitsandbytes'
    # own quantize -> dequantize of them gives the same logits as the parametrized model.
    reference = copy.deepcopy(plain)
    with torch.no_grad():
        for param in reference.parameters():
            if param.ndim >= 3:
                codes, state = F.quantize_4bit(param.data, compress_statistics=True, quant_type="nf4")
                deq = F.dequantize_4bit(codes, state)
                assert 0.05 < ((deq - param).norm() / param.norm()).item() < 0.12  # nf4's error
                param.copy_(deq)
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        got, want, full = (m(ids).logits for m in (quantized, reference, plain))
    assert torch.allclose(got, want, atol=1e-5)
    assert ((got - full).norm() / full.norm()).item() < 0.15  # near the unquantized model (measured 0.08)


def test_8bit_experts(tiny_moe):
    plain = _load(tiny_moe)
    quantized = copy.deepcopy(plain)
    assert moe_experts.quantize_experts(quantized, 8) == 4
    assert quantized.model.layers[0].mlp.experts.parametrizations.down_proj.original.dtype == torch.int8
    bf16_bytes = 2 * sum(p.numel() for p in _expert_weights(plain).values())
    assert 1.8 < bf16_bytes / moe_experts.expert_bytes(quantized) < 2.0  # int8 plus a scale per row
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        got, full = quantized(ids).logits, plain(ids).logits
    assert ((got - full).norm() / full.norm()).item() < 0.01


def test_8bit_lora_with_8bit_experts_trains(tiny_moe, toy_data, tmp_path):
    adapter = {
        "type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "load_in_8bit": True,
        "target_parameters": EXPERTS, "quantize_moe_experts": True,
    }  # fmt: skip
    built = run_api(tmp_path, _config(tiny_moe, toy_data, tmp_path / "out", adapter))
    layer = built.trainer.model.get_base_model().model.layers[1]
    assert isinstance(layer.self_attn.k_proj, bnb.nn.Linear8bitLt)
    experts = layer.mlp.experts.get_base_layer()
    assert all(plist.original.dtype == torch.int8 for plist in experts.parametrizations.values())
    assert all(len(plist) == 1 for plist in experts.parametrizations.values())
    losses = _losses(tmp_path / "out")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_memory_estimate_counts_quantized_experts(tiny_moe, toy_data, tmp_path):
    """The checkpoint holds one tensor per expert; loaded, they are fused 3D parameters that a 4-bit
    load leaves alone (and kbit preparation holds in fp32): quantize_moe_experts makes them 4-bit."""
    import yaml

    from trainer.api import describe_base_model

    info = describe_base_model(str(tiny_moe))
    assert info is not None
    experts = sum(math.prod(shape) for shape in moe_experts.header_experts(info.tensors).values())
    assert experts == 2 * 8 * 3 * 64 * 64  # layers x experts x (gate, up, down)
    held = {}
    for quantize in (False, True):
        path = tmp_path / f"{quantize}.yml"
        adapter = {"type": "qlora", "target_modules": ["q_proj"], "quantize_moe_experts": quantize}
        path.write_text(yaml.safe_dump(_config(tiny_moe, toy_data, tmp_path / "out", adapter)))
        resolved = load_config(str(path), skip_machine_checks=True)
        plugin: Any = resolved.adapter.plugin
        held[quantize] = plugin.base_weight_bytes(info, resolved.config)
    per_value = 0.5 + 1 / 64 + 4 / (64 * 256)  # nf4 with double quantization
    assert held[False] - held[True] == pytest.approx(experts * (4 - per_value))


@pytest.fixture(scope="module")
def qlora_run(tiny_moe: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("moe-qlora")
    adapter = {
        "type": "qlora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"],
        "target_parameters": EXPERTS, "quantize_moe_experts": True,
    }  # fmt: skip
    built = run_api(tmp, _config(tiny_moe, toy_data, tmp / "out", adapter))
    return built, tmp / "out"


def test_qlora_with_quantized_experts_trains(qlora_run, tiny_moe):
    built, out = qlora_run
    model = built.trainer.model
    layer = model.get_base_model().model.layers[0]
    assert isinstance(layer.self_attn.k_proj, bnb.nn.Linear4bit)
    base_experts = layer.mlp.experts.get_base_layer()
    assert base_experts.parametrizations.gate_up_proj.original.dtype == torch.uint8
    assert base_experts.parametrizations.down_proj.original.dtype == torch.uint8
    # the proxies PEFT adds for each forward are gone again (only the 4-bit dequantization stays)
    assert all(len(plist) == 1 for plist in base_experts.parametrizations.values())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    expert_lora = [p for n, p in trainable.items() if ".mlp.experts." in n and "lora_B" in n]
    assert len(expert_lora) == 4 and all(p.abs().max() > 0 for p in expert_lora)
    # the 4-bit expert codes are what a fresh quantization of the base gives: they did not move
    fresh = _load(tiny_moe)
    moe_experts.quantize_experts(fresh, 4, "nf4", double_quant=True)
    want = fresh.model.layers[0].mlp.experts.parametrizations.gate_up_proj.original
    assert torch.equal(base_experts.parametrizations.gate_up_proj.original, want)
    losses = _losses(out)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_quantized_experts_adapter_loads_on_the_plain_base(qlora_run, tiny_moe):
    """The adapter's keys are those PEFT builds on the unquantized model (the wrappers nest in the
    parameters' definition order), so it loads there; the gap is the 4-bit quantization error."""
    from peft import PeftModel

    built, out = qlora_run
    trained = logits_of(built.trainer.model, built.tokenizer)
    base = _load(tiny_moe)
    moved = (trained - logits_of(base, built.tokenizer)).abs().max().item()
    reloaded = PeftModel.from_pretrained(base, out)
    gap = (logits_of(reloaded, built.tokenizer) - trained).abs().max().item()
    assert gap < moved / 5, (gap, moved)


# --- llama4_linearized_experts ------------------------------------------------------------------------


def test_linearized_llama4_experts_give_the_same_outputs(tiny_llama4):
    fused = _load(tiny_llama4)
    linear = copy.deepcopy(fused)
    assert moe_experts.linearize_llama4(linear) == 2
    experts = linear.model.layers[0].feed_forward.experts
    assert len(experts.gate_projs) == 4 and isinstance(experts.down_projs[3], torch.nn.Linear)
    assert not any(p.ndim >= 3 for p in linear.parameters())
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        want, got = fused(ids).logits, linear(ids).logits
        bare = copy.deepcopy(fused)
        for layer in bare.model.layers:
            layer.feed_forward.experts.down_proj.zero_()
        without = bare(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (want - without).abs().max() > 0.05  # the experts matter in this output


def test_qlora_on_linearized_llama4_experts(tiny_llama4, toy_data, tmp_path):
    adapter = {
        "type": "qlora", "r": 4, "alpha": 8, "llama4_linearized_experts": True,
        "target_modules": ["q_proj", "v_proj", "gate_projs.0", "down_projs.0"],
    }  # fmt: skip
    built = run_api(tmp_path, _config(tiny_llama4, toy_data, tmp_path / "out", adapter))
    experts = built.trainer.model.get_base_model().model.layers[1].feed_forward.experts
    assert isinstance(experts.up_projs[2], bnb.nn.Linear4bit)  # every expert linear is 4-bit
    assert experts.gate_projs[0].base_layer.weight.dtype == torch.uint8  # and gets an adapter
    losses = _losses(tmp_path / "out")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


# --- the Axolotl converter ------------------------------------------------------------------------------


def _convert(tmp_path: Path, text: str, base: str = "m") -> tuple[int, str, dict[str, Any]]:
    import yaml

    from tests.conftest import run_command

    source, out = tmp_path / "axolotl.yml", tmp_path / "out.yml"
    (tmp_path / "d.jsonl").write_text("{}\n")
    text += "datasets:\n  - path: d.jsonl\n    type: alpaca\n"
    source.write_text(
        f"base_model: {base}\nlora_r: 8\nlora_alpha: 16\nlora_target_modules: [q_proj]\n" + text
    )
    out.unlink(missing_ok=True)
    done = run_command("convert", source, "-o", out, cwd=tmp_path)
    return done.returncode, done.stderr, yaml.safe_load(out.read_text()) if out.exists() else {}


def test_converter_carries_the_moe_expert_keys(tmp_path):
    code, err, config = _convert(
        tmp_path,
        "adapter: qlora\nload_in_4bit: true\nquantize_moe_experts: true\n"
        "lora_target_parameters: experts.down_proj\n",
    )
    assert code == 0, err
    assert config["adapter"]["type"] == "qlora"
    assert config["adapter"]["quantize_moe_experts"] is True
    assert config["adapter"]["target_parameters"] == ["experts.down_proj"]
    code, err, config = _convert(tmp_path, "adapter: lora\nload_in_8bit: true\nquantize_moe_experts: true\n")
    assert code == 0, err
    assert config["adapter"]["load_in_8bit"] is True and config["adapter"]["quantize_moe_experts"] is True
    code, err, config = _convert(
        tmp_path, "adapter: qlora\nload_in_4bit: true\nllama4_linearized_experts: true\n"
    )
    assert code == 0 and config["adapter"]["llama4_linearized_experts"] is True, err


def test_converter_refuses_what_would_not_run(tmp_path):
    code, err, _ = _convert(tmp_path, "adapter: lora\nquantize_moe_experts: true\n")
    assert code == 2 and "quantize_moe_experts: needs load_in_4bit or load_in_8bit" in err
    linearized = "axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16"
    code, err, _ = _convert(
        tmp_path, "adapter: qlora\nload_in_4bit: true\nllama4_linearized_experts: true\n", linearized
    )
    assert code == 2 and "pre-linearized Llama 4 checkpoint" in err, err
