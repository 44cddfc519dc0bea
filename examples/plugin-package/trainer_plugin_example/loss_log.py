"""`loss_log`: each logged training loss as one JSON line, and an optional early stop on low loss.

    callbacks:
      - type: loss_log
        path: null            # default: loss_log.jsonl inside output_dir
        stop_below: 0.05      # optional: stop training once a logged loss falls below this

Lines look like `{"step": 10, "epoch": 0.4, "loss": 1.23, "learning_rate": 0.0002}`, one per
logging step (see `logging_steps`), written by the main process. The loss is the one the trainer
logs, averaged over processes, so every process takes the same stop decision. When resuming from
a checkpoint the file is kept and lines after the checkpoint's step are replaced.
"""

from __future__ import annotations

import os

from pydantic import Field

from trainer.api import Callback, Contribution, Options, TrainConfig

DEFAULT_NAME = "loss_log.jsonl"


class LossLogOptions(Options):
    path: str | None = Field(None, description=f"JSONL file to write (default: output_dir/{DEFAULT_NAME})")
    stop_below: float | None = Field(
        None, gt=0, description="Stop training when a logged loss falls below this value"
    )


class LossLog(Callback[LossLogOptions]):
    """Each logged training loss as a JSON line; optional early stop below a threshold."""

    name = "loss_log"

    def log_path(self, config: TrainConfig) -> str:
        opts = self.options
        return opts.path or os.path.join(config.output_dir, DEFAULT_NAME)

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        """Runs at validate time: refuse to overwrite a file the user already has. A problem is a
        message, or (option name, message) to point at that option and its line."""
        opts = self.options
        if opts.path and os.path.exists(opts.path) and not config.resume:
            return [("path", f"'{opts.path}' already exists; remove it or choose another file")]
        return []

    def contribute(self, config: TrainConfig) -> Contribution:
        # The callback subclasses transformers.TrainerCallback, so its module imports transformers:
        # import it here, when a run is being built, never at module level.
        from trainer_plugin_example.loss_log_callback import LossLogCallback

        opts = self.options
        return Contribution(callbacks=[LossLogCallback(self.log_path(config), opts.stop_below)])
