"""`pretokenized`: rows that already hold token ids, and optionally their labels.

    datasets:
      - path: data/tokens.jsonl          # {"input_ids": [1, 450, 29871], "labels": [-100, 450, 29871]}
        type: pretokenized
        input_ids_field: input_ids
        labels_field: labels              # optional in a row: without it every token is trained
        add_bos: false                    # the ids are used as they are
        add_eos: false

Each label is -100 (not trained) or the input id at its position (trained); anything else is a
row error, as is an id outside the run's tokenizer vocabulary. The ids must come from the same
tokenizer as the run's: only their range can be checked. Rows longer than `sequence_len` follow
the config's length policy like any other.
"""

from __future__ import annotations

import numbers
from typing import Any

from pydantic import Field

from trainer.api import Formatter, Options, RowError, Segment

IGNORE = -100


class PretokenizedOptions(Options):
    input_ids_field: str = Field("input_ids", description="Row field holding the list of token ids")
    labels_field: str = Field(
        "labels",
        description="Row field holding the labels: -100 (not trained) or the input id at that position; "
        "a row without it is trained on every token",
    )
    add_bos: bool = Field(False, description="Prepend the tokenizer's BOS token (never trained)")
    add_eos: bool = Field(False, description="Append the tokenizer's EOS token (trained)")


class Pretokenized(Formatter[PretokenizedOptions]):
    name = "pretokenized"

    def __init__(self, options: PretokenizedOptions | None = None):
        super().__init__(options)
        opts = self.options
        self.add_bos = opts.add_bos
        self.add_eos = opts.add_eos
        self.vocab_size: int | None = None

    def prepare(self, tokenizer: Any) -> None:
        self.vocab_size = len(tokenizer)

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        if self.vocab_size is None:
            raise RuntimeError("pretokenized: prepare(tokenizer) must be called before format()")
        ids = _int_list(row, opts.input_ids_field)
        if not ids:
            raise RowError(f"field '{opts.input_ids_field}' is an empty list", field=opts.input_ids_field)
        for i, token in enumerate(ids):
            if not 0 <= token < self.vocab_size:
                where = f"{opts.input_ids_field}[{i}]"
                raise RowError(
                    f"{where} = {token} is outside the tokenizer's vocabulary (0..{self.vocab_size - 1})",
                    field=where,
                )
        if row.get(opts.labels_field) is None:
            return [Segment(ids=ids, train=True)]
        labels = _int_list(row, opts.labels_field)
        if len(labels) != len(ids):
            raise RowError(
                f"field '{opts.labels_field}' has {len(labels)} entries but "
                f"'{opts.input_ids_field}' has {len(ids)}; they must match one to one",
                field=opts.labels_field,
            )
        for i, (label, token) in enumerate(zip(labels, ids, strict=True)):
            if label != IGNORE and label != token:
                where = f"{opts.labels_field}[{i}]"
                raise RowError(
                    f"{where} = {label} must be -100 (not trained) or the input id at that position "
                    f"({opts.input_ids_field}[{i}] = {token})",
                    field=where,
                )
        runs: list[tuple[bool, list[int]]] = []  # consecutive tokens that are all trained or all not
        for token, label in zip(ids, labels, strict=True):
            train = label != IGNORE
            if runs and runs[-1][0] == train:
                runs[-1][1].append(token)
            else:
                runs.append((train, [token]))
        return [Segment(ids=run, train=train) for train, run in runs]


def _int_list(row: dict[str, Any], name: str) -> list[int]:
    """The row's list of integers under `name` (bools are not integers), as plain ints."""
    value = row.get(name)
    if value is None:
        raise RowError(f"missing field '{name}'", field=name)
    if not isinstance(value, list | tuple):
        raise RowError(f"field '{name}' must be a list of integers, got {type(value).__name__}", field=name)
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            where = f"{name}[{i}]"
            raise RowError(f"{where} must be an integer, got {type(item).__name__} {item!r}", field=where)
    return [int(item) for item in value]
