"""The output directory: refuse to clobber, write the resolved config, save the final model safely."""

from __future__ import annotations

import os
import shutil
from typing import Any

import yaml

from trainer.config.errors import ConfigErrors, Problem

RESOLVED_NAME = "config.resolved.yml"


def check_output_dir(output_dir: str, overwrite: bool, resume: str | None) -> None:
    """A non-empty output_dir is refused unless the config overwrites (an earlier run) or resumes."""
    if not os.path.isdir(output_dir) or set(os.listdir(output_dir)) <= {RESOLVED_NAME}:
        return  # empty, or a run of ours that stopped before training (only its resolved config)
    if resume:
        return
    if not overwrite:
        raise ConfigErrors(
            [
                Problem(
                    ("output_dir",),
                    f"'{output_dir}' exists and is not empty; set "
                    "overwrite_output_dir: true to replace it, or resume: auto to continue it",
                )
            ]
        )
    if not os.path.isfile(os.path.join(output_dir, RESOLVED_NAME)):
        raise ConfigErrors(
            [
                Problem(
                    ("output_dir",),
                    f"'{output_dir}' is not empty and was not written by "
                    "trainer (no config.resolved.yml); refusing to delete it",
                )
            ]
        )


def clear_previous_run(output_dir: str) -> None:
    """Remove an earlier run's files (only called after check_output_dir allowed it)."""
    if os.path.isfile(os.path.join(output_dir, RESOLVED_NAME)):
        shutil.rmtree(output_dir)


def write_resolved(output_dir: str, resolved: dict[str, Any]) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESOLVED_NAME)
    header = "# Every key of the run, defaults included. Re-run with: python -m trainer.cli.train THIS_FILE\n"
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump(resolved, handle, sort_keys=False, allow_unicode=True)
    os.replace(path + ".tmp", path)
    return path


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
    from trainer.training import fsdp_support

    if not trainer.is_fsdp_enabled:
        trainer.save_model(directory)
        return
    if fsdp_support.needs_fsdp1_gather(trainer):
        state_dict = fsdp_support.fsdp1_full_state_dict(trainer)
        if trainer.is_world_process_zero():
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
    # accelerate keeps an existing (e.g. sharded) state-dict config when the type changes.
    plugin.state_dict_config = plugin.optim_state_dict_config = None
    plugin.set_state_dict_type(kind)
