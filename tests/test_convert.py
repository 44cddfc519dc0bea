"""`python -m trainer.cli.convert`: every Axolotl example config in ../shared/axolotl-configs converts
without a traceback, exits 0 or 2, accounts for every one of its keys, and an exit-0 output passes
`validate --skip-machine-checks`; a converted LoRA config carries Axolotl's meaning (values checked),
a refusal names FILE:LINE and writes nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_command

CONFIGS = Path(os.environ.get("AXOLOTL_CONFIGS", REPO.parent / "shared" / "axolotl-configs"))
EXAMPLES = sorted((CONFIGS / "examples").rglob("*.y*ml")) if CONFIGS.is_dir() else []
FLOOR = 0.82
"""Share of all the example configs that convert with exit 0 now (62 of 75 = 83%); a drop below is a
regression."""
SFT_TARGET = 0.80
"""The issue's target: 80% of the supervised ones (without rl: or reward_model:) convert (59 of 69 now)."""

needs_configs = pytest.mark.skipif(not EXAMPLES, reason=f"Axolotl's example configs are not at {CONFIGS}")


def top_level_keys(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return list(data) if isinstance(data, dict) else []


@needs_configs
def test_every_example_config_is_accounted_for(tmp_path: Path) -> None:
    from trainer.tools.axolotl.validate import convert_checked

    converted, sft, sft_converted = 0, 0, 0
    for number, config in enumerate(EXAMPLES):
        given = yaml.safe_load(config.read_text(encoding="utf-8"))
        supervised = not (given.get("rl") or given.get("reward_model"))
        sft += supervised
        relative = config.relative_to(CONFIGS)
        out = tmp_path / f"{number}.yml"
        done = run_command("convert", relative, "-o", out, cwd=CONFIGS)
        assert done.returncode in (0, 2), (relative, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (relative, done.stderr[-2000:])
        conversion = convert_checked(str(config))
        accounted = {entry.key for entry in conversion.entries}
        for key in top_level_keys(config):
            assert any(k == key or k.startswith((f"{key}[", f"{key}.")) for k in accounted), (relative, key)
        if done.returncode == 0:
            converted += 1
            sft_converted += supervised
            assert not conversion.of("refused")
            checked = run_command("validate", "--skip-machine-checks", out, cwd=CONFIGS)
            assert checked.returncode == 0, (relative, checked.stderr[-2000:])
        else:
            assert not out.exists()
            refused = conversion.of("refused")
            lines = [f"{relative}:{e.where.rsplit(':', 1)[-1]}  {e.key}: " for e in refused]
            assert refused and all(line in done.stderr for line in lines), (relative, done.stderr[-2000:])
    share = converted / len(EXAMPLES)
    print(f"converted with exit 0: {converted} of {len(EXAMPLES)} ({share:.0%})")
    assert share >= FLOOR, f"{converted} of {len(EXAMPLES)}"
    print(f"supervised: {sft_converted} of {sft} ({sft_converted / sft:.0%})")
    assert sft_converted / sft >= SFT_TARGET, f"{sft_converted} of {sft} supervised configs"


@needs_configs
def test_a_lora_config_carries_axolotls_meaning(tmp_path: Path) -> None:
    out = tmp_path / "lora.yml"
    done = run_command("convert", "examples/llama-3/lora-1b.yml", "-o", out, cwd=CONFIGS)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert config["adapter"] == {
        "type": "lora",
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"],
    }
    assert config["datasets"] == [{"type": "alpaca", "path": "teknium/GPT4-LLM-Cleaned"}]
    # evals_per_epoch 4 over 1 epoch: an eval every quarter of the steps; saves_per_epoch 1: each epoch
    assert (config["eval_strategy"], config["eval_steps"], config["save_strategy"]) == (
        "steps",
        0.25,
        "epoch",
    )
    assert config["pad_to_sequence_len"] is True  # Axolotl pads packed rows; ours would not by default
    assert config["bf16"] == "auto" and config["attention"] == "flash_attention_2"
    assert "adapter:  # adapter, lora_r, lora_alpha, lora_dropout, lora_target_modules" in text
    assert "examples/llama-3/lora-1b.yml:33  wandb_entity: unset" in text  # dropped, with its line
    assert "lora_r -> adapter.r" in done.stderr and "dropped (7):" in done.stderr


@needs_configs
def test_defaults_that_differ_are_written_out(tmp_path: Path) -> None:
    source = tmp_path / "minimal.yml"
    source.write_text(
        "base_model: NousResearch/Llama-3.2-1B\n"
        "datasets:\n  - path: data.jsonl\n    type: alpaca\n"
        "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
        "sample_packing: true\nmicro_batch_size: 2\nnum_epochs: 1\n",
        encoding="utf-8",
    )
    (tmp_path / "data.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    out = tmp_path / "out.yml"
    done = run_command("convert", source, "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(out.read_text())
    assert config["sequence_len"] == 512 and config["optimizer"] == "adamw_torch_fused"
    assert config["adapter"]["dropout"] == 0.0 and config["adapter"]["target_modules"] == "all-linear"
    assert config["warmup_ratio"] == 0.03 and config["pad_to_sequence_len"] is True
    assert config["bf16"] == config["tf32"] == "auto" and config["output_dir"] == "./model-out"


def test_refusals_name_the_line_and_write_nothing(tmp_path: Path) -> None:
    source = tmp_path / "axolotl.yml"
    source.write_text(
        "base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n"
        "relora: true\noptimizer: muon\nadapter: lora\nlora_r: 8\nlora_alpha: 16\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.yml"
    done = run_command("convert", source, "-o", out, cwd=tmp_path)
    assert done.returncode == 2 and not out.exists()
    assert "cannot be carried; nothing written" in done.stderr
    assert (
        f"{source}:5  relora: " in done.stderr and f"{source}:6  optimizer: optimizer 'muon'" in done.stderr
    )
    assert f"{source}:7  adapter: neither lora_target_modules nor lora_target_linear" in done.stderr
    existing = tmp_path / "existing.yml"
    existing.write_text("keep\n")
    again = run_command("convert", source, "-o", existing, cwd=tmp_path)
    assert (
        again.returncode == 2 and "refusing to overwrite" in again.stderr and existing.read_text() == "keep\n"
    )


def test_docs_axolotl_md_is_generated_from_the_converter() -> None:
    from trainer.tools.axolotl.docs import render

    written = (REPO / "docs" / "axolotl.md").read_text(encoding="utf-8")
    assert written == render(), "regenerate: python -m trainer.tools.axolotl.docs > docs/axolotl.md"


PREFERENCE_EXAMPLES = {  # example config -> (the method block, the first dataset entry) or a refusal
    "llama-3/instruct-dpo-lora-8b.yml": (
        {"type": "dpo"},
        {"type": "preference", "path": "fozziethebeat/alpaca_messages_2k_dpo_test", "chat_template": "llama3",
         "prompt_field": "conversation"},
    ),
    "mistral/dpo/mistral-dpo-qlora.yml": (
        {"type": "dpo"},
        {"type": "preference", "path": "olivermolenschot/alpaca_messages_dpo_test", "chat_template": "chatml",
         "prompt_field": "conversation"},
    ),
    "llama-3/qlora-1b-kto.yaml": (
        {"type": "kto", "beta": 0.5, "desirable_weight": 0.2},
        {"type": "kto", "prompt_field": "prompt", "chat_template": "llama3",
         "path": "argilla/ultrafeedback-binarized-preferences-cleaned-kto", "split": "train"},
    ),
    "qwen2/reward-model.yaml": ":13  datasets[0].type: bradley_terry.chat_template with chat template "
    "'qwen_25'",
    "llama-3/qlora-1b-gdpo.yaml": ":5  rl: 'gdpo': GDPO",
    "ebft/llama-1b-ebft-strided.yaml": ":7  rl: 'ebft': energy-based fine-tuning (EBFT) has no counterpart",
}  # fmt: skip


@needs_configs
@pytest.mark.parametrize("name", sorted(PREFERENCE_EXAMPLES))
def test_preference_examples_convert_or_are_refused(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.yml"
    done = run_command("convert", f"examples/{name}", "-o", out, cwd=CONFIGS)
    expected = PREFERENCE_EXAMPLES[name]
    if isinstance(expected, str):
        assert done.returncode == 2 and not out.exists(), done.stderr
        assert f"examples/{name}{expected}" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert config["method"] == expected[0] and config["datasets"][0] == expected[1]
    assert run_command("validate", "--skip-machine-checks", out, cwd=CONFIGS).returncode == 0


def test_every_rl_example_config_is_listed() -> None:
    listed = {CONFIGS / "examples" / name for name in PREFERENCE_EXAMPLES}
    preference = {p for p in EXAMPLES if {"rl", "reward_model"} & set(top_level_keys(p))}
    assert preference <= listed


def _convert(tmp_path: Path, text: str, rows: str = "{}\n") -> tuple[int, str, dict[str, Any]]:
    """Convert a LoRA config ending in `text` (data files named intel/argilla/ultra/d/bt hold `rows`):
    exit status, stderr, and the written config ({} when none)."""
    for name in ("intel", "argilla", "ultra", "d", "bt"):
        (tmp_path / f"{name}.jsonl").write_text(rows)
    source = tmp_path / "axolotl.yml"
    source.write_text(
        "base_model: m\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n" + text
    )
    out = tmp_path / "out.yml"
    out.unlink(missing_ok=True)
    done = run_command("convert", source, "-o", out, cwd=tmp_path)
    return done.returncode, done.stderr, yaml.safe_load(out.read_text()) if out.exists() else {}


def test_preference_rules(tmp_path: Path) -> None:
    intel = "datasets:\n  - path: intel.jsonl\n    type: chatml.intel\n"
    code, err, config = _convert(tmp_path, "rl: ipo\ntrl:\n  beta: 0.2\n" + intel)
    assert code == 0, err
    assert config["method"] == {"type": "dpo", "beta": 0.2, "loss_type": "ipo"}
    assert config["datasets"] == [
        {"type": "preference", "prompt_field": "question", "chat_template": "chatml", "path": "intel.jsonl"}
    ]
    assert "(an empty system field gives no system turn in both)" in err
    code, err, config = _convert(
        tmp_path, "rl: simpo\nsimpo_gamma: 0.8\n" + intel.replace("intel", "argilla")
    )
    assert code == 0, err
    assert config["method"] == {"type": "simpo", "gamma": 0.8, "beta": 0.1, "cpo_alpha": 1.0}
    assert config["datasets"][0]["chosen_field"] == "chosen_response"
    code, err, _ = _convert(tmp_path, "rl: dpo\nrl_beta: 0.1\ndpo_beta: 0.3\n" + intel)
    assert code == 2 and "conflicting betas (rl_beta: 0.1, dpo_beta: 0.3)" in err, err
    code, err, _ = _convert(tmp_path, "rl: dpo\n" + intel.replace("intel", "ultra"))
    assert code == 2 and "chosen[1].content" in err, err
    code, err, _ = _convert(tmp_path, "rl: grpo\ntrl:\n  reward_funcs: [rwd.f]\n" + intel)
    assert code == 2 and "trl.reward_funcs" in err and "cannot be imported" in err, err
    chat = (
        "rl: dpo\ndatasets:\n  - path: d.jsonl\n    type: chat_template.default\n"
        "    message_property_mappings: {role: from, content: value}\n"
    )
    code, err, _ = _convert(tmp_path, chat)
    assert code == 2 and "renames message fields" in err, err
    reward = (
        "reward_model: true\nchat_template: llama3\n"
        "datasets:\n  - path: bt.jsonl\n    type: bradley_terry.chat_template\n"
    )
    code, err, config = _convert(tmp_path, reward)
    assert code == 0, err
    assert config["method"] == {"type": "reward"} and config["too_long"] == "truncate"
    assert config["datasets"][0] == {
        "type": "preference",
        "prompt_field": "input",
        "path": "bt.jsonl",
        "chat_template": "llama3",
    }
    code, err, _ = _convert(tmp_path, reward.replace("llama3", "chatml"))
    assert code == 2 and "read at another token" in err, err


def test_general_rules_of_axolotls_reading(tmp_path: Path) -> None:
    """Read as Axolotl reads it: a key written twice keeps its last value (yaml.safe_load), a dataset
    option Axolotl does not know or that the dataset's type does not read is dropped with a note,
    save_steps/eval_steps switch their strategy to steps, fp16 turns bf16's auto off, and Axolotl
    keeps 4 checkpoints unless told otherwise. A dataset path missing here (the cluster's) is a
    machine note for `validate --skip-machine-checks`, not an error."""
    code, stderr, config = _convert(
        tmp_path,
        "output_dir: ./first\noutput_dir: ./second\n"
        "datasets:\n  - path: /cluster/data/train.jsonl\n    type: alpaca\n"
        "    field_messages: conversations\n    dataset_prepared_path: ./prepared\n"
        "val_set_size: 0.1\nsave_steps: 50\neval_steps: 25\nfp16: true\n",
    )
    assert code == 0, stderr
    assert config["output_dir"] == "./second"
    assert "axolotl.yml:6  output_dir: written again at line 7: the last value wins" in stderr
    assert config["datasets"] == [{"path": "/cluster/data/train.jsonl", "type": "alpaca"}]
    assert "datasets[0].field_messages: read only by chat types; 'alpaca' ignores it" in stderr
    assert "datasets[0].dataset_prepared_path: not an Axolotl dataset option" in stderr
    assert (config["save_strategy"], config["save_steps"]) == ("steps", 50)
    assert (config["eval_strategy"], config["eval_steps"]) == ("steps", 25)
    assert config["fp16"] is True and config["bf16"] is False and config["save_total_limit"] == 4
    out = tmp_path / "out.yml"
    strict = run_command("validate", out, cwd=tmp_path)
    assert strict.returncode == 2 and "dataset '/cluster/data/train.jsonl' does not exist" in strict.stderr
    relaxed = run_command("validate", "--skip-machine-checks", out, cwd=tmp_path)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "dataset '/cluster/data/train.jsonl' does not exist" in relaxed.stdout + relaxed.stderr


def test_axolotl_instruction_types_become_alpaca_options(tmp_path: Path) -> None:
    """alpaca:phi, alpaca_chat.*, alpaca_w_system.*, oasst, summarizetldr and a user-defined type: dict
    carry onto our alpaca formatter's prompt_style and options (their texts are checked against
    Axolotl's in tests/test_alpaca_styles.py); the output validates. Types whose rows Axolotl reshapes
    stay refused, each named."""
    code, stderr, config = _convert(
        tmp_path,
        "train_on_inputs: true\ndatasets:\n"
        "  - path: d.jsonl\n    type: alpaca:phi\n"
        "  - path: d.jsonl\n    type: alpaca_chat\n    conversation: chatml\n"
        "  - path: d.jsonl\n    type: alpaca_w_system.load_open_orca\n"
        "  - path: d.jsonl\n    type: oasst\n    field: ignored\n"
        "  - path: d.jsonl\n    type:\n      field_output: answer\n"
        "      format: '[INST] {instruction} {input} [/INST]'\n"
        "      no_input_format: '[INST] {instruction} [/INST]'\n      system_prompt: Be kind.\n",
    )
    assert code == 0, stderr
    phi, chat, orca, oasst, custom = config["datasets"]
    assert phi == {"type": "alpaca", "prompt_style": "phi", "path": "d.jsonl", "train_on_prompt": True}
    assert chat["prompt_style"] == "chatml" and "conversation" not in chat
    assert (orca["prompt_style"], orca["instruction_field"], orca["system_field"]) == (
        "open_orca", "question", "system_prompt",
    )  # fmt: skip
    assert oasst["instruction_field"] == "INSTRUCTION" and oasst["input_field"] is None
    assert "datasets[3].field: not read by dataset type 'oasst'" in stderr
    assert custom["turn_format"] == "[INST] {instruction} {input} [/INST]"
    assert (custom["system_prompt"], custom["system_format"], custom["output_field"]) == (
        "Be kind.", "{system}", "answer",
    )  # fmt: skip
    checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

    for kind, why in (("jeopardy", "what is"), ("context_qa.load_v2", "joins two columns"),
                      ("alpaca:vicuna", "not one of Axolotl's")):  # fmt: skip
        code, stderr, _ = _convert(tmp_path, f"datasets:\n  - path: d.jsonl\n    type: {kind}\n")
        assert code == 2 and f"datasets[0].type: dataset type '{kind}'" in stderr and why in stderr, stderr


def test_curriculum_fan_in_fan_out_and_rms_norm_keys(tmp_path: Path) -> None:
    """curriculum_sampling -> sampler: sequential (one dataset: unshuffled too, as Axolotl);
    lora_fan_in_fan_out -> adapter.fan_in_fan_out; flash_attn_rms_norm is dropped (speed only)."""
    one = "datasets:\n  - path: d.jsonl\n    type: alpaca\n"
    keys = "curriculum_sampling: true\nlora_fan_in_fan_out: true\nflash_attn_rms_norm: true\n"
    code, stderr, config = _convert(tmp_path, one + keys)
    assert code == 0, stderr
    assert (config["sampler"], config["shuffle"]) == ("sequential", False)
    assert config["adapter"]["fan_in_fan_out"] is True
    assert "flash_attn_rms_norm: Removed flash-attn RMSNorm patch; speed-only" in stderr
    checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    two = one + "  - path: d.jsonl\n    type: alpaca\n"
    code, stderr, config = _convert(tmp_path, two + "curriculum_sampling: true\n")
    assert code == 0 and config["sampler"] == "sequential" and "shuffle" not in config  # shuffled once
    ordered = two + "curriculum_sampling: true\nshuffle_merged_datasets: false\n"
    code, stderr, config = _convert(tmp_path, ordered)
    assert code == 0 and config["shuffle"] is False, stderr
    code, stderr, _ = _convert(tmp_path, ordered + "shuffle_before_merging_datasets: true\n")
    assert code == 2 and "shuffle_before_merging_datasets: with curriculum_sampling" in stderr


def test_training_switches_carried_as_they_are(tmp_path: Path) -> None:
    """dataloader_drop_last / full_determinism / greater_is_better / lr_scheduler_kwargs go to
    trainer_args (beside adam_beta2 and cosine_min_lr_ratio's kwargs, which stay), excess_length_strategy
    to too_long, batch_flattening to padding_free, xformers_attention to sdpa; raise is refused."""
    one = "datasets:\n  - path: d.jsonl\n    type: alpaca\n"
    code, stderr, config = _convert(
        tmp_path,
        one + "dataloader_drop_last: true\nfull_determinism: true\ngreater_is_better: true\n"
        "metric_for_best_model: eval_loss\nlr_scheduler: cosine_with_restarts\n"
        "lr_scheduler_kwargs:\n  num_cycles: 2\nadam_beta2: 0.95\nexcess_length_strategy: truncate\n"
        "batch_flattening: true\nxformers_attention: true\n",
    )
    assert code == 0, stderr
    assert config["trainer_args"] == {
        "adam_beta2": 0.95,
        "dataloader_drop_last": True,
        "full_determinism": True,
        "greater_is_better": True,
        "lr_scheduler_kwargs": {"num_cycles": 2},
    }
    assert (config["too_long"], config["padding_free"], config["attention"]) == ("truncate", True, "sdpa")
    checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    code, stderr, config = _convert(tmp_path, one + "adam_beta2: 0.95\ncosine_min_lr_ratio: 0.1\n")
    kwargs = {"min_lr_rate": 0.1}
    assert code == 0 and config["trainer_args"] == {"adam_beta2": 0.95, "lr_scheduler_kwargs": kwargs}
    code, stderr, _ = _convert(tmp_path, one + "excess_length_strategy: raise\n")
    assert code == 2 and "excess_length_strategy: 'raise'" in stderr


def test_chat_data_keeps_axolotls_default_role_names(tmp_path: Path, tiny_model: Path) -> None:
    """Without `roles:`, Axolotl reads ShareGPT's `human`/`gpt` as user/assistant; the converted entry
    says so, and the row trains the same answer tokens (bench/axolotl_settings.py found the miss)."""
    (tmp_path / "chat.jsonl").write_text(
        '{"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}\n' * 4
    )
    source = tmp_path / "axolotl.yml"
    source.write_text(
        f"base_model: {tiny_model}\nchat_template: chatml\ndatasets:\n  - path: chat.jsonl\n"
        "    type: chat_template\n    field_messages: conversations\n"
        "    message_property_mappings: {role: from, content: value}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.yml"
    done = run_command("convert", source, "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    entry = yaml.safe_load(out.read_text())["datasets"][0]
    assert entry["roles"] == {"user": ["human"], "assistant": ["gpt"]}
    shown = run_command("preprocess", out, "--show", "1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n[[Hello.<|im_end|>]]" in shown.stdout


def test_old_sharegpt_configs_follow_axolotls_migration(tmp_path: Path) -> None:
    """Old configs: `type: sharegpt` (removed from Axolotl, whose error says to use chat_template with
    conversations/from/value) becomes our sharegpt formatter with the template `conversation:` named;
    a FastChat template we do not have is refused; base_model_config equal to base_model is dropped."""
    code, stderr, config = _convert(
        tmp_path,
        "base_model_config: m\ndatasets:\n  - path: d.jsonl\n    type: sharegpt\n    conversation: chatml\n",
    )
    assert code == 0, stderr
    assert config["datasets"] == [{"type": "sharegpt", "chat_template": "chatml", "path": "d.jsonl"}]
    assert "current Axolotl rejects sharegpt types" in stderr
    assert "base_model_config: the same as base_model" in stderr
    code, stderr, _ = _convert(
        tmp_path, "datasets:\n  - path: d.jsonl\n    type: sharegpt\n    conversation: vicuna_v1.1\n"
    )
    assert code == 2 and "datasets[0].conversation: FastChat conversation template 'vicuna_v1.1'" in stderr
    code, stderr, _ = _convert(tmp_path, "base_model_config: other/model\ndatasets:\n  - path: d.jsonl\n")
    assert code == 2 and "base_model_config: " in stderr


def test_keys_another_mode_reads_are_dropped_and_bnb_kwargs_carried(tmp_path: Path) -> None:
    """A DPO beta in an SFT config, or 4-bit settings beside an 8-bit load, did nothing in Axolotl:
    dropped with that reason. Under qlora each bitsandbytes setting lands on its adapter option, the
    8-bit-only ones are noted, and one with no counterpart is refused."""
    code, stderr, config = _convert(
        tmp_path,
        "datasets:\n  - path: d.jsonl\n    type: alpaca\ndpo_beta: 0.2\nload_in_8bit: true\n"
        "bnb_config_kwargs: {bnb_4bit_quant_type: fp4}\n",
    )
    assert code == 0, stderr
    assert "dpo_beta: read only by preference training" in stderr and "method" not in config
    assert "bnb_config_kwargs: read only for a 4-bit load" in stderr
    qlora = (
        "datasets:\n  - path: d.jsonl\n    type: alpaca\nload_in_4bit: true\nbnb_config_kwargs:\n"
        "  bnb_4bit_quant_type: fp4\n  bnb_4bit_use_double_quant: false\n"
        "  bnb_4bit_compute_dtype: torch.float16\n  llm_int8_threshold: 6.0\n"
    )
    code, stderr, _ = _convert(tmp_path, "adapter: qlora\n" + qlora)
    assert code == 2 and "bnb_4bit_compute_dtype (fixed while bf16: auto decides the precision" in stderr
    code, stderr, config = _convert(tmp_path, "adapter: qlora\nfp16: true\n" + qlora)
    assert code == 0, stderr
    adapter = config["adapter"]
    assert (adapter["quant_type"], adapter["double_quant"], adapter["compute_dtype"]) == (
        "fp4",
        False,
        "float16",
    )
    assert "llm_int8_threshold: 8-bit settings, no effect on a 4-bit load" in stderr
    code, stderr, _ = _convert(
        tmp_path, "adapter: qlora\nfp16: true\n" + qlora + "  llm_int8_skip_modules: [x]\n"
    )
    assert code == 2 and "bnb_config_kwargs: llm_int8_skip_modules: not carried" in stderr


def test_types_are_read_as_axolotls_schema_reads_them() -> None:
    from trainer.tools.axolotl.types import mismatch

    assert mismatch("float | None", "2e-4") is None and mismatch("float | None", 3) is None
    assert mismatch("int | None", "12") is None and mismatch("int | None", 0.5) == "a whole number"
    assert mismatch("bool | None", "true") is None and mismatch("bool | None", [1]) == "true/false"
    assert mismatch("Union[Literal[auto], bool, None]", "auto") is None
    assert mismatch("Union[Literal[auto], bool, None]", "maybe") == "one of auto or true/false"
    assert (
        mismatch("Optional[Annotated[list[datasets.SFTDataset | datasets.DPODataset], MinLen]]", 1)
        == "a list"
    )
    assert mismatch("fsdp.FSDPConfig | None", "abc") == "a mapping"
    assert mismatch("str | CustomSupportedOptimizers | None", []) == "a string"
    assert mismatch("axolotl.integrations.hatchery.args.Hatchery | None", 5) is None  # unknown: unchecked


@needs_configs
def test_odd_values_never_crash_the_converter() -> None:
    """Every top-level key and dataset option of a LoRA and an FSDP example set to values of the wrong
    shape: each conversion ends in a result (a wrong type is refused with what Axolotl takes), never
    an exception."""
    from trainer.config.yaml_lines import SourceMap
    from trainer.tools.axolotl.convert import _Converter
    from trainer.tools.axolotl.emit import render

    odd: list[Any] = [None, "", [], {}, 0, "abc", [1], {"a": 1}, True, 2.5]
    for name in ("llama-3/lora-1b.yml", "llama-3/fft-8b-liger-fsdp.yaml"):
        given = yaml.safe_load((CONFIGS / "examples" / name).read_text(encoding="utf-8"))
        variants = [{**given, key: value} for key in given for value in odd]
        entry = given["datasets"][0]
        variants += [{**given, "datasets": [{**entry, key: value}]} for key in entry for value in odd]
        for variant in variants:
            conversion = _Converter(variant, SourceMap(file=name), name).run()
            render(conversion)
        wrong = _Converter({**given, "num_epochs": "abc"}, SourceMap(file=name), name).run()
        assert [e.note for e in wrong.of("refused")] == [
            "Axolotl takes a number here, not 'abc': it rejects this value"
        ]


def test_a_value_our_validation_rejects_is_refused_at_its_axolotl_line(tmp_path: Path) -> None:
    """Nothing that fails our validation is written: the problem is refused as the Axolotl key its
    value came from, at that key's line (here a pair Axolotl rejects too)."""
    code, stderr, config = _convert(
        tmp_path, "datasets:\n  - path: d.jsonl\n    type: alpaca\nwarmup_steps: 10\nwarmup_ratio: 0.1\n"
    )
    assert code == 2 and config == {}
    assert "1 Axolotl setting(s) cannot be carried; nothing written:" in stderr
    assert (
        "axolotl.yml:9  warmup_steps: carried as warmup_steps, which this tool's validation rejects: "
        "set warmup_ratio or warmup_steps, not both" in stderr
    )


def test_plugins_follow_the_inventory(tmp_path: Path) -> None:
    """A plugin the inventory calls logging/speed/memory-only is dropped with its reason; one that
    changes training is refused with it; one the inventory does not know is refused."""
    base = "datasets:\n  - path: d.jsonl\n    type: alpaca\nplugins:\n"
    code, stderr, _ = _convert(tmp_path, base + "  - axolotl.integrations.swanlab.SwanLabPlugin\n")
    assert code == 0 and "plugins: SwanLabPlugin: logging" in stderr, stderr
    code, stderr, _ = _convert(
        tmp_path, base + "  - axolotl.integrations.spectrum.SpectrumPlugin\n  - my.own.Plugin\n"
    )
    assert (
        code == 2
        and (
            "plugins: Axolotl integration plugins with no counterpart here: axolotl.integrations.spectrum."
            "SpectrumPlugin (freezes all but the top-SNR modules (needs Spectrum's scan file)); my.own.Plugin"
        )
        in stderr
    ), stderr
