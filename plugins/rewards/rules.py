"""Rule rewards against a reference column: `answer_match` and `answer_similarity`.

    method: {type: grpo, rewards: [answer_match, {name: answer_similarity, weight: 0.5}]}
    datasets:
      - path: prompts.jsonl     # {"prompt": "Reverse the word: plane\nAnswer: ", "answer": "enalp"}
        type: prompt

Each is a plain function with TRL's reward signature, `fn(prompts, completions, **columns)`: the
row's `answer` column arrives by name. Text is compared with surrounding whitespace stripped; a
conversational completion (a list of messages) is compared by its last message's content. A row
whose `answer` is missing (None) gets no reward from these (None: TRL leaves it out of the mean).
"""

from __future__ import annotations

import difflib
from typing import Any


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # [{"role": "assistant", "content": ...}]
        completion = completion[-1]["content"] if completion else ""
    return str(completion).strip()


def _answers(name: str, completions: list[Any], answer: list[Any] | None) -> list[Any]:
    if answer is None:
        raise ValueError(
            f"reward '{name}' compares each completion with the row's 'answer' column, which the "
            "dataset does not have (the prompt formatter passes every field but the prompt)"
        )
    if len(answer) != len(completions):
        raise ValueError(f"reward '{name}': {len(answer)} answers for {len(completions)} completions")
    return answer


def answer_match(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **columns: Any
) -> list[float | None]:
    """1.0 when the completion is the row's `answer` exactly, else 0.0."""
    answers = _answers("answer_match", completions, answer)
    return [
        None if a is None else float(_text(c) == str(a).strip())
        for c, a in zip(completions, answers, strict=True)
    ]


def answer_similarity(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **columns: Any
) -> list[float | None]:
    """Partial credit in [0, 1]: how much of the completion lines up with the row's `answer`
    (difflib's ratio, 2 x matched characters / both lengths; 1.0 exactly when they are equal)."""
    answers = _answers("answer_similarity", completions, answer)
    return [
        None if a is None else difflib.SequenceMatcher(None, _text(c), str(a).strip(), autojunk=False).ratio()
        for c, a in zip(completions, answers, strict=True)
    ]
