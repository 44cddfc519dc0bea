"""The end of a run: summary table, fit diagnosis from the eval curve, training_curves.png."""

from __future__ import annotations

import fnmatch
import os
import sys
from datetime import timedelta
from typing import Any

from transformers import TrainerCallback

CURVES_NAME = "training_curves.png"
PREFERENCE_ACCURACY = "preference_accuracy"
"""Logged by preference methods at the start and end of training: held-out pairs whose chosen
completion the model scores above the rejected one (trainer.training.methods)."""
NO_EVAL = "no eval loss: add val_set_size or test_datasets to diagnose fitting"
TOLERANCE = 0.02
MIN_GAIN = 0.05
FLOOR = 1e-3
"""Changes of an eval loss smaller than this are noise however large relative to it (a preference
loss near 0 moves by 2% of nothing)."""


def _curve(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(entry["step"]), float(entry[key])) for entry in history if key in entry and "step" in entry]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def diagnose(history: list[dict[str, Any]], tolerance: float = TOLERANCE, min_gain: float = MIN_GAIN) -> str:
    """One line on how the run fits, from `eval_loss` (and `loss`) in a Trainer's log_history, after
    the learning-curve dynamics of https://rentry.org/llm-training (part 7). "best" is the first lowest
    eval loss; "falling"/"rose" mean by more than `tolerance` (2%) relative and more than FLOOR
    absolute, so noise within it is ignored. In order:

    - fewer than 2 evaluations: nothing to diagnose (says what to set).
    - over-fitting from step B (B: the best evaluation, where training could have stopped): the last
      two evaluations both exceed the best by more than `tolerance` (one noisy evaluation is not a
      rise), while the train loss fell since B (mean of the last 3 logged losses below the mean of
      the 3 up to B). With the same rise but no fall in train loss it is "diverging" instead.
    - under-fitting, flat: the first evaluation is at step 0 (the untrained model) and the best eval
      loss is less than `min_gain` (5%) below it: training barely moved the model.
    - under-fitting, not converged: the last evaluation is more than `tolerance` below the one before
      it, and the mean of the last quarter of logged train losses is below that of the quarter
      before (the noisier train curve needs only to fall): both curves still falling at the end.
    - well fitted: otherwise; the eval loss has settled near its best.
    """
    evals, train_points = _curve(history, "eval_loss"), _curve(history, "loss")
    train = [loss for _, loss in train_points]
    if not evals:
        return NO_EVAL
    if len(evals) < 2:
        return "one eval loss only: set eval_steps to evaluate during training and diagnose fitting"
    losses = [loss for _, loss in evals]
    best = losses.index(min(losses))
    (best_step, best_loss), (first_step, first_loss) = evals[best], evals[0]
    (last_step, last_loss), previous_loss = evals[-1], losses[-2]
    after_best = [
        loss > best_loss * (1 + tolerance) and loss > best_loss + FLOOR for loss in losses[best + 1 :]
    ]
    if len(after_best) >= 2 and all(after_best[-2:]):
        up_to_best = [loss for step, loss in train_points if step <= best_step] or train[:3]
        if train and (after := _mean(train[-3:])) < (before := _mean(up_to_best[-3:])):
            return (
                f"over-fitting from step {best_step}: eval loss lowest there ({best_loss:.4f}), "
                f"{last_loss:.4f} at step {last_step}, while train loss fell {before:.4f} -> {after:.4f}"
            )
        return (
            f"diverging from step {best_step}: eval loss rose {best_loss:.4f} -> {last_loss:.4f} and "
            "train loss did not fall; lower the learning rate"
        )
    if first_step == 0 and best_loss > first_loss * (1 - min_gain):
        return (
            f"under-fitting: eval loss barely moved from the untrained model's ({first_loss:.4f} -> "
            f"best {best_loss:.4f}); raise the learning rate or train longer"
        )
    quarter = max(1, len(train) // 4)
    train_falling = len(train) >= 2 and _mean(train[-quarter:]) < _mean(train[-2 * quarter : -quarter])
    if last_loss < previous_loss * (1 - tolerance) and last_loss < previous_loss - FLOOR and train_falling:
        return (
            f"under-fitting: train and eval loss still falling at the end (eval {previous_loss:.4f} -> "
            f"{last_loss:.4f} at step {last_step}); train longer or raise the learning rate"
        )
    return (
        f"well fitted: eval loss settled at {last_loss:.4f} (lowest {best_loss:.4f} at step {best_step})"
        + (f", train loss {train[-1]:.4f}" if train else "")
    )


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, counted as PEFT does: a ZeRO-3 partitioned weight by its
    `ds_numel`, a bitsandbytes 4-bit weight as two values per stored byte."""
    trainable = total = 0
    for param in model.parameters():
        count = param.numel() or getattr(param, "ds_numel", 0)
        if type(param).__name__ == "Params4bit":
            count *= 2 * param.element_size()
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


def peak_memory(device: Any) -> tuple[str, int]:
    """(what, bytes) for this process: CUDA max_memory_allocated on its GPU, else its peak RSS."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}", torch.cuda.max_memory_allocated(index)
    import resource  # POSIX only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return "cpu", rss if sys.platform == "darwin" else rss * 1024


class PeakMemory(TrainerCallback):
    """At the end of training, every process's `peak_memory`, gathered to each process."""

    def __init__(self) -> None:
        self.peaks: list[tuple[str, int]] = []

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from accelerate.utils import gather_object

        self.peaks = gather_object([peak_memory(args.device)])


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _memory_row(peaks: list[tuple[str, int]]) -> str:
    """One process: '1.23 GiB (...)'; several: '...: rank 0 ..., rank 1 ...'. CUDA values name the GPU."""
    cuda = peaks[0][0].startswith("cuda")

    def one(device: str, count: int) -> str:
        return f"{device} {_size(count)}" if cuda else _size(count)

    if len(peaks) == 1:
        return f"{one(*peaks[0])} ({'CUDA max_memory_allocated' if cuda else 'peak RSS of the process'})"
    what = "CUDA max_memory_allocated" if cuda else "peak RSS per process"
    return f"{what}: " + ", ".join(f"rank {rank} {one(*peak)}" for rank, peak in enumerate(peaks))


def _last(history: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((entry for entry in reversed(history) if key in entry), None)


def summary(trainer: Any, parameters: tuple[int, int], diagnosis: str) -> dict[str, str]:
    """The end-of-run numbers, read from trainer.state (its log_history ends with the TrainOutput's
    metrics), the run's parameter count and the gathered PeakMemory."""
    history = trainer.state.log_history
    rows = {"optimizer steps": str(trainer.state.global_step)}
    tokens, ran = _last(history, "num_tokens"), _last(history, "train_runtime")
    runtime = float(ran["train_runtime"]) if ran else None
    if tokens is not None:
        rows["tokens trained"] = f"{int(tokens['num_tokens']):,} (real tokens, all processes)"
        if runtime:  # this session's tokens: a resumed run trained the others before
            rate = (tokens["num_tokens"] - getattr(trainer, "tokens_before", 0)) / runtime
            rows["tokens/s"] = f"{rate:,.0f} (over the wall time, evaluation included)"
    trainable, total = parameters
    if total:
        rows["trainable parameters"] = f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
    recorder = next((c for c in trainer.callback_handler.callbacks if isinstance(c, PeakMemory)), None)
    rows["peak memory"] = _memory_row(
        recorder.peaks if recorder and recorder.peaks else [peak_memory(trainer.args.device)]
    )
    if runtime is not None:
        clock = f" = {timedelta(seconds=round(runtime))}" if runtime >= 60 else ""
        rows["wall time"] = f"{runtime:.1f} s{clock} (trainer.train)"
    for key, name in (("loss", "final train loss"), ("eval_loss", "final eval loss")):
        entry = _last(history, key)
        if entry is not None:
            rows[name] = f"{entry[key]:.4f} (step {entry['step']})"
    rows["diagnosis"] = diagnosis
    return rows


def table(rows: dict[str, str]) -> list[str]:
    width = max(len(key) for key in rows)
    return ["run summary:", *(f"  {key:<{width}}  {value}" for key, value in rows.items())]


def metric_keys(history: list[dict[str, Any]], patterns: tuple[str, ...]) -> list[str]:
    """The logged training metrics matching `patterns` (fnmatch, e.g. "rewards/*/mean"), in the order
    first logged; each one's eval_ twin is drawn beside it."""
    seen: dict[str, None] = {}
    for entry in history:
        for key in entry:
            if not key.startswith("eval_") and any(fnmatch.fnmatchcase(key, p) for p in patterns):
                seen.setdefault(key, None)
    return list(seen)


def write_curves(history: list[dict[str, Any]], path: str, title: str, metrics: tuple[str, ...] = ()) -> str:
    """Train and eval loss, learning rate and grad norm against the step, as a PNG at `path` (written
    to a temporary file first, then renamed); with `metrics` (a method's, e.g. reward margin and
    preference accuracy, or the mean of each GRPO reward) a panel of those, train and eval. Agg
    canvas: no pyplot, no GUI, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    extra = metric_keys(history, metrics)
    figure = Figure(figsize=(8, 12 if extra else 9))  # a fixed layout: half the time of a layout engine
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.06, top=0.93, hspace=0.1)
    axes_list = figure.subplots(4 if extra else 3, 1, sharex=True)
    loss_axes, lr_axes, grad_axes = axes_list[:3]
    panels = [
        (loss_axes, "loss", [("loss", "train loss", "-"), ("eval_loss", "eval loss", "o-")]),
        (lr_axes, "learning rate", [("learning_rate", "learning rate", "-")]),
        (grad_axes, "grad norm", [("grad_norm", "grad norm", "-")]),
    ]
    if extra:
        series = [(key, key, "-") for key in extra] + [(f"eval_{key}", f"eval {key}", "o-") for key in extra]
        panels.append((axes_list[3], "method metrics", series))
    for axes, ylabel, series in panels:
        for key, label, style in series:
            points = _curve(history, key)
            if points:
                axes.plot([s for s, _ in points], [v for _, v in points], style, label=label, markersize=3)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    evals = _curve(history, "eval_loss")
    if evals:
        best_step = min(evals, key=lambda point: point[1])[0]
        loss_axes.axvline(best_step, linestyle=":", color="grey", label="lowest eval loss")
    if loss_axes.get_lines():
        loss_axes.legend()
    axes_list[-1].set_xlabel("optimizer step")
    for axes in axes_list[3:]:
        if axes.get_lines():
            axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10, wrap=True)
    temporary = f"{path}.tmp"
    figure.savefig(temporary, format="png", dpi=100)
    os.replace(temporary, path)
    return path
