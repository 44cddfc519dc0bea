"""Build the train and eval datasets of a run: read, format, encode, filter, de-duplicate, split,
mix, shuffle, report, cache.

The result has `input_ids` and `labels` columns (-100 where no loss), which TRL's SFTTrainer uses
as they are; for the other methods, the columns of their data shape (trainer.data.shapes:
`prompt_ids`, `chosen_ids`, `rejected_ids` for preference pairs, ...). With `dataset_prepared_path`
the result is saved under a directory named by a fingerprint of everything that changes it, and
reused when nothing did.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from trainer import __version__
from trainer.api import Formatter
from trainer.api.resolved import Chosen, Resolved
from trainer.config.errors import dotted
from trainer.data.encode import Encoded
from trainer.data.process import RowProcessor, process_rows
from trainer.data.readers import DataError, Source
from trainer.data.report import DataReport, DatasetCounts

FINGERPRINT_KEYS = (
    "datasets", "test_datasets", "sequence_len", "val_set_size", "seed", "on_bad_rows", "too_long",
    "filters", "shuffle",
)  # fmt: skip
"""Plus the method's data shape, which decides the columns."""
"""Config keys that change the prepared data (the data files' bytes and the tokenizer are hashed too)."""


@dataclass
class Prepared:
    train: Any
    eval: Any
    report: DataReport
    cache_dir: str | None


@dataclass
class _Rows:
    """The kept rows of one dataset: each row is a list of examples (several for chunked text)."""

    rows: list[list[Encoded]] = field(default_factory=list)


def build_datasets(resolved: Resolved, tokenizer: Any) -> Prepared:
    """Prepare (or reuse) the datasets of a run."""
    import datasets

    config = resolved.config
    prepare_formatters(resolved, tokenizer)
    train_sources = [Source(spec) for spec in config.datasets]
    test_sources = [Source(spec) for spec in config.test_datasets]
    fp = fingerprint(resolved, tokenizer, [*train_sources, *test_sources])
    cache_dir = os.path.join(config.dataset_prepared_path, fp) if config.dataset_prepared_path else None
    if cache_dir and is_complete(cache_dir):
        train, evals, report = load_cache(cache_dir)
        report.cache = f"reused the prepared dataset {cache_dir} (nothing that changes it changed)"
        return Prepared(*_limit(train, evals, resolved, report), report, cache_dir)

    report = DataReport(fingerprint=fp)
    seen: set[bytes] = set()
    per_source = []
    for role, sources, chosen_list in (
        ("train", train_sources, resolved.formatters),
        ("test", test_sources, resolved.test_formatters),
    ):
        for source, chosen in zip(sources, chosen_list, strict=True):
            counts = DatasetCounts(source.spec.path, role, weight=source.spec.weight)
            kept = _encode_source(resolved, tokenizer, source, chosen, counts, report, seen)
            report.datasets.append(counts)
            per_source.append((counts, kept))
    report.rows_kept = sum(counts.rows_kept for counts, _ in per_source)
    report.examples = sum(counts.examples for counts, _ in per_source)
    train_parts = [kept.rows for counts, kept in per_source if counts.role == "train"]
    test_rows = [row for counts, kept in per_source if counts.role == "test" for row in kept.rows]
    if not any(train_parts):
        raise DataError(config.datasets[0].path, "no usable rows in the training datasets")
    where = resolved.source.where(("val_set_size",)) or "val_set_size"
    train_parts, eval_rows = _hold_out(train_parts, test_rows, config.val_set_size, config.seed, where)
    train_rows = _mix(train_parts, [s.spec.weight for s in train_sources], config.seed, report)
    if config.shuffle:
        train_rows = _shuffled(train_rows, config.seed)
    train_examples = [example for row in train_rows for example in row]
    eval_examples = [example for row in eval_rows for example in row]
    report.measure(
        [n for e in train_examples for n in _lengths(e)], sum(e.trainable() for e in train_examples)
    )
    train = datasets.Dataset.from_dict(_columns(train_examples))
    evals = datasets.Dataset.from_dict(_columns(eval_examples)) if eval_examples else None
    report.train_rows, report.eval_rows = len(train), len(evals) if evals is not None else 0
    if cache_dir:
        _write_cache(cache_dir, train, evals, report)
        report.cache = f"prepared dataset written to {cache_dir}"
        if is_complete(cache_dir):  # file-backed, as a later run reads it (TRL caches beside its files)
            train, evals, _ = load_cache(cache_dir)
    return Prepared(*_limit(train, evals, resolved, report), report, cache_dir)


def build_eval_dataset(resolved: Resolved, tokenizer: Any) -> Any:
    """The run's eval split alone, as training encodes it: its `test_datasets` when it has them
    (only those are read), else the `val_set_size` rows held out of the training data."""
    import datasets

    config = resolved.config
    if not config.test_datasets:
        return build_datasets(resolved, tokenizer).eval
    prepare_formatters(resolved, tokenizer)
    report, rows = DataReport(fingerprint=""), []
    for spec, chosen in zip(config.test_datasets, resolved.test_formatters, strict=True):
        counts = DatasetCounts(spec.path, "test")
        rows += _encode_source(resolved, tokenizer, Source(spec), chosen, counts, report, set()).rows
    examples = [example for row in rows for example in row]
    if not examples:
        raise DataError(config.test_datasets[0].path, "no usable rows in the eval datasets")
    evals = datasets.Dataset.from_dict(_columns(examples))
    if config.max_eval_samples and len(evals) > config.max_eval_samples:
        evals = evals.select(range(config.max_eval_samples))
    return evals


def prepare_formatters(resolved: Resolved, tokenizer: Any) -> None:
    """Give every formatter the tokenizer. A chat formatter may set the tokenizer's template (saved
    with the model); two formatters wanting different templates cannot share one tokenizer."""
    set_by: Chosen | None = None
    for chosen in [*resolved.formatters, *resolved.test_formatters]:
        where = resolved.source.where(chosen.path) or dotted(chosen.path)
        before = getattr(tokenizer, "chat_template", None)
        try:
            chosen.plugin.prepare(tokenizer)
        except ValueError as err:
            raise DataError(where, f"{dotted(chosen.path)}: {err}") from None
        if getattr(tokenizer, "chat_template", None) != before:
            if set_by is not None:
                raise DataError(
                    where,
                    f"{dotted(chosen.path)} sets a different chat template than {dotted(set_by.path)}; "
                    "a run saves one template with its tokenizer",
                )
            set_by = chosen


def _encode_source(
    resolved: Resolved,
    tokenizer: Any,
    source: Source,
    chosen: Chosen,
    counts: DatasetCounts,
    report: DataReport,
    seen: set[bytes],
) -> _Rows:
    config = resolved.config
    formatter: Formatter = chosen.plugin
    processor = RowProcessor(formatter, tokenizer, config, target=data_shape(resolved))
    kept = _Rows()
    for outcome in process_rows(processor, source.rows(), config.dataset_num_proc):
        counts.rows_read += 1
        report.rows_read += 1
        if outcome.reason == "bad" and config.on_bad_rows == "fail":
            raise DataError(outcome.where, f"{outcome.message} (set on_bad_rows: skip to skip such rows)")
        if not outcome.reason and config.filters.dedupe:
            if outcome.key in seen:
                outcome.reason, outcome.message = "duplicate", "same tokens and loss mask as an earlier row"
            seen.add(outcome.key)
        if outcome.reason:
            report.drop(outcome.reason, outcome.where, outcome.message)
            continue
        report.truncated += outcome.changed == "truncated"
        report.chunked += outcome.changed == "chunked"
        counts.rows_kept += 1
        counts.examples += len(outcome.examples)
        kept.rows.append(outcome.examples)
    return kept


Rows = list[list[Encoded]]


def _hold_out(
    parts: list[Rows], test_rows: Rows, val_set_size: float, seed: int, where: str
) -> tuple[list[Rows], Rows]:
    """Eval rows: the test datasets, or `val_set_size` rows drawn (by seed) from the training
    datasets before mixing, so a repeated training row never lands in eval."""
    import numpy as np

    if test_rows or val_set_size <= 0:
        return parts, test_rows
    total = sum(len(part) for part in parts)
    n_eval = math.ceil(val_set_size * total) if val_set_size < 1 else int(val_set_size)
    if n_eval >= total:
        message = f"val_set_size: {n_eval} eval rows leaves no training rows ({total} rows in all)"
        raise DataError(where, message)
    held = set(np.random.default_rng(seed).permutation(total)[:n_eval].tolist())
    kept_parts: list[Rows] = []
    eval_rows: Rows = []
    index = 0
    for part in parts:
        kept: Rows = []
        for row in part:
            (eval_rows if index in held else kept).append(row)
            index += 1
        kept_parts.append(kept)
    return kept_parts, eval_rows


def _mix(parts: list[Rows], weights: list[float | None], seed: int, report: DataReport) -> Rows:
    """Concatenate, or with weights give dataset i round(N * w_i / sum(w)) rows (N = all training
    rows; unset weights count 1): a dataset is repeated whole as often as its share allows, then
    topped up with a seeded sample of its rows."""
    import numpy as np

    train_counts = [c for c in report.datasets if c.role == "train"]
    if all(weight is None for weight in weights):
        for counts, part in zip(train_counts, parts, strict=True):
            counts.train_rows = len(part)
        return [row for part in parts for row in part]
    shares = [1.0 if weight is None else weight for weight in weights]
    total = sum(len(part) for part in parts)
    rng = np.random.default_rng([seed, 1])
    mixed: Rows = []
    for counts, part, share in zip(train_counts, parts, shares, strict=True):
        target = round(total * share / sum(shares))
        if target and not part:
            raise DataError(counts.path, f"has weight {share:g} but no usable training rows")
        repeats, extra = divmod(target, len(part)) if part else (0, 0)
        picked = [*range(len(part))] * repeats + sorted(rng.choice(len(part), extra, replace=False).tolist())
        mixed += [part[i] for i in picked]
        counts.train_rows = target
    return mixed


def _shuffled(rows: Rows, seed: int) -> Rows:
    import numpy as np

    order = np.random.default_rng([seed, 2]).permutation(len(rows))
    return [rows[i] for i in order]


def data_shape(resolved: Resolved) -> str:
    """The shape the run's method trains on (its first: KTO reads pairs as unpaired rows)."""
    return resolved.method.plugin.data[0]


def _lengths(example: Any) -> list[int]:
    """Token counts of an example's sequences (one for SFT, two for a pair)."""
    return [len(example.input_ids)] if isinstance(example, Encoded) else list(example.lengths())


def _columns(examples: list[Any]) -> dict[str, list[Any]]:
    if examples and not isinstance(examples[0], Encoded):
        rows = [e.columns() for e in examples]
        names = list(dict.fromkeys(name for row in rows for name in row))
        return {name: [row.get(name) for row in rows] for name in names}
    return {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}


def _limit(train: Any, evals: Any, resolved: Resolved, report: DataReport) -> tuple[Any, Any]:
    config = resolved.config
    if config.max_train_samples and len(train) > config.max_train_samples:
        train = train.select(range(config.max_train_samples))
    if evals is not None and config.max_eval_samples and len(evals) > config.max_eval_samples:
        evals = evals.select(range(config.max_eval_samples))
    report.train_rows, report.eval_rows = len(train), len(evals) if evals is not None else 0
    return train, evals


# ---- cache -----------------------------------------------------------------------------------

REPORT_NAME = "report.json"


def is_complete(cache_dir: str) -> bool:
    """A cache directory is complete once renamed into place, with its report written last."""
    return os.path.isfile(os.path.join(cache_dir, REPORT_NAME))


def load_cache(cache_dir: str) -> tuple[Any, Any, DataReport]:
    import datasets

    with open(os.path.join(cache_dir, REPORT_NAME), encoding="utf-8") as handle:
        report = DataReport.from_json(handle.read())
    train = datasets.load_from_disk(os.path.join(cache_dir, "train"))
    eval_dir = os.path.join(cache_dir, "eval")
    evals = datasets.load_from_disk(eval_dir) if os.path.isdir(eval_dir) else None
    return train, evals, report


def _write_cache(cache_dir: str, train: Any, evals: Any, report: DataReport) -> None:
    """Write to a temporary directory, then rename: a half-written cache is never used."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    bars = is_progress_bar_enabled()
    disable_progress_bar()  # one line in the report says where it went
    try:
        train.save_to_disk(os.path.join(tmp, "train"))
        if evals is not None:
            evals.save_to_disk(os.path.join(tmp, "eval"))
    finally:
        if bars:
            enable_progress_bar()
    with open(os.path.join(tmp, REPORT_NAME), "w", encoding="utf-8") as handle:
        handle.write(report.to_json())
    try:
        os.replace(tmp, cache_dir)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)


def fingerprint(resolved: Resolved, tokenizer: Any, sources: list[Source] | None = None) -> str:
    """A hash of everything that changes the prepared data: the data-shaping config keys (datasets
    with their formatter options, filters, sequence_len, seed, ...), the data's content, the
    tokenizer with its chat template, and this package's version."""
    config = resolved.config
    resolved_dict = resolved.to_dict()
    digest = hashlib.sha256()
    digest.update(json.dumps({k: resolved_dict[k] for k in FINGERPRINT_KEYS}, sort_keys=True).encode())
    shape = data_shape(resolved)
    if shape != "sft":  # SFT fingerprints stay what they were
        digest.update(f"shape={shape}".encode())
    digest.update(__version__.encode())
    for source in sources or [Source(spec) for spec in [*config.datasets, *config.test_datasets]]:
        digest.update(source.identity().encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return "prepared-" + digest.hexdigest()[:16]
