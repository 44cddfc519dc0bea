"""Packed rows under sdpa: one call with a block-diagonal causal mask (what `attention: sdpa` does with
`sample_packing`) against one causal call per example (what a varlen kernel does), forward and
backward, on random q/k/v shaped like the tiny Llama's attention (4 heads of 64).

Each row is filled with examples of long-tailed lengths (log-normal, median 60 tokens, at least 8).
Both ways give the same output (the maximum difference is printed); the script times them,
alternating, and prints medians.

    python bench/packed_attention.py [--rows 8] [--row-len 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import time

import torch
import torch.nn.functional as F

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

    difference = (masked() - per_example()).abs().max().item()
    times: dict[str, list[float]] = {"masked": [], "per_example": []}
    for _ in range(args.repeats):
        for name, forward in (("masked", masked), ("per_example", per_example)):
            start = time.perf_counter()
            forward().sum().backward()
            times[name].append(time.perf_counter() - start)
    examples = sum(map(len, rows))
    print(f"{args.rows} rows of {args.row_len} tokens, {examples} examples, max difference {difference:.1e}")
    for name, values in times.items():
        print(f"{name:<12} {statistics.median(values) * 1000:8.1f} ms forward+backward (median)")
    ratio = statistics.median(times["masked"]) / statistics.median(times["per_example"])
    print(f"masked / per_example: {ratio:.2f} (> 1: one call per example is faster)")


if __name__ == "__main__":
    main()
