"""`early_stopping_patience` (Axolotl's key): a run whose eval loss stops improving stops before
max_steps and says why; validate refuses it where nothing is evaluated, at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_command, toy_config, write_yaml

pytest.importorskip("torch")


def test_a_run_whose_eval_loss_stops_improving_stops_early(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """A learning rate of 1e-9 moves the eval loss by far less than the threshold, so no evaluation
    after the first improves: evaluations at steps 0 (before training: not counted, as in
    transformers), 2 (the first best), 4 and 6 (no better): with patience 2 the run stops at step 6
    of 12, and still saves its model."""
    out = tmp_path / "out"
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        out,
        learning_rate=1.0e-9,
        max_train_samples=48,
        val_set_size=8,
        eval_steps=2,
        early_stopping_patience=2,
        early_stopping_threshold=1.0e-3,
    )
    done = run_command("train", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "early stopping at step 6 of 12: eval_loss has not improved by more than 0.001 on its best" in (
        done.stdout
    ), done.stdout[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [h["step"] for h in state["log_history"] if "eval_loss" in h] == [0, 2, 4, 6]
    assert (out / "model.safetensors").is_file()


def test_early_stopping_needs_an_eval_split(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", early_stopping_patience=3)
    cfg = write_yaml(tmp_path / "cfg.yml", config)
    lines = cfg.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.startswith("early_stopping_patience:"))
    done = run_command("validate", cfg)
    assert done.returncode == 2, done.stdout
    assert (
        f"{cfg}:{line}  early_stopping_patience: stops on the eval metric, but nothing is evaluated: "
        "set val_set_size or test_datasets"
    ) in done.stderr, done.stderr
    alone = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", early_stopping_threshold=0.1)
    done = run_command("validate", write_yaml(tmp_path / "alone.yml", alone))
    assert "early_stopping_threshold: has no effect without early_stopping_patience" in done.stderr
    fine = {**config, "val_set_size": 8}
    done = run_command("validate", write_yaml(tmp_path / "ok.yml", fine))
    assert done.returncode == 0, done.stderr
