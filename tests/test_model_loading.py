"""The config's model/tokenizer loading keys: overrides_of_model_config (Axolotl's model_config),
model_quantization_config (+ kwargs), tokenizer_legacy, pad_vocab_to_multiple_of; and their
conversion from Axolotl's keys."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import logits_of, run_api, run_command, toy_config, write_yaml
from trainer.config.loading import QUANTIZATION_CONFIGS


def test_quantization_arguments_match_transformers() -> None:
    import transformers

    for name, arguments in QUANTIZATION_CONFIGS.items():
        params = inspect.signature(getattr(transformers, name).__init__).parameters
        assert tuple(p for p in params if p not in ("self", "kwargs")) == arguments


def test_config_override_reaches_the_forward_and_is_saved(tiny_model, toy_data, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_eps = AutoModelForCausalLM.from_pretrained(tiny_model).config.rms_norm_eps
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=1, learning_rate=1e-12
    )
    config["model_config"] = {"rms_norm_eps": 0.5}  # Axolotl's name for it
    built = run_api(tmp_path, config)
    model = built.trainer.model
    assert model.config.rms_norm_eps == 0.5 != base_eps
    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            assert module.variance_epsilon == 0.5
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert saved.config.rms_norm_eps == 0.5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", rms_norm_eps=base_eps)
    # the same weights (lr 1e-12), another epsilon: a different forward, so the override is what ran
    assert not torch.allclose(logits_of(saved, tokenizer), logits_of(plain, tokenizer), atol=1e-3)


def test_unknown_override_is_a_config_error_naming_the_key(tiny_model, toy_data, tmp_path) -> None:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=1)
    config["overrides_of_model_config"] = {"rope_theta": 50000.0, "not_a_field": 1}
    result = run_command("train", write_yaml(tmp_path / "cfg.yml", config))
    assert result.returncode == 2, result.stderr
    assert (
        "overrides_of_model_config.not_a_field: is not an attribute of the model's LlamaConfig"
        in result.stderr
    )
    assert "overrides_of_model_config.rope_theta" in result.stderr and "rope_parameters" in result.stderr


@pytest.mark.parametrize(
    ("name", "kwargs", "wanted"),
    [
        (
            "Mxfp4Config",
            {"dequantise": True},
            "model_quantization_config_kwargs.dequantise: is not an argument",
        ),
        ("Mxfp4Config", {}, "give {dequantize: true}"),
        (None, {"dequantize": True}, "has no effect without model_quantization_config"),
        ("GPTQConfig", {}, "model_quantization_config"),
    ],
)
def test_bad_quantization_config_is_refused(tiny_model, toy_data, tmp_path, name, kwargs, wanted) -> None:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out")
    config.update(model_quantization_config=name, model_quantization_config_kwargs=kwargs)
    result = run_command("validate", write_yaml(tmp_path / "cfg.yml", config))
    assert result.returncode == 2 and wanted in result.stderr, result.stderr


def test_quantization_config_object_reaches_from_pretrained(tiny_model, toy_data, tmp_path) -> None:
    """No MXFP4 checkpoint exists offline: what is checked is that the transformers object built from
    the config is what from_pretrained receives, and that a plugin's own quantization is refused."""
    from transformers.utils.quantization_config import Mxfp4Config

    from trainer.config.errors import ConfigErrors
    from trainer.resolve.validate import load_config
    from trainer.runtime.model_loading import load_kwargs

    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out")
    config.update(
        model_quantization_config="Mxfp4Config", model_quantization_config_kwargs={"dequantize": True}
    )
    resolved = load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
    kwargs = load_kwargs(resolved.config, {})
    assert isinstance(kwargs["quantization_config"], Mxfp4Config) and kwargs["quantization_config"].dequantize
    with pytest.raises(ConfigErrors, match="cannot be quantized again"):
        load_kwargs(resolved.config, {"quantization_config": object()})


def test_vocab_padded_to_a_multiple_and_saved_model_loads(tiny_model, toy_data, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base: Any = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = base.get_input_embeddings().weight.shape[0]
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=2)
    config.update(tokens=["<new_a>", "<new_b>", "<new_c>"], pad_vocab_to_multiple_of=32)
    run_api(tmp_path, config)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    saved: Any = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    grown = saved.get_input_embeddings().weight.shape[0]
    assert len(tokenizer) == rows + 3
    assert grown % 32 == 0 and len(tokenizer) < grown < len(tokenizer) + 32  # padded rows beyond the tokens
    assert saved.get_output_embeddings().weight.shape[0] == grown
    logits = logits_of(saved, tokenizer, "<new_a> hello")
    assert logits.shape[-1] == grown


def test_tokenizer_legacy_reaches_the_tokenizer(tiny_model) -> None:
    from trainer.config.schema import TrainConfig
    from trainer.runtime.build import load_tokenizer

    base: dict[str, Any] = {"base_model": str(tiny_model), "datasets": [{"path": "x", "type": "y"}],
                            "output_dir": "o"}  # fmt: skip
    for flag in (True, False):
        tokenizer = load_tokenizer(TrainConfig.model_validate({**base, "tokenizer_legacy": flag}))
        assert tokenizer.init_kwargs["legacy"] is flag
    assert "legacy" not in load_tokenizer(TrainConfig.model_validate(base)).init_kwargs


def _convert(tmp_path: Path, text: str) -> Any:
    from trainer.tools.axolotl.convert import convert

    path = tmp_path / "axolotl.yml"
    path.write_text(text, encoding="utf-8")
    return convert(str(path))


def test_converter_carries_the_loading_keys(tmp_path) -> None:
    done = _convert(
        tmp_path,
        "base_model: openai/gpt-oss-20b\nmodel_quantization_config: Mxfp4Config\n"
        "model_quantization_config_kwargs: {dequantize: true}\nmodel_config: {rope_scaling: null, "
        "output_router_logits: true}\ntokenizer_use_fast: false\ntokenizer_legacy: false\n"
        "resize_token_embeddings_to_32x: true\ndatasets: [{path: d.jsonl, type: alpaca}]\n",
    )
    out = done.config
    assert out["model_quantization_config"] == "Mxfp4Config"
    assert out["model_quantization_config_kwargs"] == {"dequantize": True}
    assert out["overrides_of_model_config"] == {"rope_scaling": None, "output_router_logits": True}
    assert out["tokenizer_legacy"] is False and out["pad_vocab_to_multiple_of"] == 32
    assert "tokenizer_use_fast" in [e.key for e in done.of("dropped")]
    refused = _convert(
        tmp_path,
        "base_model: m\nmodel_quantization_config: Mxfp4Config\nmodel_quantization_config_kwargs: "
        "{dequantise: true}\ndatasets: [{path: d.jsonl, type: alpaca}]\n",
    )
    assert sorted(e.key for e in refused.of("refused")) == [
        "model_quantization_config",
        "model_quantization_config_kwargs",
    ]
