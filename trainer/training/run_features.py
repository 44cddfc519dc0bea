"""What every trainer of a run does besides its method's training: the features shared by our
subclasses of TRL's trainers (SFT in trainer.training.sft, the other methods in
trainer.training.methods).

- Checkpoints are staged and renamed into place (trainer.outputs.checkpoints), and rotated without
  ever deleting the newest or the best.
- `Guard` (trainer.training.guard) watches every step for stop signals, a diverging loss and
  gradient-norm spikes; it reads the step's loss and gradient norm from here.
- A resumed run's `num_tokens` counts on from its checkpoint's.
- A packed training set moves to each epoch's rows at the epoch's start, on every process
  (accelerate forwards `set_epoch` to the dataset only in single-process runs).
- `fsdp` runs shard as configured: FSDP1's sharding strategy, and FSDP at all on CPU
  (trainer.training.fsdp_support).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from trainer.outputs import checkpoints
from trainer.training import fsdp_support
from trainer.training.guard import Guard


class _EpochRows(TrainerCallback):
    """Calls `train_dataset.set_epoch(epoch)` before each epoch's dataloader is iterated (state.epoch
    is then the epoch's index, or the index plus the done share when resuming mid-epoch)."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        set_epoch = getattr(self.trainer.train_dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(int(state.epoch))


if TYPE_CHECKING:
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object  # a mixin: the trainer class comes after it in the bases


def logged_tokens(history: list[dict[str, Any]]) -> int:
    """The last logged `num_tokens` (0 before any): where a resumed run's count carries on from."""
    return next((int(h["num_tokens"]) for h in reversed(history) if "num_tokens" in h), 0)


class _ResumedTokens(TrainerCallback):
    """A resumed run counts `num_tokens` on from the checkpoint's last logged count instead of 0."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.tokens_before = logged_tokens(state.log_history)
        # TRL 1.16 SFTTrainer/DPOTrainer/KTOTrainer/RewardTrainer._total_train_tokens: the count they
        # log as num_tokens starts at 0 in __init__, is not saved in checkpoints and has no setter
        if hasattr(self.trainer, "_total_train_tokens"):
            self.trainer._total_train_tokens = self.trainer.tokens_before


class RunFeatures(_TrainerBase):
    """Mixin before a transformers/TRL trainer class: `class X(RunFeatures, trl.DPOTrainer)`."""

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
        self.tokens_before = 0  # real tokens trained before this session (by the checkpoint resumed)
        self.add_callback(_ResumedTokens(self))
        self.guard = Guard(self, **(watchdog or {}))
        self.add_callback(self.guard)
        self._step_loss: Any = None  # this optimizer step's loss so far (sum over micro-batches)
        self._grad_norm: Any = None
        self._staging = False

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
