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
        return len(self.labels) - self.labels.count(IGNORE)


class SegmentEncoder:
    """Encodes a formatter's segments with one tokenizer.

    Text segments are tokenized one by one (the prompt exactly as at inference), unless the
    tokenizer tokenizes pieces differently from the whole text, as SentencePiece-style tokenizers do
    (a prefix space before every call's text): then each row's text is tokenized whole and a token
    is trained when its characters overlap a trained segment (as transformers' assistant masks do).
    """

    def __init__(self, tokenizer: Any, sequence_len: int):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; set one in its tokenizer_config.json")
        self.tokenizer = tokenizer
        self.sequence_len = sequence_len
        probe = tokenizer("a").input_ids
        self.bos = tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None
        self.eos = tokenizer.eos_token_id
        fast = bool(getattr(tokenizer, "is_fast", False))
        self.whole_text = fast and not pieces_tokenize_like_the_whole(tokenizer)

    def encode(self, formatter: Formatter, segments: list[Segment]) -> Encoded:
        """One row, full length (see `fit`)."""
        return self.encode_batch(formatter, [segments])[0]

    def encode_batch(self, formatter: Formatter, rows: list[list[Segment]]) -> list[Encoded]:
        """Many rows with one tokenizer call; each result is full length (see `fit`)."""
        out = []
        for pieces in self._pieces(rows):
            input_ids: list[int] = []
            labels: list[int] = []
            if formatter.add_bos and self.bos is not None:
                input_ids.append(self.bos)
                labels.append(IGNORE)
            for ids, train in pieces:
                input_ids.extend(ids)
                labels.extend(ids if train else [IGNORE] * len(ids))
            if formatter.add_eos:
                input_ids.append(self.eos)
                labels.append(self.eos)
            out.append(Encoded(input_ids, labels))
        return out

    def _pieces(self, rows: list[list[Segment]]) -> list[list[tuple[list[int], bool]]]:
        """Each row as (token ids, trained) pieces."""
        out: list[list[tuple[list[int], bool]] | None] = [None] * len(rows)
        if self.whole_text:  # rows of text only; pre-tokenized segments stay as they are
            joined = [i for i, segments in enumerate(rows) if all(seg.ids is None for seg in segments)]
            for i, pieces in zip(joined, self._whole_text_pieces([rows[i] for i in joined]), strict=True):
                out[i] = pieces
        rest = [i for i in range(len(rows)) if out[i] is None]
        texts = [seg.text for i in rest for seg in rows[i] if seg.ids is None and seg.text]
        tokenized = iter(self.tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
        for i in rest:
            out[i] = [
                (seg.ids if seg.ids is not None else (next(tokenized) if seg.text else []), seg.train)
                for seg in rows[i]
            ]
        return out  # type: ignore[return-value]

    def _whole_text_pieces(self, rows: list[list[Segment]]) -> list[list[tuple[list[int], bool]]]:
        if not rows:
            return []
        texts = ["".join(seg.text for seg in segments) for segments in rows]
        encoding = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for segments, ids, offsets in zip(
            rows, encoding["input_ids"], encoding["offset_mapping"], strict=True
        ):
            spans, cursor = [], 0
            for seg in segments:
                if seg.train and seg.text:
                    spans.append((cursor, cursor + len(seg.text)))
                cursor += len(seg.text)
            pieces: list[tuple[list[int], bool]] = []
            k = 0  # the first trained span that may still overlap the current token
            for token, (start, end) in zip(ids, offsets, strict=True):
                while k < len(spans) and spans[k][1] <= start:
                    k += 1
                train = k < len(spans) and spans[k][0] < max(end, start + 1)
                if pieces and pieces[-1][1] == train:
                    pieces[-1][0].append(token)
                else:
                    pieces.append(([token], train))
            out.append(pieces)
        return out


def pieces_tokenize_like_the_whole(tokenizer: Any) -> bool:
    """Whether text cut at a boundary tokenizes into the tokens of the whole text (true for
    byte-level BPE; false for SentencePiece-style tokenizers that put a prefix space before every
    call's text)."""
    for left, right in (("Hello", " world"), ("A:\n", "Paris."), ("x.", "\n y")):
        pieces = tokenizer([left, right, left + right], add_special_tokens=False).input_ids
        if pieces[0] + pieces[1] != pieces[2]:
            return False
    return True


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
