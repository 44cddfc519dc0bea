"""TRL's SFTTrainer plus the token accounting this tool logs.

The collator (trainer.data.collate) puts `num_real_tokens` in every batch. This subclass takes it
out before the forward and logs, with each training loss:

- `padding_efficiency`: real tokens / tokens the model processed since the previous log;
- `num_tokens`: real tokens trained on so far, over all processes. TRL's own count sums the
  attention mask, which for a packed 4D mask counts attention pairs, not tokens.

What every method's trainer does besides (staged checkpoints, the guard, packed epochs, FSDP on
CPU) are trainer.training.run_features'.

Where TRL's fused LM head would score every position (on CPU), the loss is computed from the
trained positions' logits alone (trainer.training.lm_loss).
"""

from __future__ import annotations

from typing import Any

import trl

from trainer.training import lm_loss
from trainer.training.run_features import RunFeatures


class SFTTrainer(RunFeatures, trl.SFTTrainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._real_tokens = 0  # this process, cumulative
        self._processed_tokens = 0
        self._logged = (0, 0)  # all processes, at the previous log

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        real = inputs.pop("num_real_tokens", None)
        if real is None:  # a batch from another collator: TRL's count stands
            return super().compute_loss(model, inputs, *args, **kwargs)
        if model.training:
            self._real_tokens += int(real)
            self._processed_tokens += int(inputs["input_ids"].numel())
        # TRL 1.16 _total_train_tokens / _metrics: TRL counts attention-mask sums (pairs under a
        # packed 4D mask) and offers no way to give it the real count
        counted = self._total_train_tokens
        plain_call = not args and not kwargs.get("return_outputs")  # training; eval wants the outputs
        kept = lm_loss.trained_positions(self, model, inputs) if plain_call else None
        if kept is not None:
            loss = lm_loss.labelled_loss(self, model, inputs, kept, kwargs.get("num_items_in_batch"))
        else:
            loss = super().compute_loss(model, inputs, *args, **kwargs)
        self._total_train_tokens = counted  # undo TRL's count; `log` sets the real one
        self._metrics["train" if model.training else "eval"]["num_tokens"] = [float(counted)]
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # a training log, or the end-of-training summary (which must count the steps after the last log)
        if ("loss" in logs or "train_runtime" in logs) and self._processed_tokens:
            import torch

            counts = torch.tensor([self._real_tokens, self._processed_tokens], device=self.args.device)
            real, processed = (int(x) for x in self.accelerator.reduce(counts, reduction="sum").tolist())
            window = (real - self._logged[0], processed - self._logged[1])
            if "loss" in logs and window[1] > 0:
                logs["padding_efficiency"] = round(window[0] / window[1], 4)
                self._logged = (real, processed)
            self._total_train_tokens = self.tokens_before + real
            self._metrics["train"]["num_tokens"] = [float(self._total_train_tokens)]
        super().log(logs, start_time)
