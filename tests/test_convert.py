"""`python -m trainer.cli.convert`: every Axolotl example config in ../shared/axolotl-configs converts
without a traceback, exits 0 or 2, accounts for every one of its keys, and an exit-0 output passes
`validate --skip-machine-checks`; a converted LoRA config carries Axolotl's meaning (values checked),
a refusal names FILE:LINE and writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_command

CONFIGS = Path(os.environ.get("AXOLOTL_CONFIGS", REPO.parent / "shared" / "axolotl-configs"))
EXAMPLES = sorted((CONFIGS / "examples").rglob("*.y*ml")) if CONFIGS.is_dir() else []
FLOOR = 0.42
"""Share of the example configs that convert with exit 0 now (32 of 75 = 43%); the issue's target is
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
