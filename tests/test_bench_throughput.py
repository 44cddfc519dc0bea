"""bench/throughput.py: the probe's accounting of fed batches (fast), the whole benchmark in a tiny
configuration (four runs, isolation check, ratios, targets, the same examples in every run) and the
GPU mode's code path on CPU (`--gpu-smoke`). The two end-to-end runs start 5-7 Python processes
each (TRL imports dominate): about a minute each on 2 CPU cores, hence `slow`."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "throughput.py"


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_throughput_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script(sys.executable, str(SCRIPT), *args)


def test_feed_stats_cut_the_same_examples_out_of_padded_and_packed_batches():
    torch = pytest.importorskip("torch")
    bench = load_bench()
    pad = 9
    padded = {
        "input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, pad]]),
        "labels": torch.tensor([[-100, -100, 6, 2], [-100, 7, 2, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    packed = {  # the same two examples in one row, then a padding block with its own positions
        "input_ids": torch.tensor([[1, 5, 6, 2, 1, 7, 2, pad]]),
        "labels": torch.tensor([[-100, -100, 6, 2, -100, 7, 2, -100]]),
        "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0]]),
    }
    a, b = bench.feed_stats([padded], pad), bench.feed_stats([packed], pad)
    assert (a["processed"], a["real"], a["trainable"], a["examples"]) == (8, 7, 4, 2)
    assert (b["processed"], b["real"], b["trainable"], b["examples"]) == (8, 7, 4, 2)
    assert a["example_set"] == b["example_set"]
    assert a["mask_disagrees"] == 0
    assert b["per_batch"] == [(7, 4**2 + 3**2)]
    other = {**packed, "labels": torch.tensor([[-100, 5, 6, 2, -100, 7, 2, -100]])}  # another loss mask
    assert bench.feed_stats([other], pad)["example_set"] != b["example_set"]


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_tiny_run_prints_four_runs_isolation_ratios_and_targets(tmp_path):
    result = tmp_path / "result.json"
    tiny = ["--examples", "24", "--seq-len", "96", "--median-len", "24", "--repeats", "1"]
    text = run_bench(*tiny, "--isolation-batches", "2", "--json", str(result)).stdout
    for label in "abcd":
        assert re.search(rf"^{label}-0 ", text, re.MULTILINE), text
    assert "as TRL's compute_loss calls the model" in text
    assert "as our SFTTrainer.compute_loss calls the model" in text
    for ratio in ("d/a", "d/b", "c/a"):
        assert f"  {ratio}: " in text
    assert len(re.findall(r"^  (PASS|FAIL)  ", text, re.MULTILINE)) == 3
    record = json.loads(result.read_text(encoding="utf-8"))
    assert len({(r["feed"]["trainable"], r["feed"]["example_set"]) for r in record["runs"]}) == 1
    isolation = record["isolation"]
    assert isolation["b"]["compute_loss"] < 1e-4 and isolation["d"]["compute_loss"] < 1e-4
    assert isolation["d"]["use_cache"] < 1e-4  # ours carries its mask: no call can lose it


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_gpu_mode_runs_its_code_path_on_cpu(tmp_path):
    bench = load_bench()
    result = tmp_path / "gpu.json"
    text = run_bench("--gpu-smoke", "--json", str(result)).stdout
    kernels = {k["kernel"]: k for k in json.loads(result.read_text(encoding="utf-8"))["kernels"]}
    assert set(kernels) == set(bench.KERNELS)
    assert kernels["sdpa"]["status"] == "ran" and kernels["sdpa"]["tokens_per_s"] > 0, kernels["sdpa"]
    assert all(k["status"] in ("ran", "skipped") for k in kernels.values()), kernels
    import torch

    if not torch.cuda.is_available():
        assert kernels["flex_attention"]["status"] == "skipped"
        assert "CUDA" in kernels["flex_attention"]["reason"]
        assert "MFU not computed" in text
