"""The config's own model- and tokenizer-loading keys, as from_pretrained arguments.

- `overrides_of_model_config` (Axolotl's model_config): the base model's config is loaded, each key
  set on it (a key the config class does not have is a config error: setting it would change
  nothing), and the model is built from that config, so the values reach the forward and are saved
  with the model.
- `model_quantization_config` + `_kwargs`: transformers' Mxfp4Config / FineGrainedFP8Config for a
  checkpoint stored in that format (with dequantize: true its weights load unpacked).
- `tokenizer_legacy`: the tokenizer's `legacy` argument.
- `pad_vocab_to_multiple_of`: how many embedding rows the tokenizer's length becomes.
"""

from __future__ import annotations

import math
from typing import Any

from trainer.config.errors import ConfigErrors, Problem
from trainer.config.loading import overridden_config
from trainer.config.schema import TrainConfig


def model_config(config: TrainConfig) -> Any:
    """The base model's config with `overrides_of_model_config` set on it, or None without any."""
    overrides = config.overrides_of_model_config
    if not overrides:
        return None
    return overridden_config(config.base_model, overrides, config.trust_remote_code)


def quantization_config(config: TrainConfig) -> Any:
    """The transformers quantization config object `model_quantization_config` names, or None."""
    name = config.model_quantization_config
    if name is None:
        return None
    import transformers

    try:
        return getattr(transformers, name)(**config.model_quantization_config_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigErrors(
            [Problem(("model_quantization_config_kwargs",), f"rejected by {name}: {err}")]
        ) from None


def load_kwargs(config: TrainConfig, merged_kwargs: dict[str, Any]) -> dict[str, Any]:
    """from_pretrained arguments from the config's own keys (`config`, `quantization_config`); a
    plugin's quantization_config beside model_quantization_config is a config error."""
    out: dict[str, Any] = {}
    loaded = model_config(config)
    if loaded is not None:
        out["config"] = loaded
    quantization = quantization_config(config)
    if quantization is not None:
        if "quantization_config" in merged_kwargs:
            raise ConfigErrors(
                [
                    Problem(
                        ("model_quantization_config",),
                        "the adapter quantizes the base itself (QLoRA / load_in_8bit); a checkpoint stored "
                        f"as {config.model_quantization_config} cannot be quantized again",
                    )
                ]
            )
        out["quantization_config"] = quantization
    return out


def tokenizer_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {} if config.tokenizer_legacy is None else {"legacy": config.tokenizer_legacy}


def embedding_rows(tokens: int, multiple: int | None) -> int:
    """Rows for `tokens` tokens, rounded up to `multiple` (Axolotl's resize_token_embeddings_to_32x)."""
    return tokens if not multiple else math.ceil(tokens / multiple) * multiple
