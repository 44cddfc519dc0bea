"""docs/axolotl.md, generated from the converter's own tables and the inventory, so the page cannot
drift from what `trainer convert` does: `python -m trainer.tools.axolotl.docs > docs/axolotl.md`
(tests/test_convert.py checks the file is current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.tools.axolotl import convert as rules

SETTINGS_RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results" / "axolotl_settings.md"
"""bench/axolotl_settings.py's committed report: converted examples against Axolotl's own settings."""

HEADER = """# Coming from Axolotl

`python -m trainer.cli.convert AXOLOTL.yml -o OURS.yml` (or `trainer convert`) converts an Axolotl
config. Every key of the input is accounted for:

- **carried**: renamed or reshaped into our config; the written file names the Axolotl key(s)
  beside each value;
- **dropped**, with a note naming the key, its line and what it did in Axolotl: null placeholders,
  off switches, Axolotl's defaults, keys Axolotl itself ignores (it drops unknown keys silently), and
  settings that only change speed, memory, logging or the hub;
- **refused**: a setting that changes what is trained and has no counterpart here. Then the command
  exits 2, lists each as `FILE:LINE key: what it does in Axolotl, and why it cannot be carried`, and
  writes nothing.

A converted config is validated (as `validate --skip-machine-checks`: relative paths from the
current folder; a model or data path that is not on this machine is a note) before it is written:
a value it rejects is refused like any other, as the Axolotl key it came from, at its line. `-o`
never overwrites a file. Read as Axolotl reads it: a key written twice keeps its last value
(`yaml.safe_load`), a dataset option Axolotl does not know, or that the entry's type does not
read, is dropped with a note, and a value of a type Axolotl's schema rejects (a list where it takes a
number, ...) is refused with the type it takes. Where Axolotl's defaults
differ from ours they are written out, so the converted run does what the Axolotl run did.
`train` and `validate` given an Axolotl file say so in their first error line.

This page is generated from the converter (`python -m trainer.tools.axolotl.docs`); the inventory
of Axolotl's keys (`trainer/tools/axolotl/keys.yaml`) was read from Axolotl 0.21.0's config schema.
"""


SECTIONS = (
    ("drop", "Dropped when set (no effect on what trains, or logging/hub/speed/memory)"),
    ("refuse", "Refused when set to anything but its default (changes what trains; no counterpart)"),
)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def carried_rows() -> list[str]:
    rows = [_row(key, f"`{ours}`", "same meaning") for key, ours in rules.SAME.items()]
    rows += [
        _row(key, f"`trainer_args.{ours}`", "a TrainingArguments field")
        for key, ours in rules.TRAINER_ARGS.items()
    ]
    rows += [_row(key, f"`filters.{ours}`", "") for key, ours in rules.FILTERS.items()]
    rows += [
        _row(
            "val_set_size",
            "`val_set_size`",
            "a share (< 1) or a row count; Axolotl's 1 (all rows) is refused",
        ),
        _row("special_tokens", "`special_tokens` (+ `tokens`)", "additional_special_tokens become tokens"),
        _row(
            "adapter, load_in_4bit, load_in_8bit",
            "`adapter: {type: lora / qlora}`",
            "4-bit: qlora; 8-bit: lora's load_in_8bit",
        ),
        *[_row(key, f"`adapter.{ours}`", "") for key, ours in rules.LORA_KEYS.items()],
        _row(
            "lora_target_linear",
            "`adapter.target_modules: all-linear`",
            "neither it nor lora_target_modules: refused",
        ),
        _row("bnb_config_kwargs", "`adapter.quant_type`, `adapter.double_quant`", "qlora"),
        _row(
            "unfrozen_parameters",
            "`adapter.unfrozen_parameters`",
            "beside lora/qlora (whole modules, not quantized ones); without an adapter: full",
        ),
        _row("lora_target_parameters", "`adapter.target_parameters`", "LoRA on raw (MoE expert) parameters"),
        _row(
            "quantize_moe_experts",
            "`adapter.quantize_moe_experts`",
            "with load_in_4bit (4-bit experts) or lora's load_in_8bit (8-bit), else refused",
        ),
        _row(
            "llama4_linearized_experts",
            "`adapter.llama4_linearized_experts`",
            "linearized on load from the original checkpoint; Axolotl's pre-linearized base_model: refused",
        ),
        _row(
            "attn_implementation",
            "`attention`",
            "hub flash-attention kernels: flash_attention_2/3; xformers: sdpa",
        ),
        *[_row(key, f"`attention: {ours}`", "") for key, ours in rules.ATTENTION_SWITCHES.items()],
        *[_row(key, f"`kernels: [{{type: liger, {ours}: ...}}]`", "") for key, ours in rules.LIGER.items()],
        *[
            _row(
                key,
                "`run_name`" if target == "run_name" else f"environment `{target}`",
                f"report_to: {report}",
            )
            for key, (report, target) in rules.TRACKERS.items()
        ],
        _row("use_tensorboard", "`report_to: tensorboard`", ""),
        _row(
            "saves_per_epoch", "`save_strategy` + `save_steps`", "1/(n x num_epochs) of the steps, as Axolotl"
        ),
        _row("evals_per_epoch", "`eval_strategy` + `eval_steps`", "only with an eval split, as Axolotl"),
        _row(
            "deepspeed (a JSON file)",
            "`distributed: {type: deepspeed, config_file}`",
            "an inline dict is refused",
        ),
        _row(
            "fsdp, fsdp_config, fsdp_version",
            "`distributed: {type: fsdp, ...}`",
            "offload_params, activation_checkpointing, transformer_layer_cls_to_wrap, state_dict_type, "
            "reshard_after_forward, cpu_ram_efficient_loading (not with a quantized base, a "
            "PiSSA/OLoRA/LoftQ init or a preference method)",
        ),
        _row(
            "datasets, test_datasets",
            "the same lists",
            "types: "
            + ", ".join(f"{k} -> {v}" for k, v in rules.DATASET_TYPES.items())
            + "; no type -> pretokenized",
        ),
        _row(
            ", ".join(rules.GLOBAL_DATASET_KEYS),
            "each chat_template dataset entry",
            "Axolotl applies them to every dataset",
        ),
        _row(
            "chat_template names",
            "`chat_template`",
            "each to our built-in of the same name (Axolotl's Jinja files, shipped as built-ins): "
            + ", ".join(rules.TEMPLATES)
            + "; gemma: ours, with a caveat; tokenizer_default_fallback_*: refused",
        ),
        _row(
            "datasets[].field_thinking, template_thinking_key",
            "the same keys (chat_template)",
            "the reasoning reaches the template under template_thinking_key and trains with its message",
        ),
        _row("resume_from_checkpoint / auto_resume_from_checkpoints", "`resume: PATH` / `resume: auto`", ""),
        _row(
            "qat",
            "`qat`",
            "torchao fake quantization (docs/qat.md); dtype names as ours (float8 -> fp8), Axolotl's "
            "group_size 32 written out; mxfp4 quantizes activations too; what Axolotl refuses (int8 "
            "weights alone, NVFP4 without group_size 16, an adapter) and ternary: refused",
        ),
        _row("optimizer", "`optimizer`", "when we have it (Axolotl's own optimizers are refused)"),
        _row(
            "lr_scheduler (+ cosine_min_lr_ratio)", "`lr_scheduler` (`cosine_with_min_lr` + min_lr_rate)", ""
        ),
        _row(
            "rl",
            "`method: {type: ...}`",
            ", ".join(f"{k} -> {v}" for k, v in rules.RL_METHODS.items())
            + " (loss_type: ipo); refused: "
            + ", ".join(rules.RL_REFUSED),
        ),
        _row(
            "reward_model",
            "`method: {type: reward}`",
            "num_labels 1 dropped; Axolotl's padding changes no score",
        ),
        _row(
            ", ".join(rules.BETA_KEYS) + ", trl.beta",
            "`method.beta`",
            "one value (conflicting values refused); orpo_alpha only with rl: orpo",
        ),
        *[
            _row(key, f"`method.{ours}`", f"rl: {', '.join(methods)}")
            for key, (ours, methods) in rules.METHOD_OPTIONS.items()
        ],
        _row("dpo_loss_type", "`method.loss_type`", "rl: dpo (one entry: a name; several: a list)"),
        _row(
            "(rl: simpo)",
            ", ".join(f"`method.{k}: {v}`" for k, v in rules.METHOD_DEFAULTS["simpo"].items()),
            "TRL's CPOConfig defaults, which Axolotl leaves in place",
        ),
        _row(
            "preference datasets",
            "`preference` / `kto`",
            "chat_template.default -> preference (prompt_field: field_messages, the chat template); "
            + ", ".join(
                f"chatml/llama3.{k} -> preference (prompt_field: {v[0]})" for k, v in rules.FLAT_PAIRS.items()
            )
            + "; "
            + ", ".join(
                f"chatml/llama3.{k} (kto) -> kto (prompt_field: {v})" for k, v in rules.FLAT_KTO.items()
            )
            + "; bradley_terry.chat_template (llama3) -> preference (prompt_field: input; too_long: "
            "truncate)",
        ),
    ]
    return rows


def inventory_rows(status: str) -> list[str]:
    keys: dict[str, Any] = rules.inventory()["keys"]
    rows = []
    for key in sorted(keys):
        info = keys[key]
        if info.get("proposal") == status:
            rows.append(_row(key, info.get("what", ""), info.get("reason", "")))
    return rows


def render() -> str:
    parts = [
        HEADER,
        "## Carried",
        "",
        _row("Axolotl", "ours", "note"),
        _row("---", "---", "---"),
        *carried_rows(),
    ]
    parts += [
        "",
        "## Axolotl's defaults written out (where ours differ)",
        "",
        _row("key", "value", "why"),
        _row("---", "---", "---"),
    ]
    parts += [_row(k, v, why) for k, (v, why) in rules.DEFAULTS_THAT_DIFFER.items()]
    parts += [
        _row("warmup_ratio", 0.03, "Axolotl warms up 3% of the steps (at most 100) when no warmup is set")
    ]
    parts += [_row("pad_to_sequence_len, eval_sample_packing", "true", "with sample_packing, as Axolotl")]
    parts += [_row("adapter.dropout", 0.0, "Axolotl's default lora_dropout")]
    for status, title in SECTIONS:
        parts += [
            "",
            f"## {title}",
            "",
            _row("key", "what it does in Axolotl", "why"),
            _row("---", "---", "---"),
        ]
        parts += inventory_rows(status)
    parts += [
        "",
        "Keys the inventory marks `carry` but no rule above carries yet are refused with that said;",
        "any key set to null, false or Axolotl's default is dropped whatever its row says.",
    ]
    parts += settings_check()
    return "\n".join(parts) + "\n"


def settings_check() -> list[str]:
    """The section that shows converted examples reach Axolotl's own effective settings (from
    bench/results/axolotl_settings.md; none where the file is absent, e.g. an installed package)."""
    if not SETTINGS_RESULTS.is_file():
        return []
    return [
        "",
        "## Checked against Axolotl's own normalized config",
        "",
        "`bench/axolotl_settings.py` converts example configs and compares, key by key, the settings",
        "our resolved config trains with to those Axolotl's own config loading, validation and",
        "normalization give, and the masking of a sample row as each side tokenizes it.",
        "",
        *SETTINGS_RESULTS.read_text(encoding="utf-8").rstrip("\n").split("\n"),
    ]


if __name__ == "__main__":
    print(render(), end="")
