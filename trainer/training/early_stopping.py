"""`early_stopping_patience`: stop training when the eval metric has not improved for N evaluations.

transformers' EarlyStoppingCallback does the counting; it compares each evaluation with
`state.best_metric`, which the trainer updates after every evaluation whenever `metric_for_best_model`
is set (validation fills in `eval_loss`), so it needs neither `load_best_model_at_end` nor a save at
each evaluation. This subclass prints why it stopped, on the main process, and does not warn about
`load_best_model_at_end`: without it the final model is the last step's, with it the best checkpoint.
The evaluation before the first step (`eval_on_start`) is not counted, as transformers keeps no best
metric for it: the first evaluation in training sets the best.
"""

from __future__ import annotations

from typing import Any

from transformers import EarlyStoppingCallback


class EarlyStopping(EarlyStoppingCallback):
    """EarlyStoppingCallback that says when and why it stopped (`stopped_at`: the step, or None)."""

    def __init__(self, patience: int, threshold: float = 0.0):
        super().__init__(early_stopping_patience=patience, early_stopping_threshold=threshold)
        self.stopped_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        pass  # validation made sure of evaluation and metric_for_best_model

    def on_evaluate(  # type: ignore[override]  # transformers' own override adds `metrics`
        self, args: Any, state: Any, control: Any, metrics: Any, **kwargs: Any
    ) -> None:
        best = state.best_metric
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if not control.should_training_stop or self.stopped_at is not None:
            return
        self.stopped_at = state.global_step
        if state.is_world_process_zero:
            metric = args.metric_for_best_model
            metric = metric if metric.startswith("eval_") else f"eval_{metric}"
            by = f" by more than {self.early_stopping_threshold:g}" if self.early_stopping_threshold else ""
            print(
                f"early stopping at step {state.global_step} of {state.max_steps}: {metric} has not "
                f"improved{by} on its best ({best:.4f}) for {self.early_stopping_patience_counter} "
                f"evaluations (early_stopping_patience: {self.early_stopping_patience})",
                flush=True,
            )
