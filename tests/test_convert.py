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
FLOOR = 0.48
"""Share of the example configs that convert with exit 0 now (36 of 75 = 48%); the issue's target is
80% of the SFT ones, reached as the features Axolotl users rely on land. A drop below is a regression."""

needs_configs = pytest.mark.skipif(not EXAMPLES, reason=f"Axolotl's example configs are not at {CONFIGS}")


def top_level_keys(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return list(data) if isinstance(data, dict) else []


@needs_configs
def test_every_example_config_is_accounted_for(tmp_path: Path) -> None:
    from trainer.tools.axolotl.convert import convert

    converted = 0
    for number, config in enumerate(EXAMPLES):
        relative = config.relative_to(CONFIGS)
        out = tmp_path / f"{number}.yml"
        done = run_command("convert", relative, "-o", out, cwd=CONFIGS)
        assert done.returncode in (0, 2), (relative, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (relative, done.stderr[-2000:])
        conversion = convert(str(config))
        accounted = {entry.key for entry in conversion.entries}
        for key in top_level_keys(config):
            assert any(k == key or k.startswith((f"{key}[", f"{key}.")) for k in accounted), (relative, key)
        if done.returncode == 0:
            converted += 1
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
    "qwen2/reward-model.yaml": ":10  datasets[0].chat_template: Axolotl's chat template 'qwen_25'",
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


def _convert(tmp_path: Path, text: str) -> tuple[int, str, dict[str, Any]]:
    for name in ("intel", "argilla", "ultra", "d", "bt"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
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
