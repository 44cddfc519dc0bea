"""The output directory: refuse to clobber an earlier run, write the resolved config (the final save
is trainer.training.saving)."""

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


def write_resolved(output_dir: str, resolved: dict[str, Any], comments: dict[str, str] | None = None) -> str:
    """Write config.resolved.yml; `comments` (top-level key -> text) end those keys' lines, e.g.
    `bf16: false  # auto -> off (no GPU with bf16): training in fp32 (the config says bf16: auto)`."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESOLVED_NAME)
    header = "# Every key of the run, defaults included. Re-run with: python -m trainer.cli.train THIS_FILE\n"
    text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    if comments:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            key = line.split(":", 1)[0]
            if key in comments and not line.startswith((" ", "-")) and "\n" not in comments[key]:
                lines[i] = f"{line}  # {comments[key]}"
        text = "\n".join(lines) + "\n"
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(header)
        handle.write(text)
    os.replace(path + ".tmp", path)
    return path
