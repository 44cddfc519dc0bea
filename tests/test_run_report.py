"""The end of a run: the fit diagnosis (its rule on made-up curves, then real tiny runs that over- and
under-fit), the summary table, training_curves.png, the tokens/s progress bar, report_to: tensorboard."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import run_api, toy_config, write_yaml  # noqa: E402
from trainer.outputs.run_report import CURVES_NAME, NO_EVAL, diagnose  # noqa: E402


def history(train: list[float], evals: dict[int, float]) -> list[dict[str, Any]]:
    """A log_history: train loss logged at steps 1..n, eval losses at the given steps."""
    entries = [{"loss": loss, "step": step} for step, loss in enumerate(train, 1)]
    entries += [{"eval_loss": loss, "step": step} for step, loss in evals.items()]
    return sorted(entries, key=lambda entry: entry["step"])


FALLING = [5.0 - 0.05 * step for step in range(50)]  # train loss 5.0 -> 2.55, falling throughout


# ---- the rule --------------------------------------------------------------------------------------


def test_overfitting_names_the_step_of_the_lowest_eval_loss():
    curve = history(FALLING, {0: 5.0, 10: 3.0, 20: 2.5, 30: 2.6, 40: 2.9, 50: 3.3})
    assert diagnose(curve).startswith("over-fitting from step 20: eval loss lowest there (2.5000), 3.3000")
    # still rising at the last two evaluations, after a dip back that stays above the best
    curve = history(FALLING, {0: 5.0, 10: 2.5, 20: 2.9, 30: 2.7, 40: 2.8})
    assert diagnose(curve).startswith("over-fitting from step 10")


def test_noisy_eval_loss_is_not_overfitting():
    wobble = {0: 5.0, 10: 3.0, 20: 2.50, 30: 2.52, 40: 2.49, 50: 2.53}  # within 2% of the best
    assert diagnose(history(FALLING, wobble)).startswith("well fitted: eval loss settled at 2.5300")
    last_spike = {0: 5.0, 10: 3.0, 20: 2.5, 30: 2.51, 40: 2.5, 50: 2.9}  # one evaluation is not a rise
    assert diagnose(history(FALLING, last_spike)).startswith("well fitted")
    middle_spike = {0: 5.0, 10: 3.0, 20: 2.5, 30: 3.1, 40: 2.52, 50: 2.51}
    assert diagnose(history(FALLING, middle_spike)).startswith("well fitted")


def test_losses_near_zero_move_by_noise_only():
    """A preference loss at 1e-4 that halves or doubles has converged: changes under FLOOR (1e-3)
    are noise, however large relative to the loss."""
    falling = [0.7 * 0.8**step for step in range(50)]
    converged = {0: 0.69, 10: 0.0004, 20: 0.0002, 30: 0.0001}
    assert diagnose(history(falling[:30], converged)).startswith("well fitted: eval loss settled at 0.0001")
    wobble = {0: 0.69, 10: 0.0004, 20: 0.0001, 30: 0.0003, 40: 0.0005}
    assert diagnose(history(falling[:40], wobble)).startswith("well fitted")


def test_rising_train_and_eval_loss_is_divergence_not_overfitting():
    rising = [2.0 + 0.05 * step for step in range(50)]
    curve = history(rising, {0: 5.0, 10: 2.5, 20: 2.9, 30: 3.4})
    assert diagnose(curve).startswith("diverging from step 10")


def test_underfitting_still_falling_or_flat():
    falling = {0: 5.0, 10: 4.5, 20: 4.0, 30: 3.5}  # each evaluation >2% below the one before
    assert diagnose(history(FALLING[:30], falling)).startswith(
        "under-fitting: train and eval loss still falling at the end (eval 4.0000 -> 3.5000 at step 30)"
    )
    flat = {0: 5.0, 10: 4.95, 20: 4.9, 30: 4.88}  # under 5% better than the untrained model
    assert diagnose(history(FALLING[:30], flat)).startswith("under-fitting: eval loss barely moved")
    # the same small gain after a first evaluation past step 0 says nothing about the untrained model
    assert diagnose(history(FALLING[:30], {10: 4.95, 20: 4.9, 30: 4.88})).startswith("well fitted")


def test_no_eval_loss_or_only_one():
    assert diagnose(history(FALLING, {})) == NO_EVAL
    assert diagnose([]) == NO_EVAL
    assert diagnose(history(FALLING, {50: 2.6})).startswith("one eval loss only")


def test_progress_bar_shows_real_tokens_per_second(capsys):
    from transformers import TrainerControl, TrainerState

    from trainer.training.progress import TokenProgress

    state, control = TrainerState(max_steps=10), TrainerControl()
    progress = TokenProgress()
    progress.on_train_begin(None, state, control)
    assert progress.training_bar.disable  # not a terminal (pytest captures it): no redrawn bar
    progress._started -= 4.0  # 4 s of training so far ...
    progress.on_log(None, state, control, logs={"eval_loss": 1.0, "eval_runtime": 2.0})  # ... 2 s eval
    progress.on_log(None, state, control, logs={"loss": 1.0, "num_tokens": 1000.0})
    assert progress.training_bar.postfix.endswith(" tok/s")
    rate = float(progress.training_bar.postfix.split()[0].replace(",", ""))
    assert 490 < rate <= 500  # 1000 tokens over 2 s of training
    assert "'tokens_per_second': " in capsys.readouterr().out  # in the printed log line
    progress.on_train_end(None, state, control)


# ---- real runs --------------------------------------------------------------------------------------


def eval_source(toy_data: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(toy_data / "eval.jsonl"), "type": "prompt_completion", "completion_field": "generation"}
    ]


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (800, 900)
        image.verify()


@pytest.fixture(scope="module")
def overfit_run(tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """8 training rows, 20 steps at a high learning rate, evaluated every 4 steps on 16 other rows;
    reported to tensorboard. Returns (built, output_dir, the lines the run printed)."""
    from trainer.resolve.validate import load_config
    from trainer.runtime.run import train

    tmp = tmp_path_factory.mktemp("overfit")
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        tmp / "out",
        max_train_samples=8,
        max_steps=20,
        learning_rate=1.0e-2,
        test_datasets=eval_source(toy_data),
        max_eval_samples=16,
        eval_steps=4,
        report_to="tensorboard",
        training_curves=True,
    )
    lines: list[str] = []
    built = train(load_config(str(write_yaml(tmp / "cfg.yml", config))), log=lines.append)
    return built, tmp / "out", lines


def test_overfitting_run_is_diagnosed_and_plotted(overfit_run):
    built, out, lines = overfit_run
    history = built.trainer.state.log_history
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    lowest = min(evals, key=lambda point: point[1])[0]
    assert 0 < lowest < evals[-1][0], evals  # it learned, then the eval loss rose
    diagnosis = diagnose(history)
    assert diagnosis.startswith(f"over-fitting from step {lowest}:"), diagnosis
    assert any(line.endswith(diagnosis) for line in lines)
    assert_png(out / CURVES_NAME)
    assert not list(out.glob("*.tmp"))


def test_the_run_shows_the_token_progress_bar(overfit_run):
    from transformers.trainer_callback import ProgressCallback

    from trainer.training.progress import TokenProgress

    kinds = [type(callback) for callback in overfit_run[0].trainer.callback_handler.callbacks]
    assert TokenProgress in kinds and ProgressCallback not in kinds


def summary_rows(lines: list[str]) -> dict[str, str]:
    start = lines.index("run summary:") + 1
    rows = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        key, value = line.strip().split("  ", 1)
        rows[key] = value.strip()
    return rows


def test_summary_table_numbers_are_the_runs(overfit_run):
    built, out, lines = overfit_run
    rows = summary_rows(lines)
    assert list(rows) == [
        "optimizer steps",
        "tokens trained",
        "tokens/s",
        "trainable parameters",
        "peak memory",
        "wall time",
        "final train loss",
        "final eval loss",
        "diagnosis",
    ]
    state = built.trainer.state
    saved = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in saved if "loss" in h]
    runtime = next(h["train_runtime"] for h in saved if "train_runtime" in h)
    tokens = int(train_logs[-1]["num_tokens"])

    assert rows["optimizer steps"] == str(state.global_step) == "20"
    assert rows["tokens trained"].startswith(f"{tokens:,} (real tokens")
    assert tokens == 20 * int(built.train_dataset.to_pandas()["input_ids"].map(len).sum())  # 8 rows/step
    assert rows["tokens/s"].startswith(f"{tokens / runtime:,.0f} ")
    total = sum(p.numel() for p in built.trainer.model.parameters())
    assert rows["trainable parameters"] == f"{total:,} of {total:,} (100.00%)"
    amount, unit, *rest = rows["peak memory"].split()
    assert " ".join(rest) == "(peak RSS of the process)"
    peak_mib = float(amount) * {"MiB": 1, "GiB": 1024}[unit]  # a long pytest session grows past 1 GiB
    assert 50 < peak_mib <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 6  # Linux: KiB
    assert rows["wall time"].startswith(f"{runtime:.1f} s")
    assert rows["final train loss"] == f"{train_logs[-1]['loss']:.4f} (step 20)"
    last_eval = [h for h in saved if "eval_loss" in h][-1]
    assert rows["final eval loss"] == f"{last_eval['eval_loss']:.4f} (step 20)"
    assert rows["diagnosis"] == diagnose(saved)


def test_tensorboard_events_hold_the_logged_losses(overfit_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    built, out, _ = overfit_run
    assert built.args.run_name == "out"  # output_dir's name, for wandb / mlflow
    (run_dir,) = (out / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    logged = [
        (h["step"], h["loss"])
        for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
        if "loss" in h
    ]
    scalars = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert [step for step, _ in scalars] == [step for step, _ in logged] == list(range(1, 21))
    assert [value for _, value in scalars] == pytest.approx([value for _, value in logged], rel=1e-6)
    assert len(events.Scalars("eval/loss")) == 6  # steps 0, 4, ..., 20


def test_curves_can_be_turned_off(tiny_model, toy_data, tmp_path):
    run_api(tmp_path, toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=1))
    assert not (tmp_path / "out" / CURVES_NAME).exists()  # training_curves: false (toy_config's)


def test_underfitting_run(tiny_model, toy_data, tmp_path):
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        tmp_path / "out",
        max_steps=8,
        learning_rate=1.0e-3,
        test_datasets=eval_source(toy_data),
        max_eval_samples=16,
        eval_steps=4,
        training_curves=True,
    )
    built = run_api(tmp_path, config)
    diagnosis = diagnose(built.trainer.state.log_history)
    assert diagnosis.startswith("under-fitting: train and eval loss still falling"), diagnosis
    assert_png(tmp_path / "out" / CURVES_NAME)


def test_run_name_key(tiny_model, toy_data, tmp_path):
    from trainer.config.errors import ConfigErrors
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import plan

    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", run_name="mine")
    _, args = plan(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    assert args.run_name == "mine"
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out", trainer_args={"run_name": "x"}
    )
    with pytest.raises(ConfigErrors, match="run_name"):
        load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
