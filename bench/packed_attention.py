"""Packed rows under sdpa, three ways, forward and backward, on random q/k/v shaped like the tiny
Llama's attention (4 heads of 64): one call with a block-diagonal causal mask (transformers' sdpa
on a packed row), one causal call per example (what a varlen kernel does), and our tiled kernel
(`plugins/attention/segments.py`, what `attention: sdpa` runs: one call per tile of whole examples,
its tile masks built as in training, once per call here).

Each row is filled with examples of long-tailed lengths (log-normal, median 60 tokens, at least 8).
All give the same output (the maximum difference is printed); the script times them, alternating,
and prints medians.

    python bench/packed_attention.py [--rows 8] [--row-len 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from plugins.attention import segments

HEADS, HEAD_DIM, MEDIAN, SIGMA = 4, 64, 60, 0.9


def example_lengths(rng: random.Random, row_len: int) -> list[int]:
    lengths: list[int] = []
    while sum(lengths) < row_len:
        wanted = max(8, round(rng.lognormvariate(math.log(MEDIAN), SIGMA)))
        lengths.append(min(row_len - sum(lengths), wanted))
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--row-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = random.Random(0)
    rows = [example_lengths(rng, args.row_len) for _ in range(args.rows)]
    shape = (args.rows, HEADS, args.row_len, HEAD_DIM)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    mask = torch.zeros(args.rows, 1, args.row_len, args.row_len, dtype=torch.bool)
    for r, lengths in enumerate(rows):
        start = 0
        for n in lengths:
            mask[r, 0, start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            start += n

    def masked() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def per_example() -> torch.Tensor:
        out = []
        for r, lengths in enumerate(rows):
            bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
            parts = [
                F.scaled_dot_product_attention(
                    q[r : r + 1, :, a:b], k[r : r + 1, :, a:b], v[r : r + 1, :, a:b], is_causal=True
                )
                for a, b in itertools.pairwise(bounds)
            ]
            out.append(torch.cat(parts, dim=2))
        return torch.cat(out, dim=0)

    positions = torch.stack([torch.cat([torch.arange(n) for n in lengths]) for lengths in rows])

    def tiled() -> torch.Tensor:
        from transformers.masking_utils import causal_mask_function

        deferred = segments.DeferredMask({"mask_function": causal_mask_function, "device": "cpu"})
        out, _ = segments.segments_attention(None, q, k, v, deferred, position_ids=positions)
        return out.transpose(1, 2)

    reference = masked()
    difference = max((reference - way()).abs().max().item() for way in (per_example, tiled))
    ways = (("masked", masked), ("per_example", per_example), ("tiled", tiled))
    times: dict[str, list[float]] = {name: [] for name, _ in ways}
    for _ in range(args.repeats):
        for name, forward in ways:
            start = time.perf_counter()
            forward().sum().backward()
            times[name].append(time.perf_counter() - start)
    examples = sum(map(len, rows))
    print(f"{args.rows} rows of {args.row_len} tokens, {examples} examples, max difference {difference:.1e}")
    for name, values in times.items():
        print(f"{name:<12} {statistics.median(values) * 1000:8.1f} ms forward+backward (median)")
    for name in ("per_example", "tiled"):
        ratio = statistics.median(times["masked"]) / statistics.median(times[name])
        print(f"masked / {name}: {ratio:.2f} (> 1: {name} is faster)")


if __name__ == "__main__":
    main()
