"""The GPU benchmark suite in one command: full fine-tuning under every attention kernel, LoRA, QLoRA
and Liger on a 1B-class Llama, with targets, written to a folder as JSON and a markdown table.

    bash bench/gpu.sh [OUT_DIR]                 # the GPU run: about 4-7 minutes on one H100
    bash bench/gpu.sh --smoke OUT_DIR           # every case on CPU, tiny, fp32 (~50 s on 2 cores)
    python bench/gpu_suite.py [--smoke] [--out DIR] [--install-missing] [--only CASE,...]
                              [--steps 8] [--warmup-steps 3] [--case-timeout 150] [--budget 450]
                              [--peak-tflops 989] [--work-dir DIR] [--jobs N (smoke only)]

What it trains. One Llama-shaped model, built once in a child process and saved to a local work
folder as safetensors (bench/throughput_gpu.py's GPU_SHAPE: hidden 2048, 16 layers, 32 heads, 8 KV
heads, intermediate 8192, vocabulary 32000, tied embeddings, 1.04B parameters, random weights, bf16),
and one JSONL of prompt/completion rows (bench/throughput_data.write_rows: long-tailed log-normal
lengths, median ~600 tokens for sequence_len 2048, sigma 0.9, capped at 2048; enough rows for every
case's steps). Every case is our CLI on its own YAML config (`python -m trainer.cli.validate`, then
`python -m trainer.cli.train`, each a fresh subprocess, offline), bf16, adamw_torch, no gradient
checkpointing, no eval, no checkpoints; packed cases take one row of sequence_len x 8 accumulation
per optimizer step, unpacked ones 2 examples x 8; 3 warm-up + 8 measured optimizer steps:

- full fine-tuning under sdpa, flash_attention_2 and flex_attention, each packed
  (`sample_packing: true`) and unpacked (padding-free, our default for unpacked batches under these
  kernels), and once unpacked with `padding_free: false` under sdpa (padded micro-batches);
- LoRA (r 16, all linear layers) and QLoRA (the same adapters on a 4-bit NF4 base), sdpa, packed;
- LoRA with Liger's kernels (`kernels: [liger]`: RMSNorm, RoPE, SwiGLU) against the LoRA case
  without them.

A case whose config `validate` refuses (flash-attn not installed, no CUDA for flex_attention's
backward, liger-kernel missing, ...) is reported as skipped with validate's reason, not as a failure;
`--install-missing` first pip-installs liger-kernel where it is missing. A case that crashes or runs
past its timeout is reported as failed/timeout with the tail of its log.

The numbers, per case:

- tokens/s: real (non-pad) tokens the model was fed during the measured optimizer steps, divided by
  their wall time (the probe of bench/throughput_probe.py, a `trainer.callbacks` plugin, synchronizes
  the GPU at each step end); the warm-up steps (CUDA init, autotuning, compilation) are left out.
- MFU (full fine-tuning only): (6 N T + 6 L h sum(s_i^2)) / seconds / peak, as bench/throughput_gpu.py:
  N parameters in matmuls, T real tokens, L layers, h hidden size, s_i each example's length (useful
  causal attention FLOPs: padding and other examples of a packed row count nothing), peak the GPU's
  dense bf16 FLOP/s (989 TFLOP/s for an H100 SXM; `--peak-tflops` for another).
- peak memory: torch.cuda.max_memory_allocated() and max_memory_reserved() of the training process,
  model loading included; estimate: the "memory per device (estimate)" total that `validate` prints
  for the same config (weights + gradients + optimizer + activations, trainer/resolve/memory.py), and
  measured / estimate.
- fill: real tokens / tokens processed (the share that is not padding).

Targets (PASS/FAIL, or SKIPPED with the reason): MFU >= 35% for packed full fine-tuning under
flash_attention_2; QLoRA tokens/s >= 0.8 x LoRA tokens/s; peak allocated memory <= 1.3 x the estimate,
for each case that ran and has an estimate (needs CUDA).

Budget. The suite starts no case with less than 30 s left of `--budget` (default 450 s, counted
from its start, setup included), and gives each case at most `--case-timeout` seconds (default 150)
or what is left of the budget, killing it there: it ends within the budget plus a few seconds. Cases
run in priority order (the targets' cases first, flex_attention's compiles last) and
are reported in the table's order. A case's process exits as soon as the probe has written its
numbers (no final checkpoint: saving 2 GB per case would spend the budget and measure nothing).

Written to OUT_DIR (default bench-gpu-<date>-<time>): gpu-suite.json (settings, device, versions,
date, model, data, every case, the Liger comparison, the targets), gpu-suite.md (the same as tables)
and gpu-suite-logs.txt (the tail of each case's validate and train output); bench/gpu.sh adds
gpu-suite-console.log. `--smoke` runs every case on CPU with the tiny SMOKE_SHAPE in fp32, sequence
length 128, 1 warm-up + 2 measured steps of 2 micro-batches, with any GPU hidden
(CUDA_VISIBLE_DEVICES=""), five cases training at once (`--jobs`), and writes the same files; its
numbers say only that the code path works, and its targets are all SKIPPED (with what they would
say). tests/test_bench_gpu.py runs it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from benchlib import REPO, child_env, tail, work_dir
from throughput_common import Spec, install_probe, our_config, read_probe
from throughput_data import build_model, write_rows
from throughput_gpu import (
    GPU_SHAPE,
    SMOKE_SHAPE,
    examples_for,
    measured,
    mfu_of,
    peak_flops,
    validate_problems,
)

GIB = 2**30
MFU_TARGET = 0.35
QLORA_TARGET = 0.8  # QLoRA tokens/s over LoRA tokens/s
MEMORY_TARGET = 1.3  # measured peak allocated over the estimate
MIN_CASE_S = 30  # a case is not started with less of the budget left
VERSIONS = (
    "torch", "transformers", "trl", "datasets", "accelerate", "peft", "bitsandbytes", "liger-kernel",
    "flash-attn",
)  # fmt: skip
DEVICE_QUERY = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
ESTIMATE = re.compile(r"^memory per device \(estimate\): .*\btotal ([0-9.]+) (GiB|MiB|KiB);", re.MULTILINE)
NO_ESTIMATE = re.compile(r"^memory estimate: unavailable \((.*)\)$", re.MULTILINE)
UNITS = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}


@dataclass(frozen=True)
class Case:
    name: str
    adapter: str  # full, lora or qlora
    attention: str
    packed: bool
    padding_free: bool | None = None  # None: our default (on for these kernels)
    liger: bool = False

    @property
    def batching(self) -> str:
        if self.packed:
            return "packed"
        return "padded" if self.padding_free is False else "padding-free"


CASES = (
    Case("full-sdpa-packed", "full", "sdpa", True),
    Case("full-sdpa-unpacked", "full", "sdpa", False),
    Case("full-sdpa-padded", "full", "sdpa", False, padding_free=False),
    Case("full-flash2-packed", "full", "flash_attention_2", True),
    Case("full-flash2-unpacked", "full", "flash_attention_2", False),
    Case("full-flex-packed", "full", "flex_attention", True),
    Case("full-flex-unpacked", "full", "flex_attention", False),
    Case("lora-sdpa-packed", "lora", "sdpa", True),
    Case("qlora-sdpa-packed", "qlora", "sdpa", True),
    Case("lora-sdpa-packed-liger", "lora", "sdpa", True, liger=True),
)
RUN_ORDER = (  # the targets' cases first; flex_attention (torch.compile) last
    "full-sdpa-packed", "full-flash2-packed", "lora-sdpa-packed", "qlora-sdpa-packed",
    "full-sdpa-unpacked", "full-sdpa-padded", "full-flash2-unpacked", "lora-sdpa-packed-liger",
    "full-flex-packed", "full-flex-unpacked",
)  # fmt: skip
LIGER_PAIR = ("lora-sdpa-packed", "lora-sdpa-packed-liger")  # (off, on)
MFU_CASE = "full-flash2-packed"
QLORA_PAIR = ("lora-sdpa-packed", "qlora-sdpa-packed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every case on CPU, tiny shape, fp32, 128 tokens")
    p.add_argument("--out", type=Path, help="output folder (default: bench-gpu-<date>-<time>)")
    p.add_argument("--work-dir", type=Path, help="keep model, data, configs and logs here (default: temp)")
    p.add_argument("--only", help="comma-separated case names (default: all)")
    p.add_argument("--install-missing", action="store_true", help="pip install liger-kernel if missing")
    p.add_argument("--seq-len", type=int, help="sequence_len (default 2048; smoke 128)")
    p.add_argument("--median-len", type=float, help="median row tokens (default: 600/2048 of sequence_len)")
    p.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma of row lengths (default 0.9)")
    p.add_argument("--steps", type=int, help="measured optimizer steps per case (default 8; smoke 2)")
    p.add_argument("--warmup-steps", type=int, help="optimizer steps before timing (default 3; smoke 1)")
    p.add_argument("--grad-accum", type=int, help="accumulation per optimizer step (default 8; smoke 2)")
    p.add_argument("--micro-batch", type=int, default=1, help="packed rows per micro-batch (default 1)")
    p.add_argument(
        "--unpacked-micro-batch", type=int, default=2, help="examples per unpacked micro-batch (default 2)"
    )
    p.add_argument("--lora-r", type=int, default=16, help="LoRA/QLoRA rank (alpha = 2 r; default 16)")
    p.add_argument("--optimizer", default="adamw_torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="OMP threads per case (default 8; smoke 1)")
    p.add_argument("--case-timeout", type=float, help="seconds per case (default 150; smoke 300)")
    p.add_argument(
        "--budget", type=float, help="seconds after which no case starts (default 450; smoke none)"
    )
    p.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (default: table by device)")
    p.add_argument("--jobs", type=int, help="cases trained at once: --smoke only (default 5; GPU: 1)")
    args = p.parse_args(argv)
    gpu = not args.smoke
    defaults = {
        "seq_len": 2048 if gpu else 128, "steps": 8 if gpu else 2, "warmup_steps": 3 if gpu else 1,
        "grad_accum": 8 if gpu else 2, "threads": 8 if gpu else 1, "case_timeout": 150 if gpu else 300,
        "budget": 450 if gpu else 0, "jobs": 1 if gpu else 5,
    }  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.median_len is None:
        args.median_len = round(args.seq_len * 600 / 2048)
    if gpu and args.jobs != 1:
        p.error("--jobs applies to --smoke only: GPU cases run one at a time")
    known = {c.name for c in CASES}
    args.cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    if args.only and (unknown := set(args.only.split(",")) - known):
        p.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CASES)}")
    if min(args.steps, args.warmup_steps + 1, args.grad_accum, args.micro_batch, args.jobs) < 1:
        p.error("--steps, --grad-accum, --micro-batch and --jobs must be >= 1, --warmup-steps >= 0")
    return args


class Suite:
    """One run of the suite: its settings, clock, work folder and per-case records."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.start = time.perf_counter()
        self.records: dict[str, dict[str, Any]] = {}
        self.site: Path | None = None  # the probe plugin's folder, for PYTHONPATH
        self.device, self.model = "unknown", {}

    def elapsed(self) -> str:
        seconds = int(time.perf_counter() - self.start)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def log(self, line: str) -> None:
        print(f"[{self.elapsed()}] {line}", flush=True)

    def env(self, case: Case) -> dict[str, str]:
        env = child_env(self.args.threads, self.work / "hf-datasets" / case.name, self.site)
        env["BENCH_PROBE_EXIT"] = "1"  # the process ends once the probe has written its numbers
        return env

    def config(self, case: Case) -> Path:
        """Our YAML config for a case: throughput_common.our_config's, plus the case's settings."""
        a, steps = self.args, self.args.warmup_steps + self.args.steps
        spec = Spec(
            label=case.name, side="ours", packed=case.packed, model=str(self.work / "llama"),
            train_file=str(self.work / "train.jsonl"), output_dir=str(self.work / "runs" / case.name),
            seq_len=a.seq_len, micro_batch=a.micro_batch if case.packed else a.unpacked_micro_batch,
            grad_accum=a.grad_accum, attention=case.attention, lr=1e-4 if case.adapter == "full" else 2e-4,
            seed=a.seed, optimizer=a.optimizer, scheduler="constant", logging_steps=steps,
            bf16=not a.smoke, max_steps=steps,
        )  # fmt: skip
        config = yaml.safe_load(our_config(spec))
        if case.padding_free is not None:
            config["padding_free"] = case.padding_free
        if case.adapter != "full":
            config["adapter"] = {
                "type": case.adapter, "r": a.lora_r, "alpha": 2 * a.lora_r, "dropout": 0.0,
                "target_modules": "all-linear",
            }  # fmt: skip
        if case.liger:
            config["kernels"] = [{"type": "liger"}]
        path = self.work / f"{case.name}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def validate(self, case: Case) -> dict[str, Any]:
        """Validate a case's config: skipped with validate's reason, or its memory estimate."""
        spec = self.config(case)
        record: dict[str, Any] = {
            "case": case.name, **asdict(case), "batching": case.batching, "config": str(spec),
            "micro_batch": self.args.micro_batch if case.packed else self.args.unpacked_micro_batch,
            "grad_accum": self.args.grad_accum,
        }  # fmt: skip
        log = self.work / f"{case.name}.validate.log"
        problems = validate_problems(spec, self.env(case), log)
        if problems is not None:
            return {**record, "status": "skipped", "reason": f"validate: {problems}"}
        estimate, why = parse_estimate(log.read_text(encoding="utf-8"))
        return {**record, "status": "valid", "estimate_bytes": estimate, "estimate_note": why}

    def train(self, case: Case, timeout: float) -> dict[str, Any]:
        """Train a validated case in a fresh process; its measured numbers or why it failed."""
        record = self.records[case.name]
        log = self.work / f"{case.name}.train.log"
        command = [sys.executable, "-m", "trainer.cli.train", record["config"]]
        code, wall = run_with_timeout(command, self.env(case), log, timeout)
        output_dir = self.work / "runs" / case.name
        if code is None:
            last = tail(log, 2).strip().replace("\n", " / ")
            reason = f"killed at its limit of {timeout:.0f} s" + (f"; last output: {last}" if last else "")
            return {"status": "timeout", "wall": wall, "reason": reason}
        if code != 0:
            return {"status": "failed", "wall": wall, "reason": tail(log, 3).strip().replace("\n", " / ")}
        try:
            probe = read_probe(str(output_dir), case.name)
            numbers = measured(probe, self.args.warmup_steps)
        except (SystemExit, ValueError, KeyError) as err:
            return {"status": "failed", "wall": wall, "reason": f"probe: {err}"}
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)
        return {"status": "ran", "wall": wall, **numbers}

    def run(self) -> dict[str, Any]:
        a = self.args
        shape = SMOKE_SHAPE if a.smoke else GPU_SHAPE
        self.log(f"setup: model ({'smoke' if a.smoke else '1B'}), data, device in {self.work}")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            device = pool.submit(query_device)
            model = pool.submit(
                build_model, self.work, "llama", shape, a.seq_len, "float32" if a.smoke else "bfloat16"
            )
            steps = a.warmup_steps + a.steps
            packed_rows, unpacked = (
                steps * a.grad_accum * n for n in (a.micro_batch, a.unpacked_micro_batch)
            )
            examples = examples_for(packed_rows, unpacked, a.seq_len, a.median_len, a.sigma)
            data = write_rows(self.work / "train.jsonl", examples, a.seq_len, a.median_len, a.sigma, a.seed)
            self.site = install_probe(self.work)
            self.device, self.model = device.result(), model.result()
        self.log(f"device: {self.device}; model {self.model['params']:,} parameters; data {examples} rows")
        if a.install_missing and any(c.liger for c in a.cases):
            self.log(install_liger())
        ordered = sorted(a.cases, key=lambda c: RUN_ORDER.index(c.name))
        self.log(f"{len(ordered)} cases: validating them, training those that pass ({a.jobs} at a time)")
        # Every config is validated up front, beside the first case's start (validate loads no model);
        # the cases then train in run order, each waiting for its own validation.
        with (
            concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as checks,
            concurrent.futures.ThreadPoolExecutor(a.jobs) as trains,
        ):
            validated = {c.name: checks.submit(self.validate, c) for c in ordered}
            done = [
                trains.submit(self.run_case, case, validated[case.name], number, len(ordered))
                for number, case in enumerate(ordered, 1)
            ]
            for future in done:
                future.result()
        return self.report(data)

    def run_case(self, case: Case, validated: concurrent.futures.Future, number: int, count: int) -> None:
        """Train a case once its validation is in, unless it was skipped or the budget is spent; log it."""
        a = self.args
        record = self.records[case.name] = validated.result()
        if record["status"] == "valid":
            left = a.budget - (time.perf_counter() - self.start) if a.budget else float("inf")
            if left < MIN_CASE_S:
                spent = f"{a.budget - left:.0f} s of the suite's budget of {a.budget:.0f} s spent"
                record.update(status="skipped", reason=f"{spent}; a case needs {MIN_CASE_S} s or more")
            else:
                record.update(self.train(case, min(a.case_timeout, left)))
        self.log(f"{number:>2}/{count} {case.name:<23} {one_line(record, self.model, self.peak())}")

    def peak(self) -> float | None:
        return peak_flops(self.device, self.args.peak_tflops)

    def report(self, data: dict[str, Any]) -> dict[str, Any]:
        peak = self.peak()
        cases = [self.records[c.name] for c in self.args.cases]
        for r in cases:
            if r["status"] == "valid":  # never reached (an interrupted parallel run)
                r.update(status="skipped", reason="not run")
            if r["status"] == "ran" and r["adapter"] == "full":
                r["model_flops_per_s"], r["mfu"] = mfu_of(r, self.model, peak)
            if r["status"] == "ran" and r.get("estimate_bytes") and r["max_memory"]:
                r["memory_ratio"] = r["max_memory"] / r["estimate_bytes"]
        return {
            "suite": "bench/gpu_suite.py",
            "smoke": self.args.smoke,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": self.device,
            "peak_tflops": peak / 1e12 if peak else None,
            "versions": versions(),
            "settings": {k: str(v) for k, v in vars(self.args).items() if k != "cases"},
            "wall_s": time.perf_counter() - self.start,
            "model": self.model,
            "data": data,
            "cases": cases,
            "liger": liger_comparison(self.records),
            "targets": targets(self.records, self.args.smoke),
        }


def parse_estimate(text: str) -> tuple[float | None, str | None]:
    """The total of validate's "memory per device (estimate): ..., total X GiB; ..." line in bytes, or
    None and why there is none."""
    found = ESTIMATE.search(text)
    if found:
        return float(found[1]) * UNITS[found[2]], None
    unavailable = NO_ESTIMATE.search(text)
    return None, unavailable[1] if unavailable else "validate printed no memory estimate"


def run_with_timeout(
    command: list[str], env: dict[str, str], log: Path, timeout: float
) -> tuple[int | None, float]:
    """Run a command in the repository, its output into `log`: (exit status, or None if it ran past
    `timeout` and was killed with its process group, e.g. torch.compile's workers; wall seconds)."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        child = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        except BaseException:  # Ctrl-C: take the case down with the suite
            os.killpg(child.pid, signal.SIGKILL)
            raise
        if code is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return code, time.perf_counter() - start


def query_device() -> str:
    """torch.cuda.get_device_name() (or "cpu"), asked of a child: this process holds no CUDA context."""
    done = subprocess.run([sys.executable, "-c", DEVICE_QUERY], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def install_liger() -> str:
    if importlib.util.find_spec("liger_kernel") is not None:
        return "liger-kernel: installed already"
    command = [sys.executable, "-m", "pip", "install", "--retries", "1", "--timeout", "15", "liger-kernel"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return "liger-kernel: pip install timed out (the liger case will be skipped)"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return f"liger-kernel: pip install failed ({' '.join(last)}); the liger case will be skipped"
    return "liger-kernel: installed"


def gib(n: float | None) -> str:
    """Bytes in GiB, or in MiB/KiB below 0.1 GiB (the smoke run's model); "-" for none."""
    if not n:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 2**20)):
        if n >= 0.1 * size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1024:.1f} KiB"


def one_line(r: dict[str, Any], model: dict[str, Any], peak: float | None) -> str:
    """A case's running log line."""
    if r["status"] != "ran":
        return f"{r['status']}: {r['reason']}" + (f"  {r['wall']:.1f} s" if "wall" in r else "")
    text = f"ran   {r['tokens_per_s']:>10,.0f} tokens/s"
    if r["adapter"] == "full":
        mfu = mfu_of(r, model, peak)[1]
        text += f"  MFU {mfu:.1%}" if mfu is not None else "  MFU n/a"
    if r["max_memory"]:
        text += f"  peak {gib(r['max_memory'])}"
        if r.get("estimate_bytes"):
            text += f" (estimate {gib(r['estimate_bytes'])}, x{r['max_memory'] / r['estimate_bytes']:.2f})"
    return text + f"  {r['wall']:.1f} s"


def liger_comparison(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    off, on = (records.get(name) for name in LIGER_PAIR)
    if off is None or on is None:
        return {"status": "skipped", "reason": "--only left a Liger case out"}
    if on["status"] != "ran" or off["status"] != "ran":
        why = on if on["status"] != "ran" else off
        return {"status": "skipped", "reason": f"{why['case']}: {why['status']}: {why['reason']}"}
    return {
        "status": "ran", "off": off["case"], "on": on["case"],
        "tokens_per_s": {"off": off["tokens_per_s"], "on": on["tokens_per_s"]},
        "speedup": on["tokens_per_s"] / off["tokens_per_s"],
        "max_memory": {"off": off["max_memory"], "on": on["max_memory"]},
        "memory_ratio": on["max_memory"] / off["max_memory"] if off["max_memory"] else None,
    }  # fmt: skip


def target(name: str, status: str, value: str = "", detail: str = "") -> dict[str, str]:
    return {"target": name, "status": status, "value": value, "detail": detail}


def not_ran(record: dict[str, Any] | None, name: str) -> str:
    if record is None:
        return f"{name} not selected (--only)"
    return f"{name} {record['status']}: {record.get('reason', '')}"


def targets(records: dict[str, dict[str, Any]], smoke: bool) -> list[dict[str, str]]:
    """The suite's targets: PASS, FAIL or SKIPPED (with why); in a smoke run every one is SKIPPED,
    with what it would say."""
    found: list[dict[str, str]] = []
    name = f"MFU >= {MFU_TARGET:.0%}: full fine-tuning, flash_attention_2, packed"
    r = records.get(MFU_CASE)
    if r is None or r["status"] != "ran":
        found.append(target(name, "SKIPPED", detail=not_ran(r, MFU_CASE)))
    elif r.get("mfu") is None:
        found.append(
            target(name, "SKIPPED", detail=f"no peak FLOP/s known for '{r['device']}' (--peak-tflops)")
        )
    else:
        found.append(target(name, "PASS" if r["mfu"] >= MFU_TARGET else "FAIL", f"{r['mfu']:.1%}"))
    name = f"QLoRA tokens/s >= {QLORA_TARGET} x LoRA tokens/s"
    lora, qlora = (records.get(n) for n in QLORA_PAIR)
    missing = next(
        (
            (r, n)
            for r, n in ((lora, QLORA_PAIR[0]), (qlora, QLORA_PAIR[1]))
            if r is None or r["status"] != "ran"
        ),
        None,
    )
    if missing:
        found.append(target(name, "SKIPPED", detail=not_ran(*missing)))
    else:
        ratio = qlora["tokens_per_s"] / lora["tokens_per_s"]
        detail = f"{qlora['tokens_per_s']:,.0f} / {lora['tokens_per_s']:,.0f} tokens/s"
        found.append(target(name, "PASS" if ratio >= QLORA_TARGET else "FAIL", f"x{ratio:.2f}", detail))
    for r in (records[c.name] for c in CASES if c.name in records):
        if not r.get("estimate_bytes"):
            continue  # skipped at validate, or validate had no estimate
        name = f"peak memory <= {MEMORY_TARGET} x estimate: {r['case']}"
        if r["status"] != "ran":
            found.append(target(name, "SKIPPED", detail=f"{r['status']}: {r.get('reason', '')}"))
        elif not r["max_memory"]:
            found.append(target(name, "SKIPPED", detail=f"no CUDA memory measured on '{r['device']}'"))
        else:
            ratio = r["max_memory"] / r["estimate_bytes"]
            detail = f"{gib(r['max_memory'])} / {gib(r['estimate_bytes'])}"
            found.append(target(name, "PASS" if ratio <= MEMORY_TARGET else "FAIL", f"x{ratio:.2f}", detail))
    if smoke:  # CPU, a tiny model: the numbers only show that the code path works
        for t in found:
            if t["status"] != "SKIPPED":
                t["detail"] = f"smoke run (CPU, tiny model): would be {t['status']}; {t['detail']}".strip(
                    "; "
                )
                t["status"] = "SKIPPED"
    return found


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(record: dict[str, Any]) -> str:
    """The record as markdown: header, the cases table, Liger, targets, what the numbers mean."""
    m, d, s, v = record["model"], record["data"], record["settings"], record["versions"]
    peak = f"{record['peak_tflops']:.0f} TFLOP/s dense bf16" if record["peak_tflops"] else "unknown (no MFU)"
    smoke = " (smoke: CPU, tiny shape; the numbers only show that the code path works)"
    lines = [
        f"# GPU benchmark suite{smoke if record['smoke'] else ''}",
        "",
        f"- date: {record['date']}; suite wall time {record['wall_s']:.0f} s",
        f"- device: {record['device']}; peak {peak}",
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- model: Llama, random weights, {m['params']:,} parameters ({m['matmul_params']:,} in matmuls), "
        f"hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads, {m['kv_heads']} KV heads, "
        f"intermediate {m['intermediate']}, vocabulary {m['vocab']} (tied), "
        f"{'fp32' if record['smoke'] else 'bf16, bf16: true'}",
        f"- data: {d['examples']:,} prompt/completion rows, median {d['median']:.0f} tokens, mean "
        f"{d['mean']:.0f}, p90 {d['p90']}, {d['at_cap']} at sequence_len",
        f"- run: sequence_len {s['seq_len']}, packed {s['micro_batch']} row x {s['grad_accum']} "
        "accumulation, "
        f"unpacked {s['unpacked_micro_batch']} examples x {s['grad_accum']}; {s['warmup_steps']} warm-up + "
        f"{s['steps']} measured optimizer steps; {s['optimizer']}; LoRA r {s['lora_r']}, all linear layers",
        "",
        "| case | adapter | attention | batches | status | tokens/s | MFU | fill | peak allocated "
        "| peak reserved | estimate | allocated / estimate | wall s | notes |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in record["cases"]:
        ran = r["status"] == "ran"
        cells = [
            r["case"], r["adapter"], r["attention"], r["batching"] + (", liger" if r["liger"] else ""),
            r["status"],
            f"{r['tokens_per_s']:,.0f}" if ran else "-",
            f"{r['mfu']:.1%}" if ran and r.get("mfu") is not None else "-",
            f"{r['efficiency']:.3f}" if ran else "-",
            gib(r.get("max_memory")), gib(r.get("max_reserved")), gib(r.get("estimate_bytes")),
            f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else "-",
            f"{r['wall']:.1f}" if "wall" in r else "-",
            r.get("reason", "") if not ran else f"{r['tokens']:,} tokens in {r['seconds']:.2f} s",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    liger = record["liger"]
    lines += ["", "## Liger kernels (LoRA, sdpa, packed)", ""]
    if liger["status"] == "ran":
        t, mem, ratio = liger["tokens_per_s"], liger["max_memory"], liger["memory_ratio"]
        lines += [
            "| Liger | tokens/s | peak allocated |",
            "|---|--:|--:|",
            f"| off ({liger['off']}) | {t['off']:,.0f} | {gib(mem['off'])} |",
            f"| on ({liger['on']}) | {t['on']:,.0f} | {gib(mem['on'])} |",
            f"| on / off | {liger['speedup']:.2f} | {f'{ratio:.2f}' if ratio else '-'} |",
        ]
    else:
        lines.append(f"Skipped: {cell(liger['reason'])}")
    lines += ["", "## Targets", "", "| target | result | value | detail |", "|---|---|--:|---|"]
    lines += [
        f"| {cell(t['target'])} | {t['status']} | {t['value']} | {cell(t['detail'])} |"
        for t in record["targets"]
    ]
    lines += [
        "",
        "tokens/s: real (non-pad) tokens of the measured optimizer steps / their wall time. MFU (full "
        "fine-tuning): (6 N T + 6 L h sum(s_i^2)) / seconds / peak, N parameters in matmuls, T real tokens, "
        "s_i each example's length (useful causal attention only). fill: real / processed tokens. Peak "
        "memory: torch.cuda.max_memory_allocated / max_memory_reserved of the training process; estimate: "
        "the total that `python -m trainer.cli.validate` prints for the same config. Written by "
        "bench/gpu_suite.py (see its docstring).",
    ]
    return "\n".join(lines) + "\n"


def log_tails(work: Path, cases: list[Case]) -> str:
    parts = []
    for case in cases:
        for kind in ("validate", "train"):
            log = work / f"{case.name}.{kind}.log"
            if log.is_file():
                parts.append(f"===== {case.name} {kind} (tail) =====\n{tail(log, 40)}")
    return "\n".join(parts)


def print_summary(record: dict[str, Any]) -> None:
    print()
    for t in record["targets"]:
        value = f": {t['value']}" if t["value"] else ""
        detail = f" ({t['detail']})" if t["detail"] else ""
        print(f"  {t['status']:<8} {t['target']}{value}{detail}")
    counts = {}
    for r in record["cases"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    shown = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"\ncases: {shown}; suite wall time {record['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # CPU even where a GPU is visible: every child (model, validate, train) inherits it
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    date = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out = (args.out or Path(f"bench-gpu-{date}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with work_dir(args.work_dir, "trainer-gpu-suite-") as work:
        suite = Suite(args, work)
        record = suite.run()
        (out / "gpu-suite-logs.txt").write_text(log_tails(work, args.cases), encoding="utf-8")
    (out / "gpu-suite.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    (out / "gpu-suite.md").write_text(markdown(record), encoding="utf-8")
    print_summary(record)
    print(f"written: {out / 'gpu-suite.json'}, {out / 'gpu-suite.md'}, {out / 'gpu-suite-logs.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
