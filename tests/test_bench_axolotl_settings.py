"""bench/axolotl_settings.py's own logic: the comparable forms, the key-by-key comparison and the
table, on given values (no Axolotl venv); and our side's dump of one example on the tiny model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = Path("/work/shared/axolotl-configs/examples/llama-3/lora-1b.yml")


def _load():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("axolotl_settings", REPO / "bench" / "axolotl_settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_spans_and_row_settings_name_the_trained_positions() -> None:
    assert bench.spans([-100, -100, 5, 6, -100, 7]) == "2-3, 5"
    assert bench.spans([-100, -100]) == "none"
    row = bench.row_settings([1, 9, 5, 6], [-100, -100, 5, 6])
    assert row["row_trained"] == "trained 2: 2-3"
    assert bench.row_settings([1, 9, 5, 6], [-100, -100, 5, 6])["row_tokens"] == row["row_tokens"]
    assert bench.row_settings([1, 9, 5, 7], [-100, -100, 5, 6])["row_tokens"] != row["row_tokens"]
    assert (
        "labels differ from ids at [3]" in bench.row_settings([1, 9, 5, 7], [-100, -100, 5, 6])["row_trained"]
    )


def test_comparable_forms() -> None:
    assert bench.warmup(0.1, None) == "ratio 0.1" and bench.warmup(None, 100) == "100 steps"
    assert bench.warmup(None, None) == "none"
    assert bench.length(1.0, None) == "1 epochs" and bench.length(4, 10) == "max_steps 10"
    assert bench.precision("auto", None, False) == "fp32, tf32 off"  # unresolved auto is not bf16
    assert bench.precision(False, True, True) == "fp16, tf32 on"


def test_axolotl_settings_reads_axolotls_defaults() -> None:
    raw = {
        "learning_rate": 2e-4, "lr_scheduler": "cosine", "cosine_min_lr_ratio": 0.1, "warmup_ratio": 0.1,
        "micro_batch_size": 2, "gradient_accumulation_steps": 4, "batch_size": 8, "num_epochs": 1.0,
        "sequence_len": 512, "sample_packing": True, "pad_to_sequence_len": True, "adapter": "lora",
        "load_in_8bit": True, "optimizer": "adamw_torch", "bf16": False, "fp16": True, "tf32": False,
        "datasets": [{"type": "chat_template"}], "peft": {"r": 8, "alpha": 16, "dropout": 0.0},
        "lora_modules": ["q_proj"], "fsdp": True, "fsdp_version": 2,
        "row": {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
    }  # fmt: skip
    found = bench.axolotl_settings(raw)
    assert found["lr_scheduler"] == "cosine (min lr ratio 0.1)"
    assert found["adapter"] == "lora 8-bit"
    assert found["loss_on"] == "roles ['assistant'], eos turn"  # the chat_template strategy's defaults
    assert found["distributed"] == "fsdp2"
    assert found["effective_batch_size"] == 8
    assert found["row_trained"] == "trained 2: 1-2"


def test_compare_marks_each_difference_with_its_explanation() -> None:
    axolotl = {"learning_rate": 2e-4, "precision": "fp16, tf32 off", "optimizer": "adamw_torch"}
    ours = {"learning_rate": 0.0002, "precision": "fp32, tf32 off", "optimizer": "adamw_8bit"}
    explained = {"precision": "machine", ("x.yml", "optimizer"): "known"}
    rows = {r["key"]: r for r in bench.compare(axolotl, ours, explained, "x.yml")}
    assert rows["learning_rate"]["same"] and rows["learning_rate"]["why"] == ""
    assert not rows["precision"]["same"] and rows["precision"]["why"] == "machine"
    assert rows["optimizer"]["why"] == "known"
    assert bench.compare(axolotl, ours, {}, "y.yml")[0]["same"]
    other = {r["key"]: r for r in bench.compare(axolotl, ours, {}, "y.yml")}
    assert other["optimizer"]["why"] == "UNEXPLAINED"
    assert rows["lora_r"]["same"]  # absent on both sides: both "—"
    lines = bench.table(list(rows.values()))
    assert lines[0] == "| setting | Axolotl | ours | same? |"
    assert "| precision on this machine | fp16, tf32 off | fp32, tf32 off | **no**: machine |" in lines


def test_docs_include_the_committed_results() -> None:
    from trainer.tools.axolotl import docs

    if not docs.SETTINGS_RESULTS.is_file():
        pytest.skip("no committed bench/results/axolotl_settings.md")
    assert docs.SETTINGS_RESULTS.read_text(encoding="utf-8").split("\n")[0] in docs.render()


@pytest.mark.skipif(not EXAMPLE.is_file(), reason="the shared Axolotl examples are not on this machine")
def test_ours_side_on_one_example(tiny_model: Path, tmp_path: Path) -> None:
    """Our side of llama-3/lora-1b.yml: the convert, the resolution and the encoded first row."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    given = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    copy = tmp_path / "lora-1b.axolotl.yml"
    copy.write_text(yaml.safe_dump(bench.swapped(given, "lora-1b", tmp_path, model, EXAMPLE.parents[1])))
    found = bench.ours_side(copy, model, tmp_path / "lora-1b.ours.yml")
    assert found["learning_rate"] == 2e-4 and found["lr_scheduler"] == "cosine"
    assert found["effective_batch_size"] == 4 and found["sequence_len"] == 2048
    assert found["sample_packing"] and found["pad_to_sequence_len"]
    assert (found["adapter"], found["lora_r"], found["lora_alpha"]) == ("lora", 16, 32)
    assert found["lora_modules"] == sorted(given["lora_target_modules"])
    assert found["precision"] == "fp32, tf32 off"  # bf16: auto on a machine without a GPU
    # the alpaca row: "5" and EOS are the only trained tokens, at the end of the row
    tokens = int(found["row_tokens"].split()[0])
    assert found["row_trained"] == f"trained 2: {tokens - 2}-{tokens - 1}"
