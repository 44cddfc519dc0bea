"""Reliable long runs: exact resume, staged checkpoints, SIGTERM/SIGINT stops, rotation, watchdogs.

A run of N steps is the reference; a run stopped at step K (its checkpoint-K alone in a fresh
output_dir, or a real SIGTERM) and resumed must give the same per-step losses and final weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_api, run_command, toy_config, write_yaml

N, K = 8, 3  # 40 rows / micro 8 = 5 steps per epoch: K is mid-epoch 0 and the run crosses into epoch 1


def long_config(model: Path, data: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    return toy_config(
        model, data / "train.jsonl", out, max_steps=N, save_strategy="steps", save_steps=K,
        max_train_samples=40, lr_scheduler="cosine", warmup_steps=2, **overrides,
    )  # fmt: skip


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


def final_weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    name = "model.safetensors" if (out / "model.safetensors").exists() else "adapter_model.safetensors"
    return load_file(out / name)


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def stopped_at(reference_out: Path, step: int, into: Path) -> None:
    """An output_dir as a run stopped after `step` leaves it: its config and that checkpoint."""
    into.mkdir(parents=True)
    shutil.copy(reference_out / "config.resolved.yml", into)
    shutil.copytree(reference_out / f"checkpoint-{step}", into / f"checkpoint-{step}")


def train_logged(config_path: Path, overrides: list[str]) -> tuple[Any, list[str]]:
    from trainer.resolve.validate import load_config
    from trainer.runtime.run import train

    lines: list[str] = []
    built = train(load_config(str(config_path), overrides), log=lines.append)
    return built, lines


ADAPTERS = {"full": {}, "lora": {"adapter": {"type": "lora", "r": 4, "alpha": 8}}}


@pytest.mark.parametrize("packing", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_resume_gives_the_same_losses_and_weights(
    adapter, packing, tiny_model, toy_data, tmp_path, monkeypatch
):
    from trainer.data.collate import Collator

    batches = []
    original = Collator.__call__
    monkeypatch.setattr(Collator, "__call__", lambda self, rows: batches.append(1) or original(self, rows))
    config = long_config(tiny_model, toy_data, tmp_path / "ref", sample_packing=packing, **ADAPTERS[adapter])
    reference = run_api(tmp_path, config, name="ref.yml")
    assert reference.trainer.state.global_step == N
    collated_by_reference, batches[:] = len(batches), []

    stopped_at(tmp_path / "ref", K, tmp_path / "resumed")
    resumed, lines = train_logged(
        write_yaml(tmp_path / "resumed.yml", dict(config, output_dir=str(tmp_path / "resumed"))),
        ["resume=auto"],
    )
    assert f"resuming from {tmp_path / 'resumed' / f'checkpoint-{K}'}" in lines
    history = resumed.trainer.state.log_history
    assert [h["step"] for h in history if "loss" in h] == list(range(1, N + 1))
    assert losses(history) == pytest.approx(losses(reference.trainer.state.log_history), abs=1e-6)
    assert max_difference(final_weights(tmp_path / "ref"), final_weights(tmp_path / "resumed")) <= 1e-6
    tokens = [
        [h["num_tokens"] for h in run.trainer.state.log_history if "loss" in h]
        for run in (reference, resumed)
    ]
    assert tokens[0] == tokens[1]  # the real-token count carries on from the checkpoint's
    # The data position is restored by skipping sampler indices: the first K steps' batches (one
    # per step here) are not loaded and collated again.
    assert len(batches) == collated_by_reference - K


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tiny_model, toy_data, tmp_path):
    config = long_config(tiny_model, toy_data, tmp_path / "ref")
    reference = run_api(tmp_path, config, name="ref.yml")
    out = tmp_path / "resumed"
    stopped_at(tmp_path / "ref", K, out)
    shutil.copytree(tmp_path / "ref" / "checkpoint-6", out / "checkpoint-6")
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    resumed, lines = train_logged(
        write_yaml(tmp_path / "r.yml", dict(config, output_dir=str(out))), ["resume=auto"]
    )
    assert any(
        line.startswith(
            f"warning: skipping checkpoint {out / 'checkpoint-6'}: model.safetensors is not a readable"
        )
        for line in lines
    ), lines
    assert f"resuming from {out / f'checkpoint-{K}'}" in lines
    assert losses(resumed.trainer.state.log_history) == pytest.approx(
        losses(reference.trainer.state.log_history), abs=1e-6
    )


def test_resume_path_and_config_errors(tiny_model, toy_data, tmp_path):
    from trainer.config.errors import ConfigErrors
    from trainer.outputs.checkpoints import problem_with
    from trainer.resolve.validate import load_config

    def errors(**keys: Any) -> str:
        config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", **keys)
        with pytest.raises(ConfigErrors) as err:
            load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
        return err.value.render()

    assert "unknown key 'resume_from_checkpoint': here it is resume: auto" in errors(
        resume_from_checkpoint=True
    )
    assert "resume: cannot resume and overwrite output_dir at once" in errors(
        resume="auto", overwrite_output_dir=True
    )
    assert f"resume: no checkpoint folder '{tmp_path / 'nope'}'" in errors(resume=str(tmp_path / "nope"))
    half = tmp_path / "checkpoint-2"
    half.mkdir()
    assert problem_with(str(half)) == "no trainer_state.json (the save did not finish)"


def test_resume_auto_starts_afresh_but_never_over_a_finished_run(tiny_model, toy_data, tmp_path):
    from trainer.config.errors import ConfigErrors

    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=2, resume="auto")
    first, lines = train_logged(write_yaml(tmp_path / "cfg.yml", config), [])
    assert first.trainer.state.global_step == 2
    assert any("no complete checkpoint" in line and "starting from step 0" in line for line in lines)
    with pytest.raises(ConfigErrors, match="holds a finished run and no checkpoint to resume from"):
        train_logged(tmp_path / "cfg.yml", [])


CRASH_IN_SAVE = """
import os, signal, sys
import transformers
original = transformers.Trainer._save_optimizer_and_scheduler
def crash(self, output_dir):
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)  # the machine goes away half-way through the save
    original(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = crash
sys.argv = ["train", {config!r}]
from trainer.cli.common import run
from trainer.cli.train import main
run(main)
"""


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_crash_during_save_leaves_no_broken_checkpoint(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    config = write_yaml(tmp_path / "cfg.yml", long_config(tiny_model, toy_data, out))
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_IN_SAVE.format(step=6, config=str(config))],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{K}"]  # no checkpoint-6
    assert (out / ".staging" / "checkpoint-6" / "model.safetensors").exists()  # the half-written save
    resumed, lines = train_logged(config, ["resume=auto"])
    assert f"resuming from {out / f'checkpoint-{K}'}" in lines
    assert not (out / ".staging").exists()
    reference = run_api(tmp_path, long_config(tiny_model, toy_data, tmp_path / "ref"), name="ref.yml")
    assert losses(resumed.trainer.state.log_history) == pytest.approx(
        losses(reference.trainer.state.log_history), abs=1e-6
    )
    assert max_difference(final_weights(out), final_weights(tmp_path / "ref")) <= 1e-6


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_at_the_step_and_resume_completes(tiny_model, toy_data, tmp_path, signum):
    """SIGTERM (a scheduler) or SIGINT (Ctrl-C): a checkpoint at the end of the step, exit 128 + the
    signal's number (143 / 130) with the resume command, and the resume equals an unstopped run."""
    name = signal.Signals(signum).name
    steps = 16
    out = tmp_path / "out"
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", out, max_steps=steps, max_train_samples=40,
        lr_scheduler="cosine", save_strategy="steps", save_steps=1000,
    )  # fmt: skip
    path = write_yaml(tmp_path / "cfg.yml", config)
    command = [sys.executable, "-m", "trainer.cli.train", str(path)]
    process = subprocess.Popen(
        command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:  # a redirected log prints each step's logs
        if "'loss'" in line:
            process.send_signal(signum)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"{name} received: saving a checkpoint at the end of this step" in stdout
    found = re.search(rf"stopped by {name} at step (\d+) of 16: checkpoint saved to (\S+)\.", stderr)
    assert found, stderr[-3000:]
    stopped = int(found.group(1))
    assert 1 <= stopped < steps
    assert found.group(2) == str(out / f"checkpoint-{stopped}")
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{stopped}"]
    assert not (out / "model.safetensors").exists()  # no final model from a stopped run
    resume = re.search(r"Resume with: (.+)", stderr)
    assert (
        resume and resume.group(1) == f"python -m trainer.cli.train {out / 'config.resolved.yml'} resume=auto"
    )

    _, lines = train_logged(out / "config.resolved.yml", ["resume=auto"])  # that command, in-process
    assert f"resuming from {out / f'checkpoint-{stopped}'}" in lines
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, steps + 1))
    reference = run_api(tmp_path, dict(config, output_dir=str(tmp_path / "ref")), name="ref.yml")
    assert losses(history) == pytest.approx(losses(reference.trainer.state.log_history), abs=1e-6)
    assert max_difference(final_weights(out), final_weights(tmp_path / "ref")) <= 1e-6


def test_signal_catcher_asks_then_a_second_ctrl_c_quits():
    from trainer.training.stops import SignalCatcher

    catcher = SignalCatcher()
    catcher.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert catcher.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher passing it on: still just one request
        assert catcher.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        catcher.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_save_total_limit_keeps_best_and_newest(tiny_model, toy_data, tmp_path):
    out = tmp_path / "out"
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", out, max_steps=5, save_strategy="steps", save_steps=1,
        eval_strategy="steps", eval_steps=1, val_set_size=16, save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="eval_loss",
        trainer_args={"greater_is_better": True},  # the loss falls, so the first eval is the "best"
    )  # fmt: skip
    built = run_api(tmp_path, config)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-5"]
    assert built.trainer.state.best_model_checkpoint == str(out / "checkpoint-1")
    saved = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(out / "checkpoint-1")  # a real path, not the staging one


def poison_from(step: int, factor: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """From optimizer step `step` on, every loss is multiplied by `factor` (nan poisons the weights)."""
    from trainer.training.sft import SFTTrainer

    original = SFTTrainer.compute_loss

    def compute_loss(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        loss = original(self, model, inputs, *args, **kwargs)
        if model.training and self.state.global_step + 1 >= step:
            loss = (loss[0] * factor, *loss[1:]) if isinstance(loss, tuple) else loss * factor
        return loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", compute_loss)


def test_loss_watchdog_stops_on_nan_and_keeps_the_last_good_checkpoint(
    tiny_model, toy_data, tmp_path, monkeypatch
):
    from trainer.training.stops import RunStopped

    poison_from(5, math.nan, monkeypatch)
    out = tmp_path / "out"
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", out, max_steps=12, save_strategy="steps", save_steps=2
    )
    with pytest.raises(RunStopped) as stopped:
        run_api(tmp_path, config)
    message = str(stopped.value)
    assert stopped.value.code == 1
    assert message.startswith("loss watchdog stopped the run at step 7: training loss nan at steps 5 to 7")
    assert f"the last good checkpoint is {out / 'checkpoint-4'}; resume with:" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # not 6
    assert not (out / "model.safetensors").exists()  # the diverged weights are not saved
    assert all(bool(w.isfinite().all()) for w in final_weights(out / "checkpoint-4").values())


def test_loss_threshold_and_grad_norm_spikes(tiny_model, toy_data, tmp_path, monkeypatch):
    """Through the train command: the watchdog's stop is exit status 1 with its reason."""
    poison_from(8, 1000.0, monkeypatch)  # the loss and its gradient jump 1000x at step 8
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=12,
        loss_watchdog_threshold=100.0, loss_watchdog_patience=2,
    )  # fmt: skip
    done = run_command("train", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 1, done.stderr[-3000:]
    stop = r"at step 9: training loss above loss_watchdog_threshold 100 \(\d+"
    assert re.search(stop, done.stderr) and "Traceback" not in done.stderr, done.stderr[-3000:]
    spike = r"warning: gradient-norm spike at step 8: [\d.e+]+, \d+\.\dx the median"
    assert re.search(spike, done.stdout), done.stdout[-3000:]


def test_config_yaml_resume_key_round_trips(tiny_model, toy_data, tmp_path):
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_steps=1, resume="auto")
    run_api(tmp_path, config)
    resolved = yaml.safe_load((tmp_path / "out" / "config.resolved.yml").read_text())
    assert resolved["resume"] == "auto"
    assert resolved["loss_watchdog_patience"] == 3
