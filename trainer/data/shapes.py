"""Encoding the non-SFT data shapes: preference pairs, judged (KTO) rows and GRPO prompts.

A formatter returns a `Preference`, `Judged` or `PromptOnly` (trainer.api); each prompt+completion
sequence is encoded like an SFT example (the prompt untrained, the completion trained, the
formatter's BOS/EOS), then cut where the training starts: `prompt_ids` and the completions' ids,
the columns TRL's preference trainers read. The length policy applies to each whole sequence:
a prompt that leaves no room for a completion in `sequence_len` is a bad row; a longer completion
is dropped with its row (`too_long: drop`) or cut (`too_long: truncate`).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass, field
from typing import Any

from trainer.api import Formatter, Judged, Preference, PromptOnly, RowError, Segment
from trainer.data.encode import IGNORE, Encoded, SegmentEncoder


@dataclass
class EncodedPair:
    """A preference pair: the shared prompt and the two completions."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def columns(self) -> dict[str, Any]:
        return {
            "prompt_ids": self.prompt_ids,
            "chosen_ids": self.chosen_ids,
            "rejected_ids": self.rejected_ids,
        }

    def lengths(self) -> list[int]:
        return [len(self.prompt_ids) + len(self.chosen_ids), len(self.prompt_ids) + len(self.rejected_ids)]

    def trainable(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)

    def sequences(self) -> list[tuple[str, Encoded]]:
        """Each sequence the model sees, with its trained tokens (for `preprocess --show`)."""
        return [
            _shown("chosen", self.prompt_ids, self.chosen_ids),
            _shown("rejected", self.prompt_ids, self.rejected_ids),
        ]


@dataclass
class EncodedJudged:
    """A prompt and a completion labelled desirable (`label`) or not: KTO's rows."""

    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool

    def columns(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "completion_ids": self.completion_ids, "label": self.label}

    def lengths(self) -> list[int]:
        return [len(self.prompt_ids) + len(self.completion_ids)]

    def trainable(self) -> int:
        return len(self.completion_ids)

    def sequences(self) -> list[tuple[str, Encoded]]:
        return [_shown("desirable" if self.label else "undesirable", self.prompt_ids, self.completion_ids)]


@dataclass
class EncodedPrompt:
    """A prompt to complete: its text (what reward functions see), its tokens, the row's columns."""

    prompt: str
    prompt_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "prompt_ids": self.prompt_ids, **self.extra}

    def lengths(self) -> list[int]:
        return [len(self.prompt_ids)]

    def trainable(self) -> int:
        return 0

    def sequences(self) -> list[tuple[str, Encoded]]:
        return [("prompt (completed by the model)", _shown("", self.prompt_ids, [])[1])]


def _shown(label: str, prompt: list[int], completion: list[int]) -> tuple[str, Encoded]:
    return label, Encoded(prompt + completion, [IGNORE] * len(prompt) + completion)


def identity(example: Any) -> bytes:
    """Bytes that are equal for equal examples (exact de-duplication)."""
    key = hashlib.blake2b(digest_size=16)
    for name, value in sorted(example.columns().items()):
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            key.update(name.encode() + array("i", value).tobytes() + b"|")
        else:
            key.update(name.encode() + json.dumps(value, sort_keys=True, default=str).encode() + b"|")
    return key.digest()


def _sequence(prompt: list[Segment], completion: list[Segment]) -> list[Segment]:
    """The prompt untrained, the completion trained, whatever the formatter marked."""
    return [Segment(s.text, False, s.ids) for s in prompt] + [
        Segment(s.text, True, s.ids) for s in completion
    ]


def _first_trained(encoded: Encoded) -> int:
    return next((i for i, label in enumerate(encoded.labels) if label != IGNORE), len(encoded.labels))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ShapeEncoder:
    """Encodes formatted non-SFT rows for a method's data shape (`target`)."""

    def __init__(self, encoder: SegmentEncoder, formatter: Formatter[Any], target: str, too_long: str):
        self.encoder = encoder
        self.formatter = formatter
        self.target = target
        self.too_long = too_long
        self.sequence_len = encoder.sequence_len

    def encode(self, item: Any) -> tuple[list[Any], str]:
        """(examples, what changed: '' or 'truncated'); raises RowError for a bad row and
        ValueError('too long: ...') for a row the length policy drops."""
        if isinstance(item, Preference):
            pair = self._pair(item)
            if self.target == "unpaired":  # KTO on pairs: a desirable and an undesirable row
                return [
                    EncodedJudged(pair[0].prompt_ids, pair[0].chosen_ids, True),
                    EncodedJudged(pair[0].prompt_ids, pair[0].rejected_ids, False),
                ], pair[1]
            return [pair[0]], pair[1]
        if isinstance(item, Judged):
            prompt_ids, (completion_ids,), changed = self._split(item.prompt, [item.completion], "completion")
            return [EncodedJudged(prompt_ids, completion_ids, item.desirable)], changed
        if isinstance(item, PromptOnly):
            encoded = self.encoder.encode(
                self.formatter, [Segment(s.text, False, s.ids) for s in item.prompt]
            )
            if len(encoded.input_ids) >= self.sequence_len:
                raise RowError(
                    f"the prompt has {len(encoded.input_ids)} tokens, leaving no room for a completion in "
                    f"sequence_len {self.sequence_len}"
                )
            text = "".join(s.text for s in item.prompt if s.ids is None)
            return [EncodedPrompt(text, encoded.input_ids, dict(item.columns))], ""
        raise RowError(
            f"formatter '{self.formatter.name}' returned a {type(item).__name__}, not a {self.target} row"
        )

    def _pair(self, item: Preference) -> tuple[EncodedPair, str]:
        prompt_ids, (chosen, rejected), changed = self._split(
            item.prompt, [item.chosen, item.rejected], "chosen"
        )
        if chosen == rejected:
            raise RowError("chosen and rejected encode to the same tokens, so the pair prefers nothing")
        return EncodedPair(prompt_ids, chosen, rejected), changed

    def _split(
        self, prompt: list[Segment], completions: list[list[Segment]], name: str
    ) -> tuple[list[int], list[list[int]], str]:
        """The prompt's ids and each completion's, cut where the sequences' training starts (and where
        they stop sharing their tokens, as TRL cuts them), fitted to sequence_len."""
        encoded = self.encoder.encode_batch(self.formatter, [_sequence(prompt, c) for c in completions])
        cut = min(_first_trained(e) for e in encoded)
        for other in encoded[1:]:
            cut = min(cut, _common_prefix(encoded[0].input_ids, other.input_ids))
        prompt_ids = encoded[0].input_ids[:cut]
        rests = [e.input_ids[cut:] for e in encoded]
        if any(not rest for rest in rests):
            raise RowError(f"a completion is empty ({name} or the other one has no tokens)")
        room = self.sequence_len - len(prompt_ids)
        if room <= 0:
            raise RowError(
                f"the prompt has {len(prompt_ids)} tokens, leaving no room for the completions in "
                f"sequence_len {self.sequence_len}"
            )
        longest = max(len(rest) for rest in rests)
        if longest <= room:
            return prompt_ids, rests, ""
        if self.too_long != "truncate":
            raise ValueError(
                f"too long: {len(prompt_ids) + longest} tokens, over sequence_len {self.sequence_len}"
            )
        return prompt_ids, [rest[:room] for rest in rests], "truncated"
