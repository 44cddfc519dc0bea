"""`DataReport`: what happened to the rows, printed before training and saved as JSON with a cache."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

DROP_REASONS = ("bad", "empty", "too long", "filtered", "duplicate")
KEEP_BAD_ROWS = 5


@dataclass
class DatasetCounts:
    path: str
    role: str  # 'train' or 'test'
    rows_read: int = 0
    rows_kept: int = 0
    examples: int = 0
    train_rows: int = 0
    weight: float | None = None


@dataclass
class DataReport:
    """Counts over every dataset; token and length figures are over the final training set."""

    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    truncated: int = 0
    chunked: int = 0
    examples: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    total_tokens: int = 0
    trainable_tokens: int = 0
    length_p50: int = 0
    length_p95: int = 0
    length_max: int = 0
    datasets: list[DatasetCounts] = field(default_factory=list)
    first_bad_rows: list[str] = field(default_factory=list)
    fingerprint: str = ""
    cache: str = ""

    def drop(self, reason: str, where: str, message: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.first_bad_rows) < KEEP_BAD_ROWS:
            self.first_bad_rows.append(f"{where}  {reason}: {message}")

    def measure(self, lengths: list[int], trainable: int) -> None:
        """Token and length figures of the training set."""
        ordered = sorted(lengths)
        self.total_tokens, self.trainable_tokens = sum(ordered), trainable
        if ordered:
            self.length_p50 = ordered[len(ordered) // 2]
            self.length_p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
            self.length_max = ordered[-1]

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n) or "none"
        changed = [f"{self.truncated} truncated"] * bool(self.truncated) + [
            f"{self.chunked} split into chunks"
        ] * bool(self.chunked)
        out = [
            f"rows read {self.rows_read}, kept {self.rows_kept}, dropped: {dropped}"
            + (f"; {', '.join(changed)}" if changed else ""),
            f"examples: train {self.train_rows}, eval {self.eval_rows}",
            f"train tokens {self.total_tokens} (trainable {self.trainable_tokens}); "
            f"length p50 {self.length_p50} / p95 {self.length_p95} / max {self.length_max}",
        ]
        if len(self.datasets) > 1:
            for counts in self.datasets:
                weight = f", weight {counts.weight:g}" if counts.weight is not None else ""
                share = f" -> {counts.train_rows} train rows" if counts.role == "train" else " (eval)"
                kept = f"read {counts.rows_read}, kept {counts.rows_kept}"
                out.append(f"  {counts.path}: {kept}{weight}{share}")
        out += [f"  dropped: {line}" for line in self.first_bad_rows]
        if self.cache:
            out.append(self.cache)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DataReport:
        data: dict[str, Any] = json.loads(text)
        data["datasets"] = [DatasetCounts(**counts) for counts in data.get("datasets", [])]
        return cls(**data)
