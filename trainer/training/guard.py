"""Stopping a run safely: SIGTERM / SIGINT, the loss watchdog and gradient-norm spikes.

`Guard` is a callback that looks at every optimizer step's end, before transformers logs, evaluates
and saves:
- a SIGTERM or SIGINT received during training asks for a checkpoint at that step boundary and a
  stop (a second Ctrl-C quits at once, without saving);
- a loss that is nan, inf or above `loss_watchdog_threshold` for `loss_watchdog_patience` steps in a
  row stops the run without saving the diverged weights; while such a streak lasts no checkpoint is
  written, so the newest one is the last good one;
- a gradient norm above `grad_norm_spike_factor` x the median of the last 20 steps is reported.
The step's loss and the stop requests are summed over processes in one collective, so every process
takes the same decision at the same step.
"""

from __future__ import annotations

import math
import signal
import statistics
from collections import deque
from typing import Any

from transformers import TrainerCallback

from trainer.training.stops import SignalCatcher, Stopped

SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 5


class Guard(TrainerCallback):
    """See the module docstring; `trainer` is our SFTTrainer (its step loss and grad norm)."""

    def __init__(
        self,
        trainer: Any,
        threshold: float | None = None,
        patience: int = 3,
        spike_factor: float | None = None,
    ):
        self.trainer = trainer
        self.threshold, self.patience, self.spike_factor = threshold, patience, spike_factor
        self.signals = SignalCatcher()
        self.stopped: Stopped | None = None
        self.bad_steps: list[int] = []
        self.last_bad_loss = 0.0
        self.norms: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def say(self, line: str) -> None:
        if self.trainer.is_world_process_zero():
            print(line, flush=True)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.signals.install()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.signals.uninstall()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loss, signalled = self._step_loss_and_signal()
        self._check_grad_norm(state.global_step)
        if loss is not None and self._is_bad(loss):
            self.bad_steps.append(state.global_step)
            self.last_bad_loss = loss
        else:
            self.bad_steps.clear()
        if len(self.bad_steps) >= self.patience:
            self.stopped = Stopped("watchdog", state.global_step, self._bad_loss_text())
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False
            return
        if self.bad_steps and control.should_save:
            control.should_save = False
            self.say(f"warning: no checkpoint at step {state.global_step}: {self._bad_loss_text()}")
        if signalled:
            signum = self.signals.received or signal.SIGTERM  # another process got it
            self.stopped = Stopped("signal", state.global_step, signal.Signals(signum).name, signum)
            control.should_save = control.should_training_stop = True

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped is not None:  # saved at the step already (signal) or not at all (watchdog)
            control.should_save = False

    def _is_bad(self, loss: float) -> bool:
        return not math.isfinite(loss) or (self.threshold is not None and loss > self.threshold)

    def _bad_loss_text(self) -> str:
        first, last = self.bad_steps[0], self.bad_steps[-1]
        steps = f"step {first}" if first == last else f"steps {first} to {last}"
        if math.isfinite(self.last_bad_loss):
            loss = f"{self.last_bad_loss:.4g}"
            return f"training loss above loss_watchdog_threshold {self.threshold:g} ({loss}) at {steps}"
        return f"training loss {self.last_bad_loss} at {steps}"

    def _step_loss_and_signal(self) -> tuple[float | None, bool]:
        """This step's loss averaged over processes (None if the step had no batches) and whether
        any process received a stop signal."""
        import torch

        trainer = self.trainer
        step_loss = trainer.take_step_loss()
        received = 1.0 if self.signals.received is not None else 0.0
        if trainer.accelerator.num_processes == 1:
            return (None if step_loss is None else float(step_loss)), received > 0
        loss = step_loss.float() if step_loss is not None else torch.tensor(0.0)
        values = torch.stack(
            [loss.to(trainer.args.device), torch.tensor(received, device=trainer.args.device)]
        )
        total = trainer.accelerator.reduce(values, reduction="sum").tolist()
        return total[0] / trainer.accelerator.num_processes, total[1] > 0

    def _check_grad_norm(self, step: int) -> None:
        norm = self.trainer.take_grad_norm()
        if norm is None or self.spike_factor is None:
            return
        if not math.isfinite(norm):
            self.say(f"warning: gradient norm {norm} at step {step}")
            return
        if len(self.norms) >= SPIKE_MIN_HISTORY:
            median = statistics.median(self.norms)
            if median > 0 and norm > self.spike_factor * median:
                self.say(
                    f"warning: gradient-norm spike at step {step}: {norm:.4g}, {norm / median:.1f}x the "
                    f"median {median:.4g} of the last {len(self.norms)} steps"
                )
        self.norms.append(norm)
