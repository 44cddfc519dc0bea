"""bench/gpu.sh --smoke: every case of the GPU suite (bench/gpu_suite.py) on CPU with a tiny Llama in
fp32, the GPU-only ones (flash_attention_2, flex_attention's backward, Liger) skipped with validate's
reason, and the JSON and markdown written. Five training processes (all at once, the smoke run's
default) and ten validations, TRL's imports dominating: about 50 s on 2 CPU cores, hence `slow`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_script

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu.sh"
CASES = (
    "full-sdpa-packed", "full-sdpa-unpacked", "full-sdpa-padded", "full-flash2-packed",
    "full-flash2-unpacked", "full-flex-packed", "full-flex-unpacked", "lora-sdpa-packed",
    "qlora-sdpa-packed", "lora-sdpa-packed-liger",
)  # fmt: skip
MUST_RUN = ("full-sdpa-packed", "full-sdpa-unpacked", "full-sdpa-padded", "lora-sdpa-packed")


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_smoke_run_reports_every_case_with_numbers_or_a_reason(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("trl")
    out = tmp_path / "out"
    run_script("bash", str(SCRIPT), "--smoke", str(out), cwd=tmp_path)

    record = json.loads((out / "gpu-suite.json").read_text(encoding="utf-8"))
    assert record["smoke"] is True and record["device"] == "cpu" and record["date"]
    assert {"torch", "transformers", "trl"} <= set(record["versions"])
    cases = {c["case"]: c for c in record["cases"]}
    assert tuple(cases) == CASES
    for case in cases.values():
        if case["status"] == "ran":
            assert case["tokens_per_s"] > 0 and case["tokens"] > 0, case
            assert case["estimate_bytes"] > 0, case  # parsed from validate's memory estimate
        else:
            assert case["status"] == "skipped" and case["reason"], case
    for name in MUST_RUN:
        assert cases[name]["status"] == "ran", cases[name]
    assert cases["full-sdpa-unpacked"]["efficiency"] == 1.0  # padding-free: the default, no pad tokens
    assert cases["full-sdpa-padded"]["efficiency"] < 1.0  # padding_free: false pads each micro-batch
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert cases["qlora-sdpa-packed"]["status"] == "ran", cases["qlora-sdpa-packed"]
    for name in CASES:  # the smoke run hides any GPU: these need one (and flash-attn, liger-kernel)
        if "flash" in name or "flex" in name or "liger" in name:
            assert cases[name]["status"] == "skipped" and "validate:" in cases[name]["reason"]
    assert all(t["status"] == "SKIPPED" for t in record["targets"]), record["targets"]
    assert any(t["target"].startswith("QLoRA tokens/s") for t in record["targets"])

    table = (out / "gpu-suite.md").read_text(encoding="utf-8")
    for name in CASES:
        assert f"| {name} |" in table
    assert "## Targets" in table and "## Liger kernels" in table
    assert (out / "gpu-suite-console.log").read_text(encoding="utf-8").count("/10 ") == len(CASES)
    assert "lora-sdpa-packed" in (out / "gpu-suite-logs.txt").read_text(encoding="utf-8")
