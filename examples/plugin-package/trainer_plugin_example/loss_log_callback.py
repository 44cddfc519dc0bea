"""The `transformers.TrainerCallback` behind the `loss_log` plugin (imports transformers; loaded
only when a run is built)."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import TrainerCallback


class LossLogCallback(TrainerCallback):
    def __init__(self, path: str, stop_below: float | None = None):
        self.path = path
        self.stop_below = stop_below

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        kept = []
        if state.global_step > 0 and os.path.isfile(self.path):  # resumed: keep lines up to the checkpoint
            with open(self.path, encoding="utf-8") as handle:
                kept = [line for line in handle if json.loads(line)["step"] <= state.global_step]
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        if not logs or "loss" not in logs:  # eval and end-of-training summaries have no "loss"
            return control
        if state.is_world_process_zero:
            line = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"]}
            if "learning_rate" in logs:
                line["learning_rate"] = logs["learning_rate"]
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        if self.stop_below is not None and logs["loss"] < self.stop_below:
            if state.is_world_process_zero:
                print(f"loss_log: loss {logs['loss']:.4f} < {self.stop_below} at step {state.global_step}; "
                      "stopping", flush=True)  # fmt: skip
            control.should_training_stop = True
        return control
