"""Turn prepared rows (plain or packed) into model batches.

A packed row carries `seq_lengths`: its examples' boundaries. Each example gets position ids
from 0 and the label of its first token is ignored (it would otherwise be the target of the
previous example's last token; alone, a first token is never a target either). How the examples
are kept from attending to each other depends on the attention kernel (its `packed_inputs`):

- "mask_4d" (sdpa, eager): rows stay separate, padded to the longest (or to `pad_to`), with a
  block-diagonal causal 4D mask, boolean for sdpa, additive for eager. Padding is its own
  block, so no query row is fully masked.
- "position_ids" (flash-attention, flex): the micro-batch is flattened into one row without any
  attention mask; the kernel finds the examples from the position ids (and `cu_seq_lens_*` for
  the varlen kernels), as transformers does for padding-free batches.
- "position_ids_rows" (sdpa, eager on a model with sliding-window layers): rows as for
  "mask_4d" but no mask; transformers builds each layer's mask (sliding or full) from the
  restarting position ids, with the examples kept apart.

Plain rows are padded with a 2D attention mask, or, with `padding_free` under a "position_ids"
kernel, flattened like packed ones with each example its own block: the model then computes no
padding at all, and the loss is the padded batch's. Every batch carries `num_real_tokens` (a Python
int, popped by the trainer before the forward) for the padding-efficiency log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

PackedInputs = Literal["mask_4d", "position_ids", "position_ids_rows"]


@dataclass
class Collator:
    pad_token_id: int
    packed_inputs: PackedInputs = "mask_4d"
    additive_mask: bool = False
    """4D mask as 0 / -inf floats (eager attention adds it to the scores) instead of booleans."""
    pad_to: int | None = None
    """Pad every row to this length (`pad_to_sequence_len`); otherwise to the batch's longest."""
    padding_free: bool = False
    """Flatten plain (unpacked) rows too, when the kernel reads flattened rows."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        flattens = self.packed_inputs == "position_ids"
        if "seq_lengths" not in features[0]:
            return self._flattened(features) if flattens and self.padding_free else self._plain(features)
        if flattens:
            return self._flattened(features)
        return self._packed_rows(features)

    def _padded(self, features: list[dict[str, Any]]) -> tuple[Any, Any, list[int]]:
        """Each row's input_ids and labels right-padded to one width (the longest row, or `pad_to`),
        and the rows' real lengths."""
        import torch

        lengths = [len(f["input_ids"]) for f in features]
        width = max(max(lengths), self.pad_to or 0)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for row, (feature, n) in enumerate(zip(features, lengths, strict=True)):
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
        return ids, labels, lengths

    def _plain(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids, labels, lengths = self._padded(features)
        mask = (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None]).long()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "num_real_tokens": sum(lengths)}

    def _packed_rows(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids, labels, real_lengths = self._padded(features)
        width = ids.shape[1]
        positions = torch.zeros_like(ids)
        segments = torch.zeros_like(ids)
        for row, feature in enumerate(features):
            lengths = _with_padding(feature["seq_lengths"], width)
            positions[row] = _restarting_positions(lengths)
            segments[row] = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        labels[positions == 0] = -100
        real = sum(real_lengths)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "num_real_tokens": real}
        if self.packed_inputs == "position_ids_rows":
            return batch
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed = (segments[:, :, None] == segments[:, None, :]) & causal  # rows x query x key
        mask: Any = allowed[:, None]
        if self.additive_mask:
            mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(
                ~allowed, torch.finfo(torch.float32).min
            )
            mask = mask[:, None]
        return {**batch, "attention_mask": mask}

    def _flattened(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths: list[int] = []
        ids: list[int] = []
        labels: list[int] = []
        for feature in features:
            lengths.extend(feature.get("seq_lengths") or [len(feature["input_ids"])])
            ids.extend(feature["input_ids"])
            labels.extend(feature["labels"])
        real = len(ids)
        width = max(real, (self.pad_to or 0) * len(features))
        lengths = _with_padding(lengths, width)
        ids += [self.pad_token_id] * (width - real)
        labels += [-100] * (width - real)
        positions = _restarting_positions(lengths)[None]
        label_tensor = torch.tensor([labels])
        label_tensor[positions == 0] = -100
        bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return {
            "input_ids": torch.tensor([ids]),
            "labels": label_tensor,
            "position_ids": positions,
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds,
            "max_length_q": max(lengths),
            "max_length_k": max(lengths),
            "num_real_tokens": real,
        }


def _with_padding(lengths: list[int], width: int) -> list[int]:
    """Example lengths of a row, plus the padding up to `width` as one more block."""
    used = sum(lengths)
    return [*lengths, width - used] if width > used else list(lengths)


def _restarting_positions(lengths: list[int]) -> Any:
    import torch

    return torch.cat([torch.arange(n) for n in lengths])


@dataclass
class Ungrouped:
    """Batches packed groups of rows (trainer.data.packing.PackedGroups) with a collator of plain
    rows: the micro-batch is every row of its groups (an item that is a plain row stays one)."""

    inner: Any

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.inner([row for item in items for row in item.get("rows", [item])])
