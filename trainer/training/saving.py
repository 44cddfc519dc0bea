"""The final save: the whole model (or PEFT adapter) from every process's part, written into a
temporary folder and moved into output_dir, so a crash mid-save never leaves a half-written model."""

from __future__ import annotations

import os
import shutil
from typing import Any

from trainer.training import fsdp_support


def save_final(trainer: Any, output_dir: str) -> None:
    """Save the final model + tokenizer into a temporary folder, then move the files in place, so a
    crash mid-save never leaves a half-written model in output_dir."""
    staging = os.path.join(output_dir, ".final.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    _save_model(trainer, staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        os.rmdir(staging)
        trainer.save_state()
    trainer.accelerator.wait_for_everyone()


def _save_model(trainer: Any, directory: str) -> None:
    """The whole model (or PEFT adapter) from every process's part. Under FSDP transformers saves
    nothing while checkpoints are sharded, so the final save gathers a full state dict."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(directory)
        return
    if fsdp_support.needs_fsdp1_gather(trainer):
        state_dict = fsdp_support.fsdp1_full_state_dict(trainer)
        if trainer.is_world_process_zero():
            # transformers 5.x Trainer._save: save_model() would gather the state dict again
            trainer._save(directory, state_dict=state_dict)
        return
    plugin = trainer.accelerator.state.fsdp_plugin
    previous = plugin.state_dict_type
    _use_state_dict_type(plugin, "FULL_STATE_DICT")
    try:
        trainer.save_model(directory)
    finally:
        _use_state_dict_type(plugin, previous)


def _use_state_dict_type(plugin: Any, kind: Any) -> None:
    # accelerate 1.x FullyShardedDataParallelPlugin keeps an existing (e.g. sharded) state-dict config
    # when set_state_dict_type changes the type, so the configs are cleared first.
    plugin.state_dict_config = plugin.optim_state_dict_config = None
    plugin.set_state_dict_type(kind)
