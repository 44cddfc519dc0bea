"""TRL's SFTTrainer plus the token accounting this tool logs.

The collator (trainer.data.collate) puts `num_real_tokens` in every batch. This subclass takes it
out before the forward and logs, with each training loss:

- `padding_efficiency`: real tokens / tokens the model processed since the previous log;
- `num_tokens`: real tokens trained on so far, over all processes. TRL's own count sums the
  attention mask, which for a packed 4D mask counts attention pairs, not tokens.

Checkpoints are staged and renamed into place (trainer.outputs.checkpoints), and `Guard`
(trainer.training.guard) watches every step for stop signals, a diverging loss and gradient-norm spikes.

Where TRL's fused LM head would score every position (on CPU), the loss is computed from the
trained positions' logits alone (trainer.training.lm_loss).

It moves a packed training set to each epoch's rows at the epoch's start, on every process
(accelerate forwards `set_epoch` to the dataset only in single-process runs), and makes `fsdp` runs
shard as configured: FSDP1's sharding strategy, and FSDP at all on CPU (see trainer.training.fsdp_support).
"""

from __future__ import annotations

import os
from typing import Any

import trl
from transformers import TrainerCallback

from trainer.outputs import checkpoints
from trainer.training import fsdp_support, lm_loss
from trainer.training.guard import Guard


class _EpochRows(TrainerCallback):
    """Calls `train_dataset.set_epoch(epoch)` before each epoch's dataloader is iterated (state.epoch
    is then the epoch's index, or the index plus the done share when resuming mid-epoch)."""

    def __init__(self, trainer: trl.SFTTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        set_epoch = getattr(self.trainer.train_dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(int(state.epoch))


def logged_tokens(history: list[dict[str, Any]]) -> int:
    """The last logged `num_tokens` (0 before any): where a resumed run's count carries on from."""
    return next((int(h["num_tokens"]) for h in reversed(history) if "num_tokens" in h), 0)


class _ResumedTokens(TrainerCallback):
    """A resumed run counts on from the checkpoint's `num_tokens` instead of from 0."""

    def __init__(self, trainer: SFTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # TRL 1.16 SFTTrainer._total_train_tokens: the count TRL logs as num_tokens has no setter
        self.trainer.tokens_before = self.trainer._total_train_tokens = logged_tokens(state.log_history)


class SFTTrainer(trl.SFTTrainer):
    def __init__(
        self,
        *args: Any,
        save_total_limit: int | None = None,
        watchdog: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # Not args.save_total_limit: with a limit of 1 transformers deletes the newest checkpoint at
        # the end of training when another one is the best.
        self.save_total_limit = save_total_limit
        self.add_callback(_EpochRows(self))
        self.add_callback(_ResumedTokens(self))
        self.tokens_before = 0  # real tokens trained before this session (by the checkpoint resumed)
        self.guard = Guard(self, **(watchdog or {}))
        self.add_callback(self.guard)
        self._step_loss: Any = None  # this optimizer step's loss so far (sum over micro-batches)
        self._grad_norm: Any = None
        self._staging = False
        self._real_tokens = 0  # this process, cumulative
        self._processed_tokens = 0
        self._logged = (0, 0)  # all processes, at the previous log

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp_support.engage(self)  # FSDP on CPU and FSDP1 sharding (accelerate gaps)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)
        self._step_loss = loss if self._step_loss is None else self._step_loss + loss
        return loss

    def take_step_loss(self) -> Any:
        """The finished step's loss tensor (None when it had no batches); resets for the next."""
        loss, self._step_loss = self._step_loss, None
        return loss

    # transformers 5.x Trainer._get_grad_norm: the step's norm reaches callbacks only as a logged
    # float on logging steps; the guard needs it every step
    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        self._grad_norm = norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        return norm

    def take_grad_norm(self) -> float | None:
        norm, self._grad_norm = self._grad_norm, None
        return None if norm is None else float(norm)

    # transformers 5.x Trainer._get_output_dir / _save_checkpoint: no public hook chooses where a
    # checkpoint is written, and staging it whole-or-absent needs that
    def _get_output_dir(self, trial: Any) -> str:
        if self._staging:  # transformers writes checkpoint-N under this run folder
            return checkpoints.staging_dir(str(self.args.output_dir))
        return str(super()._get_output_dir(trial))

    # transformers 5.x Trainer._save_checkpoint: wrapped to stage the checkpoint (see _get_output_dir)
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """transformers' checkpoint, staged in output_dir/.staging and renamed into place once every
        process has written its part; then rotation that keeps the best and the newest."""
        if trial is not None:  # a hyperparameter-search trial folder: transformers' own way
            super()._save_checkpoint(model, trial)
            return
        output_dir = str(self.args.output_dir)
        staging = checkpoints.staging_dir(output_dir)
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)  # what a crash mid-save left
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        final = os.path.join(output_dir, name)
        best = self.state.best_model_checkpoint
        if best and os.path.dirname(os.path.normpath(best)) == os.path.normpath(staging):
            self.state.best_model_checkpoint = final  # transformers saw the best one in staging
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
        if self.args.should_save:
            checkpoints.publish(output_dir, name)
            checkpoints.rotate(output_dir, self.save_total_limit, [final, self.state.best_model_checkpoint])
        self.accelerator.wait_for_everyone()

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
