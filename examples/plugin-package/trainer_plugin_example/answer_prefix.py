"""`answer_prefix`: a reward function for trainer's `grpo` method (the `trainer.rewards` kind).

    method:
      type: grpo
      rewards: [answer_prefix]
    datasets:
      - path: prompts.jsonl        # {"prompt": "Reverse the word: plane\\nAnswer: ", "answer": "enalp"}
        type: prompt

A reward plugin is a plain function with TRL's reward signature: the prompts and the sampled
completions (text), and each other column of the rows by name (`answer` here), one value per
completion. It returns one float per completion, or None for a completion it cannot judge (TRL leaves
it out of the mean). No base class, no torch: trainer imports it only when a config names it.
"""

from __future__ import annotations

from typing import Any


def answer_prefix(
    prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **columns: Any
) -> list[float | None]:
    """Partial credit for getting the start right: the share of the row's `answer` that the completion
    begins with (its longest common prefix with the answer, over the answer's length). 1.0 when the
    completion starts with the whole answer; whitespace around both is ignored."""
    if answer is None:
        raise ValueError("answer_prefix needs an 'answer' column in the dataset")
    scores: list[float | None] = []
    for completion, expected in zip(completions, answer, strict=True):
        if isinstance(completion, list):  # a conversational completion: its last message
            completion = completion[-1]["content"] if completion else ""
        if not isinstance(expected, str) or not expected.strip():
            scores.append(None)
            continue
        text, target = str(completion).strip(), expected.strip()
        same = 0
        for a, b in zip(text, target, strict=False):
            if a != b:
                break
            same += 1
        scores.append(same / len(target))
    return scores
