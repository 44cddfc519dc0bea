"""Sample packing: examples of a prepared dataset packed into rows of at most `sequence_len` tokens.

Bins come from best-fit decreasing (BFD) over the example lengths: longest first, each into the
fullest row it still fits. BFD's result depends only on the lengths, so the row layout (and the
number of rows, hence the steps per epoch) is the same every epoch; what changes each epoch, by
seed, is which of the equal-length examples fills which slot, and the order of the rows (the
trainer's sampler shuffles them). A row keeps its examples' boundaries (`seq_lengths`), so the
collator can restart position ids and keep every example's attention inside itself.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PackingPlan:
    """Row layout from BFD: `slots[r]` are the lengths of row r, longest first."""

    capacity: int
    slots: list[list[int]]
    examples_by_length: dict[int, list[int]]

    @classmethod
    def best_fit_decreasing(cls, lengths: list[int], capacity: int) -> PackingPlan:
        """Pack `lengths` (each <= capacity) into as few rows as BFD finds."""
        too_long = [n for n in lengths if n > capacity or n <= 0]
        if too_long:
            raise ValueError(f"cannot pack an example of {too_long[0]} tokens into rows of {capacity}")
        by_length: dict[int, list[int]] = defaultdict(list)
        for index, n in enumerate(lengths):
            by_length[n].append(index)
        slots: list[list[int]] = []
        rows_with_room: dict[int, list[int]] = defaultdict(list)  # room left -> rows with that room
        rooms: list[int] = []  # sorted room values that have at least one row
        for n in sorted(by_length, reverse=True):
            for _ in by_length[n]:
                at = bisect.bisect_left(rooms, n)
                if at == len(rooms):  # no row has room: open a new one
                    row, room = len(slots), capacity
                    slots.append([])
                else:
                    room = rooms[at]
                    row = rows_with_room[room].pop()
                    if not rows_with_room[room]:
                        del rooms[at]
                slots[row].append(n)
                left = room - n
                if left > 0:
                    if not rows_with_room[left]:
                        bisect.insort(rooms, left)
                    rows_with_room[left].append(row)
        return cls(capacity, slots, dict(by_length))

    def rows(self, seed: int) -> list[list[int]]:
        """Example indices of each row; equal-length examples are dealt to slots in a seeded order."""
        import numpy as np

        rng = np.random.default_rng(seed)
        queues = {
            n: rng.permutation(indices).tolist() for n, indices in sorted(self.examples_by_length.items())
        }
        return [[queues[n].pop() for n in row] for row in self.slots]

    @property
    def tokens(self) -> int:
        return sum(sum(row) for row in self.slots)

    @property
    def efficiency(self) -> float:
        """Real tokens / row capacity: the padding efficiency with rows padded to `capacity`."""
        return self.tokens / max(1, len(self.slots) * self.capacity)


def example_lengths(dataset: Any) -> list[int]:
    """Token count of every row of a prepared `datasets.Dataset`, read from Arrow without decoding."""
    import pyarrow.compute as pc

    table = dataset.select_columns(["input_ids"]).with_format("arrow")[:]  # respects select/shuffle views
    return pc.list_value_length(table.column("input_ids")).to_pylist()


def sequence_tokens(dataset: Any) -> list[int]:
    """Tokens each row of a prepared preference or KTO dataset puts through the model: a pair's
    two sequences (the prompt twice), a KTO row's one; an SFT row's `input_ids`."""
    import pyarrow.compute as pc

    columns = set(dataset.column_names)
    if "chosen_ids" not in columns and "completion_ids" not in columns:
        return example_lengths(dataset)
    names = (
        ["prompt_ids", "chosen_ids", "rejected_ids"]
        if "chosen_ids" in columns
        else ["prompt_ids", "completion_ids"]
    )
    table = dataset.select_columns(names).with_format("arrow")[:]
    counts = [pc.list_value_length(table.column(name)) for name in names]
    total = pc.add(counts[0], counts[0]) if "chosen_ids" in columns else counts[0]
    for count in counts[1:]:
        total = pc.add(total, count)
    return total.to_pylist()


class PackedGroups:
    """A map-style torch dataset whose items are packed groups of whole rows of a prepared dataset:
    for the preference methods, whose collator batches rows as they are (a pair's two sequences
    stay together). Item: {"rows": [row, ...]}. Epoch e uses the rows of `plan.rows(seed + e)`; the
    trainer calls `set_epoch` at each epoch start."""

    def __init__(self, dataset: Any, capacity: int, seed: int, lengths: list[int] | None = None):
        self.dataset = dataset
        self.seed = seed
        lengths = lengths if lengths is not None else sequence_tokens(dataset)
        self.plan = PackingPlan.best_fit_decreasing(lengths, capacity)
        self.epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._rows = self.plan.rows(self.seed + epoch)

    def __len__(self) -> int:
        return len(self.plan.slots)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"rows": [self.dataset[i] for i in self._rows[index]]}

    def summary(self) -> str:
        examples = sum(len(row) for row in self.plan.slots)
        return (
            f"packing: {examples:,} rows -> {len(self):,} groups of up to {self.plan.capacity:,} tokens "
            f"({examples / max(1, len(self)):.1f} per group, best-fit decreasing); each sequence attends "
            f"only to itself; packing efficiency {self.plan.efficiency:.1%}"
        )


class PackedDataset(PackedGroups):
    """A map-style torch dataset whose items are packed rows of a prepared SFT dataset.

    Item: `input_ids` and `labels` of the row's examples concatenated, and `seq_lengths`.
    """

    def __init__(self, dataset: Any, capacity: int, seed: int):
        super().__init__(dataset, capacity, seed, example_lengths(dataset))

    def __getitem__(self, index: int) -> dict[str, Any]:
        members = self.dataset[self._rows[index]]
        return {
            "input_ids": [t for ids in members["input_ids"] for t in ids],
            "labels": [t for labels in members["labels"] for t in labels],
            "seq_lengths": [len(ids) for ids in members["input_ids"]],
        }

    def summary(self) -> str:
        examples = sum(len(row) for row in self.plan.slots)
        return (
            f"packing: {examples:,} examples -> {len(self):,} rows of up to {self.plan.capacity:,} tokens "
            f"({examples / max(1, len(self)):.1f} per row, best-fit decreasing); packing efficiency "
            f"{self.plan.efficiency:.1%} (real tokens / row capacity; padding is at most the rest, "
            "measured as padding_efficiency in the logs)"
        )
