"""Does a config file look like an Axolotl config? Then its errors start with how to convert it.

Our key names follow Axolotl's where they mean the same thing, so an Axolotl file half-validates and
then fails on a dozen keys (`lora_r`, `wandb_project`, `load_in_4bit`, ...) one by one. The rule here
scores only keys this tool does not have (a key of ours is no evidence either way), grouped into
families of Axolotl settings: the five `wandb_*` keys are one sign, not five. A file looks like
Axolotl's when its unknown top-level keys come from at least `THRESHOLD` different families, so no
single key (nor one family of keys) decides: a config of ours with one stray `wandb_project` is told
about that key only.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from typing import Any

# fmt: off
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # family: (exact keys, key prefixes)
    "LoRA keys": (
        ("adapter_model_dir", "relora"),
        ("lora_", "peft_", "relora_"),
    ),
    "quantized loading": (
        ("load_in_4bit", "load_in_8bit", "gptq", "bnb_config_kwargs", "model_quantization_config",
         "model_quantization_config_kwargs", "quantize_moe_experts"),
        ("gptq_",),
    ),
    "experiment tracking": (
        ("use_wandb", "use_mlflow", "use_comet"),
        ("wandb_", "mlflow_", "comet_", "trackio_", "swanlab_"),
    ),
    "preference training": (
        ("rl", "rl_beta", "reward_model", "process_reward_model", "trl", "orpo_alpha", "simpo_gamma",
         "cpo_alpha"),
        ("dpo_", "kto_", "grpo_"),
    ),
    "evaluation and saving cadence": (
        ("evals_per_epoch", "saves_per_epoch", "eval_table_size", "eval_max_new_tokens", "save_first_step",
         "eval_causal_lm_metrics", "do_causal_lm_eval", "evaluation_strategy",
         "save_only_model"),
        (),
    ),
    "attention switches": (
        ("flash_attention", "sdp_attention", "xformers_attention", "flex_attention", "s2_attention",
         "attn_implementation", "flash_optimum", "flex_attn_compile_kwargs", "fused_attn_kernel"),
        ("flash_attn_",),
    ),
    "model loading": (
        ("model_type", "tokenizer_type", "base_model_config", "tokenizer_config", "tokenizer_use_fast",
         "tokenizer_legacy", "tokenizer_use_mistral_common", "is_llama_derived_model",
         "is_mistral_derived_model", "is_falcon_derived_model", "is_qwen_derived_model", "model_config_type",
         "resize_token_embeddings_to_32x", "low_cpu_mem_usage", "hf_use_auth_token", "model_revision",
         "cls_model_config"),
        (),
    ),
    "integration plugins": (
        ("plugins", "cut_cross_entropy", "use_kernels", "torch_compile", "torch_compile_backend",
         "torch_compile_mode", "activation_offloading", "use_scattermoe", "use_sonicmoe", "tiled_mlp"),
        ("liger_", "unsloth_"),
    ),
    "parallelism keys": (
        ("fsdp", "fsdp_config", "fsdp_version", "deepspeed", "torchdistx_path", "dp_shard_size",
         "dp_replicate_size", "context_parallel_size", "tensor_parallel_size", "expert_parallel_size",
         "sequence_parallel_degree", "local_rank"),
        ("ddp_",),
    ),
    "Axolotl's other keys": (
        ("resume_from_checkpoint", "auto_resume_from_checkpoints", "hub_model_id", "hub_strategy",
         "push_dataset_to_hub", "gradient_checkpointing_kwargs", "train_on_inputs", "strict", "chat_template",
         "eot_tokens", "unfrozen_parameters", "dataset_exact_deduplication", "dataset_processes",
         "max_packed_sequence_len", "sample_packing_eff_est", "total_num_tokens", "lr_quadratic_warmup",
         "cosine_min_lr_ratio", "cosine_constant_lr_ratio", "save_safetensors", "qat", "debug",
         "default_system_message", "pretraining_dataset"),
        ("sample_packing_", "jagged_restart_"),
    ),
}
# fmt: on
"""Axolotl settings this tool has no top-level key for, by family (a family counts once)."""

THRESHOLD = 2
"""Distinct families of Axolotl-only keys that make a file look like an Axolotl config."""


def family_of(key: str) -> str | None:
    """The Axolotl family a top-level key belongs to, or None."""
    for family, (exact, prefixes) in FAMILIES.items():
        if key in exact or key.startswith(prefixes):
            return family
    return None


def axolotl_signs(data: Any, own_keys: Iterable[str]) -> dict[str, list[str]]:
    """The Axolotl-only top-level keys of `data` (parsed YAML), by family; keys in `own_keys` (this
    tool's) are never signs."""
    if not isinstance(data, dict):
        return {}
    own = set(own_keys)
    found: dict[str, list[str]] = {}
    for key in data:
        if isinstance(key, str) and key not in own:
            family = family_of(key)
            if family is not None:
                found.setdefault(family, []).append(key)
    return found


def looks_like_axolotl(data: Any, own_keys: Iterable[str]) -> bool:
    return len(axolotl_signs(data, own_keys)) >= THRESHOLD


def convert_hint(data: Any, own_keys: Iterable[str], file: str) -> str | None:
    """The line that opens the errors of an Axolotl-looking file: what it looks like, the keys that
    say so, and the command that converts it; None for a file that does not look like one."""
    signs = axolotl_signs(data, own_keys)
    if len(signs) < THRESHOLD:
        return None
    keys = [found[0] for found in signs.values()]
    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    stem = os.path.splitext(os.path.basename(file))[0] or "config"
    command = f"python -m trainer.cli.convert {shlex.quote(file)} -o {shlex.quote(stem + '.trainer.yml')}"
    return f"{file} looks like an Axolotl config (Axolotl-only keys: {shown}); convert it with: {command}"
