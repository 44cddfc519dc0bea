"""The training progress bar: transformers' tqdm bar (with its ETA) plus real tokens per second."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from trainer.training.run_features import logged_tokens


class TokenProgress(ProgressCallback):
    """transformers' ProgressCallback, with the real-token rate in the bar and in each printed log line.

    The rate is the logged `num_tokens` (real tokens over all processes, see trainer.training.sft) over the
    training time since `on_train_begin`, evaluation time (`eval_*runtime`) left out. Only the main
    process draws; bars are drawn only on a terminal (tqdm's `disable=None`), so a redirected log
    gets the log lines without the redrawn bars.
    """

    def __init__(self, max_str_len: int = 100) -> None:
        super().__init__(max_str_len)
        self._started = time.perf_counter()
        self._evaluating = 0.0  # seconds spent in evaluation since the start
        self._tokens_before = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, disable=None)
        self.current_step = 0
        self._tokens_before = logged_tokens(state.log_history)  # resumed: trained before this session
        self._started = time.perf_counter()
        self._evaluating = 0.0

    def on_prediction_step(
        self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero and has_length(eval_dataloader):
            bar: Any = self.prediction_bar
            if bar is None:
                leave = self.training_bar is None
                bar = tqdm(total=len(eval_dataloader), leave=leave, dynamic_ncols=True, disable=None)
                self.prediction_bar = bar
            bar.update(1)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = dict(logs or {})  # a copy: what the bar shows is not what is logged
        self._evaluating += sum(v for k, v in logs.items() if k.startswith("eval_") and k.endswith("runtime"))
        if "num_tokens" in logs:
            seconds = time.perf_counter() - self._started - self._evaluating
            rate = (logs["num_tokens"] - self._tokens_before) / max(seconds, 1e-9)
            logs["tokens_per_second"] = round(rate)  # an int prints in full
            if self.training_bar is not None:
                self.training_bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        super().on_log(args, state, control, logs=logs, **kwargs)
