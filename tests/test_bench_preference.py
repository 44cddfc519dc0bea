"""bench/preference.py --smoke: both comparisons (ours against a plain TRL DPOTrainer script on the
same batches; ours padded, padding-free and packed) on tiny sets, JSON written. Five training
processes one after another, TRL's imports dominating: 1.5-3 minutes on 2 shared CPU cores, hence `slow`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "preference.py"


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_smoke_run_compares_ours_with_trl_on_the_same_batches_and_packed_with_padded(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    result = tmp_path / "out.json"
    text = run_script(sys.executable, str(SCRIPT), "--smoke", "--json", str(result)).stdout
    record = json.loads(result.read_text(encoding="utf-8"))
    runs = {(r["part"], r["side"]): r for r in record["runs"]}
    assert set(runs) == {
        ("same", "ours"), ("same", "trl"),
        ("packing", "padded"), ("packing", "padding_free"), ("packing", "packed"),
    }  # fmt: skip
    for run in runs.values():
        assert run["train_runtime"] > 0 and run["loop_cpu"] > 0 and run["tokens_per_s"] > 0, run
        assert run["tokens"] > 0 and run["pairs"] > 0 and run["steps"] > 0, run

    # part 1: the same work on both sides (the script stops otherwise; checked here again)
    ours, trl = runs[("same", "ours")], runs[("same", "trl")]
    assert ours["tokens"] == trl["tokens"] == record["data"]["same"]["tokens"]
    assert ours["logged_tokens"] == trl["logged_tokens"] == ours["tokens"]
    assert ours["digest"] == trl["digest"] and ours["slots"] == trl["slots"]
    assert ours["train_loss"] == pytest.approx(trl["train_loss"], abs=1e-4)
    same = record["summary"]["same"]
    assert same["ratio"]["tokens_per_s"] > 0 and same["status"] in ("PASS", "FAIL")

    # part 2: every run trained on the whole set once; padding-free ran the padded run's batches
    total = record["data"]["packing"]["tokens"]
    assert {runs[("packing", v)]["tokens"] for v in ("padded", "padding_free", "packed")} == {total}
    assert runs[("packing", "padding_free")]["digest"] == runs[("packing", "padded")]["digest"]
    assert runs[("packing", "padded")]["computed"] == runs[("packing", "padded")]["slots"]
    assert runs[("packing", "packed")]["computed"] == total
    packing = record["summary"]["packing"]
    for variant in ("padding_free", "packed"):
        assert packing["ratio"][variant]["tokens_per_s"] > 0
        assert packing["ratio"][variant]["pairs_per_s"] > 0
    assert record["packed_micro_batch"]["groups_per_micro_batch"] >= 1

    assert {"torch", "transformers", "trl"} <= set(record["versions"])
    assert record["load"]["start"] >= 0 and record["load"]["end"] >= 0
    assert "ours / TRL, median real tokens/s:" in text
    assert "target packed (or padding-free) >= 1.5 x padded:" in text
