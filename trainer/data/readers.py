"""Read rows from local files (.jsonl, .jsonl.gz, .json, .csv, .parquet) or `datasets.load_dataset`.

Each row comes with its location (`file:LINE` or `file row N`), so a bad row can be named exactly.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from typing import Any

import jsonlines

from trainer.config.schema import DatasetSpec


class DataError(Exception):
    """A row or file that cannot be used, with its location."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}  {message}")
        self.where, self.message = where, message


Row = tuple[str, Any]
"""(location, row) where row should be a mapping."""


def read_rows(spec: DatasetSpec) -> Iterator[Row]:
    """Yield (location, row) for every row of a dataset spec; unreadable input raises DataError."""
    path = spec.path
    if path.endswith((".jsonl", ".jsonl.gz")) and os.path.isfile(path):
        yield from _jsonl(path)
    elif path.endswith(".json") and os.path.isfile(path):
        yield from _json(path)
    elif path.endswith(".csv") and os.path.isfile(path):
        yield from _csv(path)
    elif path.endswith(".parquet") and os.path.isfile(path):
        yield from _parquet(path)
    else:
        yield from _load_dataset(spec)


def _jsonl(path: str) -> Iterator[Row]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", jsonlines.Reader([line]).read()
            except jsonlines.InvalidLineError as err:
                cause = err.__cause__ or err
                yield f"{path}:{number}", DataError(f"{path}:{number}", f"invalid JSON: {cause}")


def _json(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}", f"invalid JSON: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(path, 'a .json dataset must be a list of objects (or {"data": [...]})')
    for number, row in enumerate(data, start=1):
        yield f"{path} row {number}", row


def _csv(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}


def _parquet(path: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {number}", row


def _load_dataset(spec: DatasetSpec) -> Iterator[Row]:
    """Directories and hub dataset names go through `datasets.load_dataset`."""
    import datasets

    try:
        dataset = datasets.load_dataset(
            spec.path, name=spec.name, split=spec.split, data_files=spec.data_files
        )
    except Exception as err:
        raise DataError(spec.path, f"cannot load dataset: {type(err).__name__}: {err}") from None
    for number, row in enumerate(dataset, start=1):
        yield f"{spec.path} [{spec.split}] row {number}", row
