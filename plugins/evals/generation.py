"""`generation`: greedy answers to held-out prompts, scored against reference answers with metric
plugins (`trainer.metrics`: exact_match, contains, or a third party's).

    evals:
      - type: generation
        path: data/toy/eval.jsonl      # JSONL rows: a prompt (text or chat messages) and an answer
        prompt_field: prompt
        answer_field: generation
        metrics: [exact_match, contains]
        max_new_tokens: 16

Prompts are rendered as the run was trained (its chat template, or raw text); generation stops at
EOS or the end of the turn. A metric gets the answers, the references and every other column of
the rows (`fn(predictions, references, **columns)`); a list it returns is averaged.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import Field

from trainer.api import Eval, EvalContext, Options, TrainConfig


class GenerationOptions(Options):
    path: str = Field(description="JSONL file of prompts with reference answers")
    prompt_field: str = Field("prompt", description="The prompt: a string, or a list of chat messages")
    answer_field: str = Field("answer", description="The reference answer")
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match"], min_length=1, description="trainer.metrics names"
    )
    max_new_tokens: int = Field(32, gt=0)
    system: str | None = Field(None, description="A system message for chat prompts without one")
    limit: int | None = Field(None, gt=0, description="Score only the first N rows")
    batch_size: int = Field(16, gt=0, description="Prompts generated together")


def read_rows(path: str, prompt_field: str, answer_field: str, limit: int | None) -> list[dict[str, Any]]:
    """The file's rows; ValueError naming FILE:LINE for a row without the two fields."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}  not a JSON line ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(prompt_field), str | list):
                raise ValueError(f"{path}:{number}  needs a '{prompt_field}' field (text or chat messages)")
            if not isinstance(row.get(answer_field), str):
                raise ValueError(f"{path}:{number}  needs a text '{answer_field}' field (the reference)")
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


class Generation(Eval[GenerationOptions]):
    name = "generation"

    def metric_names(self) -> list[str]:
        return list(self.options.metrics)

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        opts = self.options
        if not os.path.isfile(opts.path):
            return [("path", f"file '{opts.path}' does not exist")]
        try:
            read_rows(opts.path, opts.prompt_field, opts.answer_field, opts.limit)
        except (ValueError, UnicodeDecodeError) as err:
            return [("path", str(err))]
        return []

    def run(self, context: EvalContext) -> dict[str, float]:
        opts = self.options
        rows = read_rows(opts.path, opts.prompt_field, opts.answer_field, opts.limit)
        prompts = [row[opts.prompt_field] for row in rows]
        answers = context.generate(
            prompts, max_new_tokens=opts.max_new_tokens, system=opts.system, batch_size=opts.batch_size
        )
        references = [row[opts.answer_field] for row in rows]
        others = {key for row in rows for key in row} - {opts.prompt_field, opts.answer_field}
        columns: dict[str, list[Any]] = {key: [row.get(key) for row in rows] for key in sorted(others)}
        columns["prompts"] = prompts
        results = {}
        for name in opts.metrics:
            value = context.metric(name)(answers, references, **columns)
            if isinstance(value, list | tuple):
                scores = [float(v) for v in value if v is not None]
                value = sum(scores) / len(scores) if scores else float("nan")
            results[name] = float(value)
        return results
