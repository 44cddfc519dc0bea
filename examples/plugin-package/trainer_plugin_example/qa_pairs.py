"""`qa_pairs`: question/answer rows with an optional context; loss on the answer (+ EOS) only.

    datasets:
      - path: data/qa.jsonl       # {"question": "...", "answer": "...", "context": "..."}
        type: qa_pairs
        question_field: question
        answer_field: answer
        context_field: context     # optional in each row; rows without it skip context_template
        template: "{context}Question: {question}\\nAnswer: "
        context_template: "Context: {context}\\n"

The prompt is `template` with `{question}` filled in and `{context}` replaced by `context_template`
(filled with the row's context) or by nothing when the row has none. The prompt is not trained.
"""

from __future__ import annotations

import string
from typing import Any

from pydantic import Field, field_validator

from trainer.api import Formatter, Options, Segment


def placeholders(template: str) -> set[str]:
    """The `{name}` placeholders of a str.format template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class QaPairsOptions(Options):
    question_field: str = Field("question", description="Row field holding the question")
    answer_field: str = Field("answer", description="Row field holding the answer (trained)")
    context_field: str = Field("context", description="Row field holding optional context")
    template: str = Field(
        "{context}Question: {question}\nAnswer: ",
        description="Prompt template with {question} and optionally {context}",
    )
    context_template: str = Field(
        "Context: {context}\n", description="What {context} becomes when a row has context"
    )

    # A ValueError raised here is reported like any option error: `file.yml:LINE  datasets[0].template: ...`
    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        names = placeholders(value)
        if "question" not in names:
            raise ValueError("must contain {question}")
        if names - {"question", "context"}:
            raise ValueError(f"unknown placeholders {sorted(names - {'question', 'context'})}")
        return value

    @field_validator("context_template")
    @classmethod
    def _context_template(cls, value: str) -> str:
        if placeholders(value) != {"context"}:
            raise ValueError("must contain {context} and no other placeholder")
        return value


class QaPairs(Formatter[QaPairsOptions]):
    """Question/answer rows with optional context; loss on the answer only."""

    name = "qa_pairs"

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        # Formatter.field raises RowError for a missing or non-string field; the core adds file and line.
        question = self.field(row, opts.question_field)
        answer = self.field(row, opts.answer_field)
        context = self.field(row, opts.context_field, optional=True).strip()
        shown = opts.context_template.format(context=context) if context else ""
        prompt = opts.template.format(question=question, context=shown)
        return [Segment(prompt, train=False), Segment(answer, train=True)]
