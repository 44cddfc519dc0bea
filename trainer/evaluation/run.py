"""Run a config's `evals:` on a model and show the results: once (`trainer evaluate`), or before and
after training (a callback on the main process), printed side by side and written to
`output_dir/evals.json`."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from trainer.api import Chosen, Eval, Resolved
from trainer.evaluation.context import RunContext

EVALS_FILE = "evals.json"


def labelled(evals: list[tuple[str, Eval[Any]]]) -> list[tuple[str, Eval[Any]]]:
    """(type, plugin) pairs labelled for the results: the type, `#2`, `#3` on repeats of one type."""
    seen: dict[str, int] = {}
    out = []
    for name, plugin in evals:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", plugin))
    return out


def chosen_evals(resolved: Resolved) -> list[tuple[str, Eval[Any]]]:
    """The config's `evals:` as (type, plugin) pairs."""
    chosen: list[Chosen[Eval[Any]]] = list(resolved.chosen.get("evals", []))
    return [(item.entry.name, item.plugin) for item in chosen]


def run_evals(evals: list[tuple[str, Eval[Any]]], context: RunContext) -> dict[str, float]:
    """{label/metric: value} for every eval, in the given order."""
    results: dict[str, float] = {}
    for label, plugin in labelled(evals):
        for metric, value in plugin.run(context).items():
            results[f"{label}/{metric}"] = float(value)
    return results


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if any(word in metric for word in ("match", "accuracy", "contains", "acc")) and 0 <= value <= 1:
        return f"{value:.1%}"
    return f"{value:.4g}"


def table(columns: dict[str, dict[str, float]]) -> list[str]:
    """Results as aligned rows: one column per entry of `columns` (e.g. before, after)."""
    metrics = list(dict.fromkeys(m for results in columns.values() for m in results))
    if not metrics:
        return []
    width = max(len(m) for m in metrics)
    cells = {name: [_value(m, results.get(m)) for m in metrics] for name, results in columns.items()}
    widths = {name: max(len(name), *(len(c) for c in column)) for name, column in cells.items()}
    head = "  ".join(f"{name:>{widths[name]}}" for name in columns)
    lines = [f"  {'eval':<{width}}  {head}"]
    for i, metric in enumerate(metrics):
        row = "  ".join(f"{cells[name][i]:>{widths[name]}}" for name in columns)
        lines.append(f"  {metric:<{width}}  {row}")
    return lines


def evals_callback(resolved: Resolved, tokenizer: Any, eval_dataset: Any) -> Any:
    """A TrainerCallback that runs the config's evals at the start and at the end of training on
    the main process (the others wait), or None when the config lists none."""
    chosen = chosen_evals(resolved)
    if not chosen:
        return None
    from transformers import TrainerCallback

    class EvalsBeforeAfter(TrainerCallback):
        def __init__(self) -> None:
            self.results: dict[str, dict[str, float]] = {}

        def _run(self, when: str, args: Any, state: Any, model: Any) -> None:
            if state.is_world_process_zero:
                context = RunContext(resolved, model, tokenizer, "the model being trained", eval_dataset)
                self.results[when] = run_evals(chosen, context)
                state.log_history.append(
                    {
                        **{f"evals_{when}/{k}": v for k, v in self.results[when].items()},
                        "step": state.global_step,
                    }
                )
                if when == "before":
                    print("evals before training:", flush=True)
                    for line in table({"before": self.results["before"]}):
                        print(line, flush=True)
                else:
                    self._report(args)
            _barrier()

        def _report(self, args: Any) -> None:
            print("evals (before -> after training):" if "before" in self.results else "evals:", flush=True)
            for line in table(self.results):
                print(line, flush=True)
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, EVALS_FILE), "w", encoding="utf-8") as handle:
                json.dump(self.results, handle, indent=2)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._run("before", args, state, kw["model"])

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._run("after", args, state, kw["model"])

    return EvalsBeforeAfter()


def _barrier() -> None:
    """The other processes wait while the main one evaluates (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
