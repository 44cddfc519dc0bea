"""Segments -> `input_ids` + `labels`.

Each text segment is tokenized on its own (as at inference, where the prompt is tokenized alone),
untrained segments are masked with -100, BOS is prepended and EOS appended (and trained) when the
formatter asks for them. A batch of rows is tokenized in one tokenizer call. `fit` then applies
the length policy: chunks for raw text, else keep, truncate or drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.api import Formatter, Segment

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class SegmentEncoder:
    """Encodes a formatter's segments with one tokenizer."""

    def __init__(self, tokenizer: Any, sequence_len: int):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; set one in its tokenizer_config.json")
        self.tokenizer = tokenizer
        self.sequence_len = sequence_len
        probe = tokenizer("a").input_ids
        self.bos = tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None
        self.eos = tokenizer.eos_token_id

    def encode(self, formatter: Formatter, segments: list[Segment]) -> Encoded:
        """One row, full length (see `fit`)."""
        return self.encode_batch(formatter, [segments])[0]

    def encode_batch(self, formatter: Formatter, rows: list[list[Segment]]) -> list[Encoded]:
        """Many rows with one tokenizer call; each result is full length (see `fit`)."""
        texts = [seg.text for segments in rows for seg in segments if seg.ids is None and seg.text]
        tokenized = iter(self.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        out = []
        for segments in rows:
            input_ids: list[int] = []
            labels: list[int] = []
            if formatter.add_bos and self.bos is not None:
                input_ids.append(self.bos)
                labels.append(IGNORE)
            for seg in segments:
                ids = seg.ids if seg.ids is not None else (next(tokenized) if seg.text else [])
                input_ids.extend(ids)
                labels.extend(ids if seg.train else [IGNORE] * len(ids))
            if formatter.add_eos:
                input_ids.append(self.eos)
                labels.append(self.eos)
            out.append(Encoded(input_ids, labels))
        return out


def fit(encoded: Encoded, sequence_len: int, *, split: bool, too_long: str) -> tuple[list[Encoded], str]:
    """Apply the length policy. Returns (pieces, what happened): what is '' (fits), 'chunked',
    'truncated' or 'too long' (dropped: no pieces)."""
    ids, labels = encoded.input_ids, encoded.labels
    if len(ids) <= sequence_len:
        return [encoded], ""
    if split:
        return [
            Encoded(ids[i : i + sequence_len], labels[i : i + sequence_len])
            for i in range(0, len(ids), sequence_len)
        ], "chunked"
    if too_long == "truncate":
        return [Encoded(ids[:sequence_len], labels[:sequence_len])], "truncated"
    return [], "too long"
