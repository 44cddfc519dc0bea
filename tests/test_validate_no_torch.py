"""`python -m trainer.cli.validate` checks a config without importing torch, transformers or trl —
even with every kind of plugin chosen (each chosen plugin is imported) — except when the config has
`trainer_args`, which are checked against trl.SFTConfig (the documented exception), or a machine
check needs torch's answer (fp16, tf32; the GPU count for several processes where a GPU driver is
present, hidden here with CUDA_VISIBLE_DEVICES="" so that the test means the same on any machine).
Kernel plugins are not chosen here: `liger` looks for a CUDA GPU with torch once its package is
installed; that its refusal without the package stays torch-free is checked in test_kernels.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys

    HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
    report = []
    for config in sys.argv[1:]:
        sys.argv = ["trainer.cli.validate", config]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_module("trainer.cli.validate", run_name="__main__", alter_sys=True)
            except SystemExit as stop:
                code = stop.code
        report.append({
            "code": code,
            "stdout": out.getvalue(),
            "heavy": sorted(m for m in HEAVY if m in sys.modules),
            "plugins": sorted(m for m in sys.modules if m.startswith("plugins.")),
        })
    print(json.dumps(report))
    """
)


def test_validate_imports_no_torch_unless_trainer_args(
    write_config, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    common = f"""
        base_model: {tiny_model}
        datasets:
          - path: {toy_data / "train.jsonl"}
            type: prompt_completion
            completion_field: generation
          - path: {toy_data / "eval.jsonl"}
            type: completion
            field: generation
        val_set_size: 0.1
        adapter: {{type: lora, r: 4}}
        attention: eager
        distributed: {{type: ddp, num_processes: 2}}
        callbacks:
          - type: generation_eval
            path: {toy_data / "eval.jsonl"}
            answer_field: generation
        output_dir: {tmp_path / "out"}
        """
    plain = write_config(common, name="plain.yml")
    with_args = write_config(common + "trainer_args: {dataloader_num_workers: 1}\n", name="args.yml")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(plain), str(with_args)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout.splitlines()[-1])

    assert first["code"] == 0, first["stdout"]
    assert f"config {plain}: OK" in first["stdout"]
    assert first["heavy"] == []  # no torch, transformers, trl, peft, datasets or accelerate
    # every chosen plugin was imported (and validated its options) — still without torch
    for module in (
        "plugins.formatters.prompt_completion",
        "plugins.formatters.completion",
        "plugins.adapters.lora",
        "plugins.attention.kernels",
        "plugins.distributed.ddp",
        "plugins.callbacks.generation_eval",
    ):
        assert module in first["plugins"], first["plugins"]
    assert "plugins.formatters.alpaca" not in first["plugins"]  # not chosen, not imported

    assert second["code"] == 0, second["stdout"]
    assert "trl" in second["heavy"]  # trainer_args are checked against trl.SFTConfig
