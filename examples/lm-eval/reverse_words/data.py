"""Loads this folder's data for the reverse_words tasks: `custom_dataset: !function data.load` in
their YAML. lm_eval hands a task's `dataset_kwargs` to this function, and `datasets` would resolve
a relative `data_files` path against the current directory; here it is resolved against this
folder, so the tasks run from any working directory. Offline: a local JSON Lines file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(data_files: str | dict[str, str], **_: Any) -> Any:
    """`datasets.load_dataset("json", data_files=...)` with relative paths taken from this folder."""
    import datasets

    files = {"test": data_files} if isinstance(data_files, str) else dict(data_files)
    resolved = {split: str(HERE / path) for split, path in files.items()}
    return datasets.load_dataset("json", data_files=resolved)
