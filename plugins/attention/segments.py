"""sdpa that attends within each example of a flattened (padding-free or packed) row, tile by tile.

A row that holds several examples, told apart by restarting position ids, needs a block-diagonal
causal mask. One sdpa call over the whole row computes every query-key pair of the row and throws
the cross-example ones away: at 4,096 tokens of 60-token examples that is 98% of the work. Here the
row is cut at example boundaries into tiles of whole consecutive examples (up to `tile_tokens`
each; a longer example is a tile of its own) and sdpa runs once per tile, so the pairs between
tiles are never computed. Each tile's mask is the model's own mask function (causal, plus sliding
window or whatever the model adds, plus transformers' packed-sequence split) evaluated on that
tile's square only; a tile whose mask is plain causal runs with `is_causal` instead. Masks are
built once per forward and reused by every layer.

This is registered with transformers as its own attention implementation, `ATTENTION_NAME`, with a
mask function that defers the mask: for a batch without padding and without a cache offset it
returns a `DeferredMask` instead of building a (rows x length x length) tensor. Everything else (a
padded batch, a decode step, a row of one example) gets exactly what `sdpa` does.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

ATTENTION_NAME = "sdpa_segments"
TILE_TOKENS = {"cpu": 128}
"""Tokens per tile by device type. On CPU, sdpa's cost per call is small and the pairs skipped
dominate (bench/packed_attention.py: 128 is fastest from 512- to 4,096-token rows); on an
accelerator each call is a kernel launch, so tiles are as long as a training row."""
ACCELERATOR_TILE_TOKENS = 4096


@dataclass
class _Tile:
    start: int
    end: int
    mask: Any  # None: plain causal


@dataclass
class DeferredMask:
    """The arguments transformers gave the mask function, kept until the attention knows the rows.
    Every layer of one forward gets the same object, so what it builds, it builds once."""

    arguments: dict[str, Any]
    _tiles: list[list[_Tile]] | None = field(default=None, init=False)
    _tiles_built: bool = field(default=False, init=False)

    @functools.cached_property
    def full(self) -> Any:
        """What `sdpa` itself would have been given (None: plain causal)."""
        from transformers.masking_utils import sdpa_mask

        return sdpa_mask(**self.arguments)

    def tiles(self, position_ids: Any, tile_tokens: int) -> list[list[_Tile]] | None:
        """Each row cut into tiles of whole examples, or None when no row holds more than one."""
        if not self._tiles_built:
            bounds = example_bounds(position_ids)
            if any(len(row) > 2 for row in bounds):
                self._tiles = [
                    [
                        _Tile(start, end, self._tile_mask(row, [b for b in row_bounds if start <= b <= end]))
                        for start, end in group_examples(row_bounds, tile_tokens)
                    ]
                    for row, row_bounds in enumerate(bounds)
                ]
            self._tiles_built = True
        return self._tiles

    def _tile_mask(self, row: int, bounds: list[int]) -> Any:
        """The model's mask on the square of examples `bounds` spans, with each example kept to
        itself (transformers adds that split only when it sees no cache); None if plain causal."""
        import torch

        device = self.arguments.get("device", "cpu")
        start, end = bounds[0], bounds[-1]
        indices = torch.arange(start, end, device=device)
        sizes = torch.tensor([b - a for a, b in itertools.pairwise(bounds)], device=device)
        example = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)
        allowed = self.arguments["mask_function"](
            torch.tensor(row, device=device),
            torch.tensor(0, device=device),
            indices[:, None],
            indices[None, :],
        ) & (example[:, None] == example[None, :])
        if len(bounds) > 2:  # several examples: never plain causal
            return allowed
        return None if torch.equal(allowed, torch.ones_like(allowed).tril()) else allowed


def example_bounds(position_ids: Any) -> list[list[int]]:
    """Each row's example boundaries [0, ..., length]: an example starts wherever the position id
    does not follow the previous one (the rule transformers uses to find packed sequences)."""
    import torch

    starts = torch.diff(position_ids, dim=-1) != 1
    length = position_ids.shape[-1]
    return [[0, *(row.nonzero().flatten() + 1).tolist(), length] for row in starts]


def group_examples(bounds: list[int], tile_tokens: int) -> list[tuple[int, int]]:
    """Consecutive examples grouped into tiles of at most `tile_tokens` (an example longer than
    that is a tile of its own), as (start, end) spans that cover the row."""
    tiles: list[tuple[int, int]] = []
    start = bounds[0]
    for previous, end in itertools.pairwise(bounds[1:]):
        if end - start > tile_tokens:
            tiles.append((start, previous))
            start = previous
    tiles.append((start, bounds[-1]))
    return tiles


def deferred_sdpa_mask(**arguments: Any) -> Any:
    """transformers' mask function for `ATTENTION_NAME`: deferred where the rows may be tiled
    (no padding mask, no cache offset, queries = keys), transformers' sdpa mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    plain_square = (
        arguments.get("attention_mask") is None
        and not arguments.get("use_vmap", False)
        and arguments.get("q_offset", 0) == 0
        and arguments.get("kv_offset", 0) == 0
        and arguments["q_length"] == arguments["kv_length"] > 1
    )
    return DeferredMask(arguments) if plain_square else sdpa_mask(**arguments)


def segments_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention function for `ATTENTION_NAME` (query: rows x heads x length x dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, DeferredMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    position_ids = kwargs.get("position_ids")
    tile_tokens = TILE_TOKENS.get(query.device.type, ACCELERATOR_TILE_TOKENS)
    tiles = None
    if position_ids is not None and position_ids.dim() == 2 and key.shape[2] == query.shape[2]:
        tiles = attention_mask.tiles(position_ids.expand(query.shape[0], -1), tile_tokens)
    if tiles is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask.full, dropout, scaling, **kwargs
        )
    return _tiled(query, key, value, tiles, dropout, scaling), None


def _tiled(
    query: Any, key: Any, value: Any, tiles: list[list[_Tile]], dropout: float, scaling: float | None
) -> Any:
    """One sdpa call per tile. The rows are unbound and cut with `split`, whose backward is one
    concatenation (slicing each tile out of the whole tensor would give every tile's backward a
    zero-filled gradient of the whole tensor to add up), and every piece stays 4-D (rows x heads x
    tokens x dim): on 3-D inputs PyTorch's CPU sdpa falls back to its unfused math kernel."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    options = {"dropout_p": dropout, "scale": scaling, "enable_gqa": query.shape[1] != key.shape[1]}
    rows = []
    for row_tiles, *qkv in zip(tiles, query.unbind(0), key.unbind(0), value.unbind(0), strict=True):
        sizes = [tile.end - tile.start for tile in row_tiles]
        q_pieces, k_pieces, v_pieces = (tensor.unsqueeze(0).split(sizes, 2) for tensor in qkv)
        outputs = [
            scaled_dot_product_attention(q, k, v, attn_mask=tile.mask, is_causal=tile.mask is None, **options)
            for tile, q, k, v in zip(row_tiles, q_pieces, k_pieces, v_pieces, strict=True)
        ]
        rows.append(torch.cat(outputs, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous()


def register() -> str:
    """Make `ATTENTION_NAME` known to transformers (idempotent) and return it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, segments_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, deferred_sdpa_mask)
    return ATTENTION_NAME
