"""bench/peers.py: ours against plain TRL in a tiny configuration (`--skip-axolotl`: no Axolotl
venv needed). One round is seven Python processes (validate, preprocess, two trainings per side;
TRL imports dominate): a minute or two on 2 CPU cores, hence `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "peers.py"


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script(sys.executable, str(SCRIPT), *args)


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_tiny_run_against_trl_records_runtimes_tokens_and_the_typo_verdict(tmp_path):
    result = tmp_path / "out.json"
    text = run_bench("--skip-axolotl", "--rows", "40", "--rounds", "1", "--json", str(result)).stdout
    record = json.loads(result.read_text(encoding="utf-8"))
    runs = {(r["measure"], r["side"]): r for r in record["runs"]}
    for measure in ("train_unpacked", "train_packed"):
        for side in ("ours", "trl"):
            run = runs[(measure, side)]
            assert run["train_runtime"] > 0, run
            assert run["real_tokens"] > 0, run
            assert run["train_loss"] > 0, run
    # packed, 40 rows fit in one step: both sides logged the whole epoch's real tokens
    assert runs[("train_packed", "ours")]["real_tokens"] == record["data"]["tokens"]
    assert runs[("train_packed", "trl")]["real_tokens"] == record["data"]["tokens"]
    typo = runs[("validate", "ours")]
    assert (typo["exit"], typo["named"], typo["verdict"]) == (2, True, "exit 2, typo named")
    assert runs[("preprocess", "ours")]["wall"] > 0
    assert ("validate", "axolotl") not in runs and ("train_packed", "axolotl") not in runs
    ratios = record["summary"]["ratios"]
    assert ratios["train_runtime unpacked, TRL / ours"] > 0
    assert ratios["train_runtime packed, Axolotl / ours"] is None
    statuses = [t["status"] for t in record["summary"]["targets"]]
    assert statuses[:2] == ["skipped", "skipped"] and set(statuses[2:]) <= {"PASS", "FAIL"}
    assert "train_runtime packed, TRL packing / ours = " in text
    assert "1-minute load average:" in text
