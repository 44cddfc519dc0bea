"""`completion`: raw text, loss on every token (continued pre-training style).

    datasets:
      - path: data/corpus.jsonl         # {"text": "..."}
        type: completion
        field: text

Each document gets BOS and EOS. A document longer than `sequence_len` is split into consecutive
chunks of `sequence_len` tokens (the last one shorter), never truncated: every token is trained once.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.api import Formatter, Options, Segment


class CompletionOptions(Options):
    field: str = Field("text", description="Row field holding the text")


class Completion(Formatter[CompletionOptions]):
    name = "completion"
    split_long = True

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        return [Segment(self.field(row, opts.field), train=True)]
