"""What an adapter run's files say about its adapter, read without loading a model: a one-line
description (`QLoRA (LoRA trained on a 4-bit base; r=8, alpha=16)`) and the rows of full embedding
matrices saved with it (a run that added tokens). Shared by merge and the inference loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def describe_adapter(adapter_config: dict[str, Any], quantized_bits: int | None) -> str:
    """E.g. 'QLoRA (LoRA trained on a 4-bit base; r=8, alpha=16)' or 'DoRA (r=8, alpha=16)'."""
    peft_type = str(adapter_config.get("peft_type", "LORA")).upper()
    use_dora = bool(adapter_config.get("use_dora"))
    method = "DoRA" if use_dora else ("LoRA" if peft_type == "LORA" else peft_type)
    details = [
        f"{key}={_number(adapter_config[name])}"
        for key, name in (("r", "r"), ("alpha", "lora_alpha"))
        if adapter_config.get(name) is not None
    ]
    if adapter_config.get("modules_to_save"):
        details.append(f"modules_to_save={adapter_config['modules_to_save']}")
    if quantized_bits:
        name = "QDoRA" if use_dora else "QLoRA"
        base = f"{method} trained on a {quantized_bits}-bit base"
        return f"{name} ({'; '.join([base, ', '.join(details)]) if details else base})"
    return f"{method} ({', '.join(details)})" if details else method


def embedding_rows(weights: Path) -> int | None:
    """Rows of a full embedding / output matrix saved with the adapter (a run that added tokens)."""
    if weights.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    rows = []
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if "lora_" in key or not key.endswith(".weight"):
                continue
            if any(
                part in key for part in ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")
            ):
                shape = handle.get_slice(key).get_shape()
                if len(shape) == 2:
                    rows.append(int(shape[0]))
    return max(rows) if rows else None
