"""Build the train and eval datasets of a run: read, format, encode, report, split, cache.

The result has `input_ids` and `labels` columns, which TRL's SFTTrainer uses as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer import __version__
from trainer.api import Formatter, RowError
from trainer.config.validate import Resolved
from trainer.data.encode import IGNORE, SegmentEncoder
from trainer.data.readers import DataError, read_rows


@dataclass
class DataReport:
    """What happened to the rows: printed at start and written beside a cached dataset."""

    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    total_tokens: int = 0
    trainable_tokens: int = 0
    length_p50: int = 0
    length_p95: int = 0
    length_max: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    first_bad_rows: list[str] = field(default_factory=list)
    cache: str = ""

    def drop(self, reason: str, where: str, message: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.first_bad_rows) < 5:
            self.first_bad_rows.append(f"{where}  {message}")

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        out = [
            f"rows read {self.rows_read}, kept {self.rows_kept}, dropped: {dropped}, "
            f"truncated to sequence_len: {self.truncated}",
            f"tokens {self.total_tokens} (trainable {self.trainable_tokens}); "
            f"length p50 {self.length_p50} / p95 {self.length_p95} / max {self.length_max}",
            f"train rows {self.train_rows}, eval rows {self.eval_rows}",
        ]
        out += [f"  skipped: {line}" for line in self.first_bad_rows]
        if self.cache:
            out.append(self.cache)
        return out


def encode_rows(resolved: Resolved, tokenizer: Any) -> tuple[dict[str, list[Any]], DataReport]:
    """Read and encode every dataset of the config, in order."""
    config = resolved.config
    encoder = SegmentEncoder(tokenizer, config.sequence_len)
    columns: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    report = DataReport()
    for spec, chosen in zip(config.datasets, resolved.formatters, strict=True):
        formatter: Formatter = chosen.plugin  # type: ignore[assignment]
        for where, row in read_rows(spec):
            report.rows_read += 1
            try:
                if isinstance(row, DataError):
                    raise row
                if not isinstance(row, dict):
                    raise DataError(where, f"a row must be an object, got {type(row).__name__}")
                encoded = encoder.encode(formatter, formatter.format(row))
            except (DataError, RowError) as err:
                message = err.message if isinstance(err, DataError) else str(err)
                if config.on_bad_rows == "fail":
                    raise DataError(where, f"{message} (set on_bad_rows: skip to skip such rows)") from None
                report.drop("bad", where, message)
                continue
            trainable = sum(1 for label in encoded.labels if label != IGNORE)
            if trainable == 0:
                report.drop("no trainable tokens", where, "nothing left to train on after truncation")
                continue
            report.truncated += encoded.truncated
            report.total_tokens += len(encoded.input_ids)
            report.trainable_tokens += trainable
            columns["input_ids"].append(encoded.input_ids)
            columns["labels"].append(encoded.labels)
    report.rows_kept = len(columns["input_ids"])
    if report.rows_kept == 0:
        raise DataError(config.datasets[0].path, "no usable rows in the datasets")
    lengths = sorted(len(ids) for ids in columns["input_ids"])
    report.length_p50 = lengths[len(lengths) // 2]
    report.length_p95 = lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]
    report.length_max = lengths[-1]
    return columns, report


def build_datasets(resolved: Resolved, tokenizer: Any) -> tuple[Any, Any, DataReport, str | None]:
    """Train and eval `datasets.Dataset`s (eval None without val_set_size), the report, and the
    cache directory used (None without dataset_prepared_path)."""
    import datasets

    config = resolved.config
    cache_dir = None
    if config.dataset_prepared_path:
        cache_dir = os.path.join(config.dataset_prepared_path, fingerprint(resolved, tokenizer))
        if os.path.isfile(os.path.join(cache_dir, "report.json")):
            with open(os.path.join(cache_dir, "report.json"), encoding="utf-8") as handle:
                report = DataReport(**json.load(handle))
            report.cache = f"reused the prepared dataset {cache_dir} (nothing that changes it changed)"
            train = datasets.load_from_disk(os.path.join(cache_dir, "train"))
            has_eval = os.path.isdir(os.path.join(cache_dir, "eval"))
            evals = datasets.load_from_disk(os.path.join(cache_dir, "eval")) if has_eval else None
            return (*_limit(train, evals, resolved, report), report, cache_dir)
    columns, report = encode_rows(resolved, tokenizer)
    full = datasets.Dataset.from_dict(columns)
    train, evals = split(full, config.val_set_size, config.seed)
    if cache_dir:
        report.cache = f"prepared dataset written to {cache_dir}"
        _write_cache(cache_dir, train, evals, report)
    return (*_limit(train, evals, resolved, report), report, cache_dir)


def split(dataset: Any, val_set_size: float, seed: int) -> tuple[Any, Any]:
    """Deterministic train/eval split: a share (0 < x < 1) or a count of rows, by seed."""
    if val_set_size <= 0:
        return dataset, None
    size: float | int = val_set_size if val_set_size < 1 else int(val_set_size)
    if isinstance(size, int) and size >= len(dataset):
        raise DataError("val_set_size", f"{size} eval rows leaves no training rows ({len(dataset)} in all)")
    parts = dataset.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _limit(train: Any, evals: Any, resolved: Resolved, report: DataReport) -> tuple[Any, Any]:
    config = resolved.config
    if config.max_train_samples and len(train) > config.max_train_samples:
        train = train.select(range(config.max_train_samples))
    if evals is not None and config.max_eval_samples and len(evals) > config.max_eval_samples:
        evals = evals.select(range(config.max_eval_samples))
    report.train_rows, report.eval_rows = len(train), len(evals) if evals is not None else 0
    return train, evals


def _write_cache(cache_dir: str, train: Any, evals: Any, report: DataReport) -> None:
    """Write to a temporary directory, then rename: a half-written cache is never used."""
    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    train.save_to_disk(os.path.join(tmp, "train"))
    if evals is not None:
        evals.save_to_disk(os.path.join(tmp, "eval"))
    with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(asdict(report), handle, indent=2)
    try:
        os.replace(tmp, cache_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)


def fingerprint(resolved: Resolved, tokenizer: Any) -> str:
    """A hash of everything that changes the prepared data."""
    config = resolved.config
    resolved_dict = resolved.to_dict()
    digest = hashlib.sha256()
    keys = ("datasets", "sequence_len", "val_set_size", "seed", "on_bad_rows")
    digest.update(json.dumps({k: resolved_dict[k] for k in keys}, sort_keys=True).encode())
    digest.update(__version__.encode())
    for spec in config.datasets:
        for file in _local_files(spec.path):
            digest.update(file.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return "prepared-" + digest.hexdigest()[:16]


def _local_files(path: str) -> list[str]:
    """The files behind a local dataset path (none for a hub name: its name and split are hashed)."""
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return found
