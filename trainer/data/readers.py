"""Read rows from a dataset entry: local files (.jsonl, .jsonl.gz, .json, .csv, .parquet, .arrow),
directories and globs of them, `save_to_disk` directories, or hub datasets via `datasets.load_dataset`.

Each row comes with its location (`file:LINE` or `file row N`), so a bad row can be named exactly.
A `Source` also says what identifies its content, for the prepared-dataset fingerprint.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

import jsonlines

from trainer.config.schema import DatasetSpec

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet", ".arrow")


class DataError(Exception):
    """A row or file that cannot be used, with its location."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}  {message}")
        self.where, self.message = where, message


Row = tuple[str, Any]
"""(location, row) where row should be a mapping (or a DataError for an unparsable line)."""


class Source:
    """One dataset entry: where its rows come from and what identifies their content."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.files = _local_files(spec)
        self._dataset: Any = None

    @property
    def is_local_files(self) -> bool:
        return self.files is not None

    def rows(self) -> Iterator[Row]:
        """Yield (location, row) for every row; an unreadable file raises DataError."""
        if self.files is not None:
            for path in self.files:
                yield from read_file(path)
            return
        dataset = self._load()
        label = self.spec.path if os.path.exists(self.spec.path) else f"{self.spec.path} [{self.spec.split}]"
        for number, row in enumerate(dataset, start=1):
            yield f"{label} row {number}", row

    def identity(self) -> str:
        """A hash of the content: local files by bytes, hub and Arrow datasets by their fingerprint."""
        digest = hashlib.sha256()
        if self.files is not None:
            for path in self.files:
                digest.update(os.path.abspath(path).encode() + b"\0")
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
        else:
            dataset = self._load()
            digest.update(str(getattr(dataset, "_fingerprint", "")).encode())
            digest.update(str(len(dataset)).encode())
        return digest.hexdigest()

    def _load(self) -> Any:
        if self._dataset is None:
            self._dataset = _load_dataset(self.spec)
        return self._dataset


def _local_files(spec: DatasetSpec) -> list[str] | None:
    """The files to read ourselves (keeping file:line), or None for load_dataset/load_from_disk."""
    path = os.path.expanduser(spec.path)
    if spec.data_files is not None:
        return None
    if glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        files = [f for m in matches for f in (_split_files(m, spec.split) if os.path.isdir(m) else [m])]
        return [f for f in files if f.endswith(FILE_SUFFIXES)]
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path) and not _is_saved_dataset(path):
        files = _split_files(path, spec.split)
        return files if all(f.endswith(FILE_SUFFIXES) for f in files) else None
    return None


def _split_files(directory: str, split: str) -> list[str]:
    """The files of one split in a directory, by the `datasets` library's own naming rules
    (train.jsonl, data/test-00001.parquet, ...; every file is 'train' when none is named)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        splits = DataFilesDict.from_patterns(get_data_patterns(directory), base_path=directory)
    except Exception as err:  # datasets raises EmptyDatasetError and friends
        raise DataError(directory, f"no data files found: {err}") from None
    if split not in splits:
        found = ", ".join(map(str, splits))
        raise DataError(directory, f"no files for split '{split}'; found splits: {found}")
    return sorted(splits[split])


def _is_saved_dataset(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(
        os.path.join(path, "dataset_dict.json")
    )


def read_file(path: str) -> Iterator[Row]:
    """Rows of one local file, by suffix; a file that cannot be read is a DataError naming it."""
    readers = {".jsonl": _jsonl, ".jsonl.gz": _jsonl, ".json": _json, ".csv": _csv}
    readers |= {".parquet": _parquet, ".arrow": _arrow}
    suffix = next((s for s in readers if path.endswith(s)), None)
    if suffix is None:
        raise DataError(path, f"unknown file type; expected one of {', '.join(FILE_SUFFIXES)}")
    try:
        yield from readers[suffix](path)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read: {err}") from None


def _jsonl(path: str) -> Iterator[Row]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", jsonlines.Reader([line]).read()
                except jsonlines.InvalidLineError as err:
                    cause = err.__cause__ or err
                    yield f"{path}:{number}", DataError(f"{path}:{number}", f"invalid JSON: {cause}")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as err:
        raise DataError(path, f"cannot read: {err}") from None


def _json(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # JSON Lines in a .json file
                yield from _jsonl(path)
                return
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
        try:
            _ = reader.fieldnames  # reads the header line
            while True:
                first_line = reader.line_num + 1  # a quoted field may span several lines
                row = next(reader, None)
                if row is None:
                    return
                yield f"{path}:{first_line}", {k: v for k, v in row.items() if k is not None}
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}", f"invalid CSV: {err}") from None


def _parquet(path: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:
        raise DataError(path, f"cannot read parquet: {err}") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield f"{path} row {number}", row


def _arrow(path: str) -> Iterator[Row]:
    """An Arrow file as written by `datasets` (stream format) or pyarrow (IPC file format)."""
    import pyarrow as pa

    number = 0
    try:
        with pa.memory_map(path) as source:
            try:
                batches: Any = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield f"{path} row {number}", row
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(path, f"cannot read Arrow file: {err}") from None


def _load_dataset(spec: DatasetSpec) -> Any:
    """Hub datasets, `save_to_disk` directories, and anything else `datasets` can load."""
    import datasets

    try:
        if os.path.isdir(spec.path) and _is_saved_dataset(spec.path):
            loaded = datasets.load_from_disk(spec.path)
            return loaded[spec.split] if isinstance(loaded, datasets.DatasetDict) else loaded
        # Never a dataset's loading script: datasets >= 4 has dropped them; 3.x would ask on a
        # terminal (or follow HF_DATASETS_TRUST_REMOTE_CODE) unless told False.
        return datasets.load_dataset(
            spec.path,
            name=spec.name,
            split=spec.split,
            data_files=spec.data_files,
            revision=spec.revision,
            trust_remote_code=False,
        )
    except Exception as err:
        raise DataError(spec.path, f"cannot load dataset: {type(err).__name__}: {err}") from None
