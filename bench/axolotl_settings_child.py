"""Axolotl's side of bench/axolotl_settings.py, run by the python of Axolotl's own venv.

`python axolotl_settings_child.py CONFIG.yml MODEL_DIR OUT.json`: Axolotl's `load_cfg` (load,
validate, normalize) on CONFIG.yml, its `load_lora` on the tiny model at MODEL_DIR for the LoRA
modules it really adapts, and its tokenizer + dataset wrapper on the first dataset's rows for the
labels of the first row; all written to OUT.json. Imports only Axolotl's environment and the
standard library (this repo's packages are not on its path).
"""

from __future__ import annotations

import json
import sys
from typing import Any

KEYS = (
    "learning_rate", "lr_scheduler", "cosine_min_lr_ratio", "warmup_steps", "warmup_ratio",
    "micro_batch_size", "gradient_accumulation_steps", "batch_size", "world_size", "num_epochs",
    "max_steps", "sequence_len", "sample_packing", "pad_to_sequence_len", "eval_sample_packing",
    "adapter", "load_in_4bit", "load_in_8bit", "lora_r", "lora_alpha", "lora_dropout",
    "optimizer", "weight_decay", "bf16", "fp16", "tf32", "train_on_inputs", "fsdp_version",
    "val_set_size", "seed", "unfrozen_parameters",
)  # fmt: skip
DATASET_KEYS = ("type", "roles_to_train", "train_on_eos", "chat_template")


def plain(value: Any) -> Any:
    """A JSON-able copy of a config value (DictDefault, torch dtypes, ...)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def main(config: str, model_dir: str, out: str) -> None:
    from axolotl.cli.config import load_cfg

    cfg = load_cfg(config)
    found: dict[str, Any] = {key: plain(cfg.get(key)) for key in KEYS}
    found["datasets"] = [{k: plain(d[k]) for k in DATASET_KEYS if k in d} for d in cfg.datasets or []]
    deepspeed = cfg.get("deepspeed")
    found["deepspeed_stage"] = (
        (deepspeed or {}).get("zero_optimization", {}).get("stage") if deepspeed else None
    )
    found["fsdp"] = bool(cfg.get("fsdp") or cfg.get("fsdp_config"))
    if cfg.adapter in ("lora", "qlora"):
        import torch
        from axolotl.loaders.adapter import load_lora
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model, lora_config = load_lora(model, cfg)
        found["lora_modules"] = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
        )
        found["peft"] = {
            "r": lora_config.r,
            "alpha": lora_config.lora_alpha,
            "dropout": lora_config.lora_dropout,
        }
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.data.sft import _load_and_process_single_dataset

    tokenizer = load_tokenizer(cfg)
    rows, _ = _load_and_process_single_dataset(
        dataset_config=cfg.datasets[0], cfg=cfg, tokenizer=tokenizer, split="train", seed=cfg.seed
    )
    found["row"] = {"input_ids": list(rows[0]["input_ids"]), "labels": list(rows[0]["labels"])}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(found, handle, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
