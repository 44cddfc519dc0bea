"""The per-device memory estimate (`trainer.resolve.memory.estimate`) against what each process of a
real 2-process CPU run holds, one run per built-in backend.

tests/memory_probe.py runs the config under torchrun and writes, per process, the bytes of the
weights, gradients and optimizer state it holds during the first step (see its docstring for what
counts as which, and when). Compared with `estimate()` of the same config, for each part:

* weights: right after the optimizer step (local shards, replicas, DeepSpeed's fp32 partitions); for
  FSDP SHARD_GRAD_OP at the end of the forward pass, where it keeps the whole weights gathered beside
  its shards (what the estimate counts; after the step only the shards are left);
* gradients: reduced, right before the optimizer step; for ZeRO-1 at the end of the backward pass,
  before DeepSpeed's reduction epilogue, which frees the gradients outside its partition (until then
  it holds every gradient, as the estimate says). Right before that epilogue ZeRO-2/3 also hold the
  last bucket's gradients whole (here the tied embedding's, 7% over the partition), until they are
  reduced: a temporary, as FSDP's unsharded gradients of a unit before its reduce-scatter;
* optimizer: right after the step (Adam's two moments and step count).

The busiest process must be within 5% of the estimate, and no process above it by more than 5% (the
estimate is per device: the one that needs most). Activations are not measured. Not counted by the
estimate and only reported here: communication buckets (DDP's reducer keeps a whole second copy of
the gradients unless `gradient_as_bucket_view`; DeepSpeed's ipg buckets), and what FSDP full_shard
keeps gathered through a step (its root unit: embeddings and final norm).

DeepSpeed's reduce bucket is set to 4096 values here (the run's default is hidden_size^2): the tiny
model's 65,536 would be 7% of its 1.8M weights, where a real model's is well under 1%. The first
DeepSpeed run on a machine builds its CPU communication op (about 3 minutes, cached in
~/.cache/torch_extensions); later runs take about 20 s each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, write_yaml
from trainer.resolve.memory import estimate
from trainer.resolve.validate import load_config

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multiprocess")]  # both cores: one at a time

TIMEOUT = 600
TOLERANCE = 0.05
BUCKET = 4096
PARTS = ("weights", "gradients", "optimizer")

BACKENDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ddp": ({"type": "ddp"}, {}),
    "fsdp2-full_shard": ({"type": "fsdp", "version": 2, "sharding": "full_shard"}, {}),
    "fsdp2-shard_grad_op": ({"type": "fsdp", "version": 2, "sharding": "shard_grad_op"}, {}),
    "fsdp1-full_shard": ({"type": "fsdp", "version": 1, "sharding": "full_shard"}, {}),
    "zero1": ({"type": "deepspeed", "stage": 1, "reduce_bucket_size": BUCKET}, {}),
    "zero2": ({"type": "deepspeed", "stage": 2, "reduce_bucket_size": BUCKET}, {}),
    "zero3": ({"type": "deepspeed", "stage": 3, "reduce_bucket_size": BUCKET}, {}),
    # DeepSpeed casts the module to bf16 (weights and gradients in 16-bit, fp32 partitions besides)
    "zero2-bf16": ({"type": "deepspeed", "stage": 2, "reduce_bucket_size": BUCKET}, {"bf16": True}),
    "zero3-bf16": ({"type": "deepspeed", "stage": 3, "reduce_bucket_size": BUCKET}, {"bf16": True}),
}
"""Each backend's block (2 processes) and other config keys (fp32 AdamW unless said)."""

WEIGHTS_AT = {"fsdp2-shard_grad_op": "forward"}
"""When the weights are compared (default: after the optimizer step)."""
GRADIENTS_AT = {"zero1": "backward"}
"""When the gradients are compared (default: reduced, right before the optimizer step)."""


def probe_env() -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def run_probe(config: Path, out: Path) -> list[dict[str, dict[str, int]]]:
    """Both processes' measurements of one step of `config` (tests/memory_probe.py under torchrun)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(REPO / "tests" / "memory_probe.py"), str(config), str(out)]
    done = subprocess.run(command, cwd=out, env=probe_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for seen in ranks:
        assert set(seen) == {"forward", "backward", "reduced", "step"}, seen.keys()
    return ranks


def measured(seen: dict[str, dict[str, int]], backend: str) -> dict[str, int]:
    return {
        "weights": seen[WEIGHTS_AT.get(backend, "step")]["weights"],
        "gradients": seen[GRADIENTS_AT.get(backend, "reduced")]["gradients"],
        "optimizer": seen["step"]["optimizer"],
    }


def mib(n: float) -> str:
    return f"{n / 2**20:.3f}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimate_matches_each_process_after_one_step(tiny_model, toy_data, tmp_path, backend) -> None:  # type: ignore[no-untyped-def]
    block, keys = BACKENDS[backend]
    if block["type"] == "deepspeed":
        pytest.importorskip("deepspeed", reason="needs the deepspeed extra: pip install 'trainer[deepspeed]'")
    rows = {"path": str(toy_data / "train.jsonl"), "type": "prompt_completion"}
    rows["completion_field"] = "generation"
    config = {
        "base_model": str(tiny_model),
        "datasets": [rows],
        "sequence_len": 48,
        "max_train_samples": 8,
        "micro_batch_size": 2,
        "max_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "training_curves": False,
        "output_dir": str(tmp_path / "out"),
        "distributed": {**block, "num_processes": 2},
        **keys,
    }
    path = write_yaml(tmp_path / "cfg.yml", config)
    est = estimate(load_config(str(path)))
    start = time.monotonic()
    ranks = run_probe(path, tmp_path / "probe")
    took = time.monotonic() - start

    per_rank = [measured(seen, backend) for seen in ranks]
    want = {part: getattr(est, part) for part in PARTS}
    lines = [f"{backend} ({took:.0f} s): estimate vs measured per process, MiB"]
    for part in PARTS:
        got = [m[part] for m in per_rank]
        ratios = " ".join(f"{g / want[part]:.3f}" for g in got)
        lines.append(f"  {part:9s} {mib(want[part])} vs {' '.join(mib(g) for g in got)} (x {ratios})")
    for r, seen in enumerate(ranks):
        extra = seen["forward"]["weights"] - seen["step"]["weights"]
        lines.append(
            f"  process {r}: gradients at the end of the backward {mib(seen['backward']['gradients'])}, "
            f"buffers {mib(seen['backward']['buffers'])}, gathered at the end of the forward "
            f"{mib(max(extra, 0))}, other {seen['step']['other']} B"
        )
    report = "\n".join(lines)
    print(report)

    for part in PARTS:
        got = [m[part] for m in per_rank]
        assert want[part] > 0, (part, report)
        assert max(got) == pytest.approx(want[part], rel=TOLERANCE), (part, report)
        assert all(g <= want[part] * (1 + TOLERANCE) for g in got), (part, report)
    total = sum(want.values())
    for m, seen in zip(per_rank, ranks, strict=True):
        assert sum(m.values()) == pytest.approx(total, rel=TOLERANCE), report
        assert seen["step"]["other"] < 0.01 * total, report  # nothing big left unclassified
