"""Checkpoints that are whole or absent: staged saves renamed into place, which one `resume` picks,
and rotation that keeps the best and the newest.

A checkpoint is written by transformers into `output_dir/.staging/checkpoint-N` and renamed to
`output_dir/checkpoint-N` once every process has written its part, so a crash mid-save leaves only
the staging folder (cleared by the next save), never a `checkpoint-N` that does not load. `resume:
auto` still checks each candidate, newest first, and skips one that is incomplete or corrupt (copied
half-way, a truncated file) with a warning naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from typing import Any

from trainer.config.errors import ConfigErrors, Problem

STAGING = ".staging"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")


def checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders in output_dir, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def problem_with(checkpoint: str) -> str | None:
    """Why `checkpoint` cannot be resumed from, or None when it looks whole: trainer_state.json
    reads, the model weights (or DeepSpeed / FSDP shards) are there and every safetensors header and
    torch zip archive in it is intact (a truncated file fails those)."""
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
        int(state["global_step"])
    except FileNotFoundError:
        return "no trainer_state.json (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json is unreadable ({type(err).__name__}: {err})"
    names = os.listdir(checkpoint)
    sharded = any(n.startswith(("global_step", "pytorch_model_fsdp")) for n in names)
    if not sharded and not any(n in names for n in WEIGHTS):
        return "no model weights in it"
    for root, _, files in os.walk(checkpoint):
        for name in files:
            path = os.path.join(root, name)
            reason = _file_problem(path)
            if reason:
                return f"{os.path.relpath(path, checkpoint)} {reason}"
    return None


def _file_problem(path: str) -> str | None:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own error types for a bad header
            return f"is not a readable safetensors file ({err})"
        return None
    if path.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(path):
        return "is truncated or corrupt (not a torch archive)"
    return None


def newest_complete(output_dir: str, warn: Any) -> str | None:
    """The newest checkpoint in output_dir that can be resumed from; each newer one that cannot is
    skipped with `warn(message)` naming it."""
    for checkpoint in checkpoints(output_dir):
        reason = problem_with(checkpoint)
        if reason is None:
            return checkpoint
        warn(f"warning: skipping checkpoint {checkpoint}: {reason}")
    return None


def resume_point(config: Any, warn: Any) -> str | None:
    """The checkpoint `resume` names (None: start from step 0). `resume: auto` with no usable
    checkpoint starts afresh unless output_dir holds a finished run, which it would overwrite."""
    if not config.resume:
        return None
    if config.resume != "auto":
        reason = problem_with(config.resume) if os.path.isdir(config.resume) else "no such folder"
        if reason:
            raise ConfigErrors([Problem(("resume",), f"cannot resume from '{config.resume}': {reason}")])
        return str(config.resume)
    found = newest_complete(config.output_dir, warn)
    if found is None and os.path.isfile(os.path.join(config.output_dir, "trainer_state.json")):
        raise ConfigErrors(
            [
                Problem(
                    ("resume",),
                    f"'{config.output_dir}' holds a finished run and no checkpoint to resume from; "
                    "set overwrite_output_dir: true to train it again",
                )
            ]
        )
    if found is None:
        warn(f"resume: auto: no complete checkpoint in {config.output_dir} yet; starting from step 0")
    return found


def staging_dir(output_dir: str) -> str:
    return os.path.join(output_dir, STAGING)


def publish(output_dir: str, name: str) -> str:
    """Move the staged `name` into output_dir (replacing a stale folder of that name, left by a run
    that went further before being resumed from an earlier checkpoint) and drop the staging folder."""
    staged = os.path.join(staging_dir(output_dir), name)
    target = os.path.join(output_dir, name)
    if os.path.exists(target):
        stale = os.path.join(staging_dir(output_dir), name + ".stale")
        os.replace(target, stale)
    os.replace(staged, target)
    _fsync_dir(output_dir)
    shutil.rmtree(staging_dir(output_dir), ignore_errors=True)
    return target


def _fsync_dir(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # not every filesystem syncs a directory
    finally:
        os.close(descriptor)


def rotate(output_dir: str, limit: int | None, keep: list[str | None]) -> list[str]:
    """Delete the oldest checkpoints beyond `limit`, never the newest nor any in `keep` (the best,
    the one just written); returns the deleted paths."""
    if not limit:
        return []
    found = checkpoints(output_dir)
    protected = {os.path.abspath(p) for p in [*found[:1], *keep] if p}
    deleted: list[str] = []
    for checkpoint in reversed(found):  # oldest first
        if len(found) - len(deleted) <= limit:
            break
        if os.path.abspath(checkpoint) not in protected:
            shutil.rmtree(checkpoint, ignore_errors=True)
            deleted.append(checkpoint)
    return deleted
