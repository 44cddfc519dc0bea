"""Text metrics for the generation eval: `fn(predictions, references, **columns) -> list[float]`,
one score per row (the eval averages them). Both compare with surrounding whitespace stripped."""

from __future__ import annotations

from typing import Any


def exact_match(predictions: list[str], references: list[str], **columns: Any) -> list[float]:
    """1.0 where the answer equals the reference."""
    return [float(p.strip() == r.strip()) for p, r in zip(predictions, references, strict=True)]


def contains(predictions: list[str], references: list[str], **columns: Any) -> list[float]:
    """1.0 where the reference appears in the answer (answers with extra words still count)."""
    return [float(r.strip() in p) for p, r in zip(predictions, references, strict=True)]
