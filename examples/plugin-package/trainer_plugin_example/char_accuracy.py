"""`char_accuracy`: a generation metric for trainer's `generation` eval (the `trainer.metrics` kind).

    evals:
      - type: generation
        path: eval.jsonl                # {"prompt": ..., "answer": ...}
        metrics: [exact_match, char_accuracy]

A metric plugin is a plain function: the model's answers, the reference answers and each other
column of the rows by name; it returns one score per row (the eval averages them) or one number.
"""

from __future__ import annotations

from typing import Any


def char_accuracy(predictions: list[str], references: list[str], **columns: Any) -> list[float]:
    """Partial credit: the share of the reference's characters that the answer has at the same
    position (whitespace around both ignored); 1.0 for an exact match."""
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        answer, target = prediction.strip(), reference.strip()
        same = sum(a == b for a, b in zip(answer, target, strict=False))
        scores.append(same / max(len(target), len(answer), 1))
    return scores
