"""Segments -> `input_ids` + `labels`: each segment tokenized on its own (as at inference, where
the prompt is tokenized alone), untrained segments masked with -100, BOS prepended, EOS appended
and trained, then truncated to `sequence_len`.
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
    truncated: bool


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
        input_ids: list[int] = []
        labels: list[int] = []
        if formatter.add_bos and self.bos is not None:
            input_ids.append(self.bos)
            labels.append(IGNORE)
        for segment in segments:
            ids = segment.ids
            if ids is None:
                ids = self.tokenizer(segment.text, add_special_tokens=False).input_ids if segment.text else []
            input_ids.extend(ids)
            labels.extend(ids if segment.train else [IGNORE] * len(ids))
        if formatter.add_eos:
            input_ids.append(self.eos)
            labels.append(self.eos)
        truncated = len(input_ids) > self.sequence_len
        if truncated:
            input_ids, labels = input_ids[: self.sequence_len], labels[: self.sequence_len]
        return Encoded(input_ids, labels, truncated)
