"""Show formatted examples with the trained tokens marked, so masking can be checked before a run.

Trained text is green on a terminal and wrapped in [[ ]] otherwise; special tokens are shown as
they are written (e.g. `</s>`), so a trained end-of-turn token is visible.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from trainer.api import Formatter
from trainer.api.resolved import Resolved
from trainer.data.encode import IGNORE, Encoded
from trainer.data.pipeline import data_shape
from trainer.data.process import RowProcessor, process_rows
from trainer.data.readers import Source

GREEN, RESET = "\x1b[1;32m", "\x1b[0m"


def preview(resolved: Resolved, tokenizer: Any, count: int) -> Iterator[tuple[str, Any]]:
    """The first `count` training rows in file order: (location, example) or (location, why it is
    dropped). Call after `pipeline.prepare_formatters`."""
    shown = 0
    for spec, chosen in zip(resolved.config.datasets, resolved.formatters, strict=True):
        formatter: Formatter = chosen.plugin
        processor = RowProcessor(formatter, tokenizer, resolved.config, target=data_shape(resolved))
        rows = Source(spec).rows()
        for outcome in process_rows(processor, islice(rows, count - shown), num_proc=1):
            if outcome.reason:
                yield outcome.where, f"dropped ({outcome.reason}): {outcome.message}"
            for part, example in enumerate(outcome.examples, start=1):
                suffix = f" (chunk {part}/{len(outcome.examples)})" if len(outcome.examples) > 1 else ""
                yield outcome.where + suffix, example
            shown += 1
            if shown >= count:
                return


def marked(tokenizer: Any, example: Encoded, color: bool) -> str:
    """The example's text with each run of trained tokens marked."""
    out = []
    run: list[int] = []
    trained = False
    for token, label in [*zip(example.input_ids, example.labels, strict=True), (None, None)]:
        is_trained = label is not None and label != IGNORE
        if token is None or (run and is_trained != trained):
            text = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            out.append((f"{GREEN}{text}{RESET}" if color else f"[[{text}]]") if trained else text)
            run = []
        if token is not None:
            run.append(token)
            trained = is_trained
    return "".join(out)


def render(resolved: Resolved, tokenizer: Any, count: int, color: bool) -> list[str]:
    """Printable lines for `preprocess --show`."""
    legend = "trained tokens in green" if color else "trained tokens between [[ and ]]"
    lines = [f"first {count} training rows, {legend}:"]
    for where, item in preview(resolved, tokenizer, count):
        if isinstance(item, str):
            lines += [f"--- {where}", item]
            continue
        if not isinstance(item, Encoded):  # a preference pair, a KTO row, a GRPO prompt
            for label, sequence in item.sequences():
                lines += [
                    f"--- {where} {label}: {len(sequence.input_ids)} tokens, {sequence.trainable()} trained",
                    marked(tokenizer, sequence, color),
                ]
            continue
        trainable = item.trainable()
        lines += [
            f"--- {where}: {len(item.input_ids)} tokens, {trainable} trained",
            marked(tokenizer, item, color),
        ]
    return lines
