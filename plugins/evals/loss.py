"""`loss`: next-token loss and perplexity of the run's eval split, on the trained tokens only (the
same encoding and loss mask as training), averaged over tokens: perplexity = exp(loss).

    evals:
      - type: loss          # the eval split: val_set_size, or test_datasets
        batch_size: 16

`trainer evaluate RUN --data FILE --type FORMATTER` measures any other data the same way.
"""

from __future__ import annotations

import math

from pydantic import Field

from trainer.api import Eval, EvalContext, Options, TrainConfig


class LossOptions(Options):
    batch_size: int = Field(16, gt=0, description="Rows per forward pass")


class Loss(Eval[LossOptions]):
    name = "loss"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        method = config.plugin("method")
        shape = method.data[0] if method is not None else "sft"
        if shape != "sft":
            return [
                f"measures next-token loss on prompt/answer rows; method '{method.name}' trains on "
                f"'{shape}' rows (its own eval metrics are in the training log)"
            ]
        if not config.test_datasets and config.val_set_size <= 0:
            return ["needs an eval split: set val_set_size or test_datasets"]
        return []

    def run(self, context: EvalContext) -> dict[str, float]:
        rows = context.eval_rows()
        if rows is None or len(rows) == 0:
            raise ValueError("the loss eval found no eval rows (val_set_size / test_datasets)")
        total, tokens = context.loss(rows, self.options.batch_size)
        mean = total / max(tokens, 1)
        return {"loss": mean, "perplexity": math.exp(min(mean, 700.0)), "tokens": float(tokens)}
