"""The GPU benchmark of bench/throughput.py (`--gpu`, and `--gpu-smoke`: the same code path on CPU
with a tiny shape in fp32): ours with sample_packing on a 1B-class Llama under every attention kernel
whose `trainer.cli.validate` check passes, reporting tokens/s and MFU over the steps after warm-up.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from benchlib import child_env, run_child, tail
from throughput_common import Spec, install_probe, our_config, read_probe
from throughput_data import build_model, write_rows

KERNELS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
GPU_SHAPE = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "vocab": 32000}
SMOKE_SHAPE = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 512}
PEAK_BF16_TFLOPS = (  # dense bf16 tensor-core peak, by a substring of torch.cuda.get_device_name()
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device.lower():
            return tflops * 1e12
    return None


def window(probe: dict[str, Any], warmup_steps: int) -> tuple[float, int, int]:
    """(seconds, real tokens, sum of squared example lengths) of the optimizer steps after warmup."""
    steps, per_batch = probe["steps"], probe["per_batch"]
    if len(steps) <= warmup_steps:
        raise ValueError(f"only {len(steps)} optimizer steps, not more than the {warmup_steps} warm-up steps")
    (t0, b0), (t1, b1) = (steps[warmup_steps - 1] if warmup_steps else (0.0, 0)), steps[-1]
    batches = per_batch[b0:b1]
    return t1 - t0, sum(b[0] for b in batches), sum(b[1] for b in batches)


def measured(probe: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """A probe's numbers over the optimizer steps after warm-up (tokens/s), and its peak memory."""
    seconds, tokens, squares = window(probe, warmup_steps)
    return {
        "seconds": seconds, "tokens": tokens, "squares": squares, "tokens_per_s": tokens / seconds,
        "device": probe["device"], "max_memory": probe["max_memory"],
        "max_reserved": probe.get("max_reserved", 0), "efficiency": probe["real"] / probe["processed"],
    }  # fmt: skip


def validate_problems(config: Path, env: dict[str, str], log: Path) -> str | None:
    """`trainer.cli.validate` on a config, its output into `log`: None if it passes, else its
    problems on one line, without the "N config errors:" header and the FILE:LINE prefixes."""
    command = [sys.executable, "-m", "trainer.cli.validate", str(config)]
    code, _, _ = run_child(command, env, log, fail=False)
    if code == 0:
        return None
    lines = tail(log, 8).splitlines()
    problems = [re.sub(r"^\S+:\d+\s+", "", x.strip()) for x in lines if x.startswith("  ")]
    return " / ".join(problems) or tail(log, 1).strip()


def examples_for(packed_rows: int, unpacked_examples: int, seq_len: int, median: float, sigma: float) -> int:
    """Rows of data enough for `packed_rows` packed rows of `seq_len` and for `unpacked_examples`
    examples, with a margin (log-normal lengths: mean = median * exp(sigma^2 / 2), before the cap)."""
    mean_guess = median * math.exp(sigma**2 / 2)
    packed = 1.3 * packed_rows * seq_len / min(mean_guess, seq_len)
    return math.ceil(max(packed, 1.1 * unpacked_examples))


def gpu_kernel(kernel: str, spec: Spec, work: Path, site: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Validate, then train, one kernel; the outcome with its numbers, or why it was skipped/failed."""
    config = work / f"gpu-{kernel}.yml"
    config.write_text(our_config(spec), encoding="utf-8")
    env = child_env(args.threads, work / "hf-datasets" / kernel, site)
    problems = validate_problems(config, env, work / f"gpu-{kernel}.validate.log")
    if problems is not None:
        return {"kernel": kernel, "status": "skipped", "reason": problems}
    log = work / f"gpu-{kernel}.log"
    code, wall, _ = run_child([sys.executable, "-m", "trainer.cli.train", str(config)], env, log, fail=False)
    if code != 0:
        return {"kernel": kernel, "status": "failed", "reason": tail(log, 3).strip().replace("\n", " / ")}
    probe = read_probe(spec.output_dir, kernel)
    shutil.rmtree(spec.output_dir, ignore_errors=True)
    return {"kernel": kernel, "status": "ran", **measured(probe, args.gpu_warmup_steps), "wall": wall}


def gpu_benchmark(args: argparse.Namespace, work: Path, smoke: bool) -> dict[str, Any]:
    shape, seq_len = (SMOKE_SHAPE, 128) if smoke else (GPU_SHAPE, args.gpu_seq_len)
    dtype = "float32" if smoke else "bfloat16"
    steps = args.gpu_warmup_steps + args.gpu_steps
    grad_accum = args.gpu_grad_accum
    model_info = build_model(work, "llama", shape, seq_len, dtype)
    train_file = work / "train.jsonl"
    median = args.gpu_median_len or seq_len / 4
    examples = examples_for(steps * grad_accum * args.gpu_micro_batch, 0, seq_len, median, args.sigma)
    data = write_rows(train_file, examples, seq_len, median, args.sigma, args.seed)
    site = install_probe(work)
    results = []
    for kernel in KERNELS:
        spec = Spec(
            label=kernel, side="ours", packed=True, model=str(work / "llama"), train_file=str(train_file),
            output_dir=str(work / "runs" / kernel), seq_len=seq_len, micro_batch=args.gpu_micro_batch,
            grad_accum=grad_accum, attention=kernel, lr=args.lr, seed=args.seed, optimizer=args.optimizer,
            scheduler=args.scheduler, logging_steps=args.logging_steps, bf16=not smoke, max_steps=steps,
        )  # fmt: skip
        print(f"{kernel} ...", flush=True)
        results.append(gpu_kernel(kernel, spec, work, site, args))
    print_gpu(results, model_info, data, args, smoke, seq_len)
    return {"model": model_info, "data": data, "kernels": results}


def mfu_of(
    result: dict[str, Any], model_info: dict[str, Any], peak: float | None
) -> tuple[float, float | None]:
    """(model FLOP/s, MFU): 6 * N * tokens + 6 * layers * hidden * sum(s_i^2) over the window."""
    flops = 6 * model_info["matmul_params"] * result["tokens"]
    flops += 6 * model_info["layers"] * model_info["hidden"] * result["squares"]
    rate = flops / result["seconds"]
    return rate, (rate / peak if peak else None)


def print_gpu(results, model_info, data, args, smoke, seq_len) -> None:
    print()
    device = next((r["device"] for r in results if r["status"] == "ran"), "none ran")
    peak = peak_flops(device, args.peak_tflops)
    print(f"{'kernel':<18} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'eff':>5} {'peak GiB':>8}  notes")
    for r in results:
        if r["status"] != "ran":
            print(
                f"{r['kernel']:<18} {'-':>10} {'-':>8} {'-':>6} {'-':>5} {'-':>8}  "
                f"{r['status']}: {r['reason']}"
            )
            continue
        rate, mfu = mfu_of(r, model_info, peak)
        r.update(model_flops_per_s=rate, mfu=mfu)
        shown = f"{mfu:.1%}" if mfu is not None else "n/a"
        print(
            f"{r['kernel']:<18} {r['tokens_per_s']:>10,.0f} {rate / 1e12:>8.2f} {shown:>6} "
            f"{r['efficiency']:>5.3f} {r['max_memory'] / 2**30:>8.2f}  "
            f"{r['tokens']:,} tokens in {r['seconds']:.2f} s"
        )
    m = model_info
    print(
        f"\nmodel: Llama, random weights, {m['params']:,} params ({m['matmul_params']:,} in "
        f"matmuls), hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads, "
        f"{m['kv_heads']} kv heads, "
        f"intermediate {m['intermediate']}, vocab {m['vocab']} (tied), "
        f"{'fp32 (smoke test)' if smoke else 'bf16 weights, bf16: true'}"
    )
    print(
        f"run: ours, sample_packing, sequence_len {seq_len}, micro-batch {args.gpu_micro_batch} row(s) x "
        f"accumulation {args.gpu_grad_accum}, {args.gpu_warmup_steps} warm-up + {args.gpu_steps} measured "
        f"optimizer steps, {args.optimizer}; data {data['examples']:,} rows, "
        f"median {data['median']:.0f} tokens"
    )
    print(
        "tokens/s: real tokens of the measured steps / their wall time (synchronized at each step end). "
        "MFU = (6 * N * tokens + 6 * layers * hidden * sum over examples of seq_len^2) / seconds / peak, N = "
        "parameters in matmuls (all but the input embedding; the tied LM head counted); the attention term "
        "is causal (12 * L * h * s^2 / 2) over each packed example alone, i.e. useful FLOPs: sdpa/eager with "
        "a 4D mask compute the whole row."
    )
    if peak:
        source = "--peak-tflops" if args.peak_tflops else "table"
        print(f"peak: {peak / 1e12:.0f} TFLOP/s dense bf16 for '{device}' ({source})")
    else:
        print(f"peak: unknown for '{device}': MFU not computed (pass --peak-tflops)")
