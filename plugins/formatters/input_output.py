"""`input_output`: template-free rows of labelled text segments (like Axolotl's `input_output`).

    datasets:
      - path: data/segments.jsonl
        # {"segments": [{"text": "Q: 2+3?\\n", "label": false}, {"text": "A: 5</s>", "label": true}]}
        type: input_output
        field: segments                  # row field holding the list of segments
        text_key: text                   # key of each segment's text
        label_key: label                 # key of each segment's flag: true = trained on
        add_bos: true                    # prepend the tokenizer's BOS (not trained)
        add_eos: false                   # append the tokenizer's EOS (trained)

The text is exactly what the row holds: no template, no separator between segments. Each segment is
tokenized on its own, so a token never spans two segments. A row that wants the model to learn to
stop writes the EOS text itself (as above, with its tokenizer's spelling) or sets `add_eos: true`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.api import Formatter, Options, RowError, Segment


class InputOutputOptions(Options):
    field: str = Field("segments", description="Row field holding the list of segments")
    text_key: str = Field("text", description="Key of each segment's text")
    label_key: str = Field("label", description="Key of each segment's flag: true = loss on this text")
    add_bos: bool = Field(True, description="Prepend the tokenizer's BOS token (never trained)")
    add_eos: bool = Field(False, description="Append the tokenizer's EOS token (trained)")


class InputOutput(Formatter[InputOutputOptions]):
    name = "input_output"

    def __init__(self, options: InputOutputOptions | None = None):
        super().__init__(options)
        opts = self.options
        self.add_bos = opts.add_bos
        self.add_eos = opts.add_eos

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        name = opts.field
        items = row.get(name)
        if items is None:
            raise RowError(f"missing field '{name}'", field=name)
        if not isinstance(items, list):
            raise RowError(
                f"field '{name}' must be a list of segments, got {type(items).__name__}", field=name
            )
        if not items:
            raise RowError(f"field '{name}' is an empty list; a row needs at least one segment", field=name)
        segments = []
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            if not isinstance(item, dict):
                raise RowError(
                    f"{where} must be an object with '{opts.text_key}' and '{opts.label_key}', "
                    f"got {type(item).__name__}",
                    field=where,
                )
            text = item.get(opts.text_key)
            if text is None:
                raise RowError(f"{where} has no '{opts.text_key}'", field=f"{where}.{opts.text_key}")
            if not isinstance(text, str):
                raise RowError(
                    f"{where}.{opts.text_key} must be a string, got {type(text).__name__}",
                    field=f"{where}.{opts.text_key}",
                )
            label = item.get(opts.label_key)
            if label is None:
                raise RowError(
                    f"{where} has no '{opts.label_key}' (true to train on the text, false to mask it)",
                    field=f"{where}.{opts.label_key}",
                )
            if not isinstance(label, bool):
                raise RowError(
                    f"{where}.{opts.label_key} must be true or false, got {type(label).__name__} {label!r}",
                    field=f"{where}.{opts.label_key}",
                )
            segments.append(Segment(text, train=label))
        return segments
