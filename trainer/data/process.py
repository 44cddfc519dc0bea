"""Rows -> encoded examples, in batches, optionally across worker processes.

A `RowProcessor` formats a batch of rows, tokenizes it in one call, applies the length policy and
the per-row filters (regex, min/max length), and says for every row what became of it. Exact
de-duplication needs every row at once, so it happens later, in the parent process. Rows of the
other data shapes (preference pairs, KTO rows, GRPO prompts) are encoded by trainer.data.shapes.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trainer.api import Formatter, Judged, Preference, PromptOnly, RowError, Segment
from trainer.config.schema import TrainConfig
from trainer.data.encode import Encoded, SegmentEncoder, fit
from trainer.data.readers import DataError, Row
from trainer.data.shapes import ShapeEncoder, identity

BATCH_ROWS = 512


@dataclass
class Outcome:
    """What became of one row: `examples` (one, or several chunks), or a drop `reason`."""

    where: str
    examples: list[Any]
    """Encoded (SFT) or one of trainer.data.shapes' encoded rows."""
    reason: str = ""  # '', 'bad', 'empty', 'too long', 'filtered'
    message: str = ""
    changed: str = ""  # '', 'truncated', 'chunked'
    key: bytes = b""  # identity of the examples, for exact de-duplication


class RowProcessor:
    """Formats, encodes, fits and filters rows for one formatter."""

    def __init__(self, formatter: Formatter, tokenizer: Any, config: TrainConfig, target: str = "sft"):
        self.formatter = formatter
        self.encoder = SegmentEncoder(tokenizer, config.sequence_len)
        self.shapes = (
            ShapeEncoder(self.encoder, formatter, target, config.too_long) if target != "sft" else None
        )
        self.tokenizer = tokenizer
        self.sequence_len = config.sequence_len
        self.too_long = config.too_long
        self.filters = config.filters
        self.regexes = [re.compile(pattern) for pattern in config.filters.drop_regex]

    def process(self, rows: list[Row]) -> list[Outcome]:
        outcomes: list[Outcome | None] = []
        formatted: list[tuple[int, list[Segment]]] = []
        for where, row in rows:
            try:
                if isinstance(row, DataError):
                    raise row
                if not isinstance(row, dict):
                    raise DataError(where, f"a row must be an object, got {type(row).__name__}")
                segments = self.formatter.format(row)
                if self.shapes is not None:
                    outcomes.append(self._shaped(where, segments))
                    continue
            except DataError as err:
                outcomes.append(Outcome(where, [], "bad", err.message))
                continue
            except RowError as err:
                outcomes.append(Outcome(where, [], "bad", str(err)))
                continue
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
                # a formatter that does not check its input (third-party): still a located bad row
                name = self.formatter.name
                outcomes.append(
                    Outcome(where, [], "bad", f"formatter '{name}' failed: {type(err).__name__}: {err}")
                )
                continue
            if not any(seg.text or seg.ids for seg in segments):
                outcomes.append(Outcome(where, [], "empty", "no text"))
                continue
            if self.regexes and (hit := self._matching_regex(segments)):
                outcomes.append(Outcome(where, [], "filtered", f"matches drop_regex {hit!r}"))
                continue
            formatted.append((len(outcomes), segments))
            outcomes.append(None)
        encoded = self.encoder.encode_batch(self.formatter, [segments for _, segments in formatted])
        for (index, _), full in zip(formatted, encoded, strict=True):
            outcomes[index] = self._fit(rows[index][0], full)
        return [outcome for outcome in outcomes if outcome is not None]

    def _shaped(self, where: str, item: Any) -> Outcome:
        """One formatted non-SFT row, encoded, fitted and filtered (a RowError propagates as a bad row)."""
        assert self.shapes is not None
        parts = {
            Preference: ("prompt", "chosen", "rejected"),
            Judged: ("prompt", "completion"),
            PromptOnly: ("prompt",),
        }
        segments = [seg for name in parts.get(type(item), ()) for seg in getattr(item, name)]
        if self.regexes and (hit := self._matching_regex(segments)):
            return Outcome(where, [], "filtered", f"matches drop_regex {hit!r}")
        try:
            examples, changed = self.shapes.encode(item)
        except ValueError as err:
            if isinstance(err, RowError) or not str(err).startswith("too long: "):
                raise
            return Outcome(where, [], "too long", str(err)[len("too long: ") :])
        length = max(n for example in examples for n in example.lengths())
        if self.filters.min_length is not None and length < self.filters.min_length:
            return Outcome(where, [], "filtered", f"{length} tokens, under min_length")
        if self.filters.max_length is not None and length > self.filters.max_length:
            return Outcome(where, [], "filtered", f"{length} tokens, over max_length")
        key = hashlib.blake2b(b"".join(identity(example) for example in examples), digest_size=16).digest()
        return Outcome(where, examples, changed=changed, key=key)

    def _matching_regex(self, segments: list[Segment]) -> str:
        text = "".join(seg.text if seg.ids is None else self.tokenizer.decode(seg.ids) for seg in segments)
        return next((regex.pattern for regex in self.regexes if regex.search(text)), "")

    def _fit(self, where: str, full: Encoded) -> Outcome:
        length = len(full.input_ids)
        if self.filters.min_length is not None and length < self.filters.min_length:
            return Outcome(where, [], "filtered", f"{length} tokens, under min_length")
        if self.filters.max_length is not None and length > self.filters.max_length:
            return Outcome(where, [], "filtered", f"{length} tokens, over max_length")
        split = self.formatter.split_long
        examples, changed = fit(full, self.sequence_len, split=split, too_long=self.too_long)
        if changed == "too long":
            return Outcome(where, [], "too long", f"{length} tokens, over sequence_len {self.sequence_len}")
        if full.trainable() == 0:
            return Outcome(where, [], "bad", "no token is trained (every token is masked)")
        if any(example.trainable() == 0 for example in examples):
            message = f"truncated to sequence_len {self.sequence_len}: nothing left to train"
            return Outcome(where, [], "bad", message)
        key = hashlib.blake2b(digest_size=16)
        for example in examples:
            key.update(array("i", example.input_ids).tobytes() + b"|" + array("i", example.labels).tobytes())
        return Outcome(where, examples, changed=changed, key=key.digest())


_worker: RowProcessor | None = None


def _init_worker(processor: RowProcessor) -> None:
    global _worker
    _worker = processor


def _work(rows: list[Row]) -> list[Outcome]:
    assert _worker is not None
    return _worker.process(rows)


def process_rows(processor: RowProcessor, rows: Iterable[Row], num_proc: int) -> Iterator[Outcome]:
    """Every row's outcome, in input order; `num_proc` > 1 uses forked worker processes."""
    batches = _batches(rows, BATCH_ROWS)
    if num_proc <= 1:
        for batch in batches:
            yield from processor.process(batch)
        return
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the Rust pool must not be forked mid-use
    context = multiprocessing.get_context("fork")
    with context.Pool(num_proc, initializer=_init_worker, initargs=(processor,)) as pool:
        for outcomes in pool.imap(_work, batches):
            yield from outcomes


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
