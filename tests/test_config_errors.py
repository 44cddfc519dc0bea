"""Config errors as a user sees them: `python -m trainer.cli.validate` / `train` on bad files.

Every bad config exits 2, prints no traceback, and names each problem as `FILE:LINE  path: message`
(or `override '...'  path: message`), sorted by line, all at once.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_command
from trainer.config.errors import ConfigErrors
from trainer.outputs.output_dir import RESOLVED_NAME, check_output_dir

REPO = Path(__file__).resolve().parent.parent


def cli(command: str, *args: object) -> subprocess.CompletedProcess[str]:
    return run_command(command, *args, cwd=REPO)


def errors_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines of a failed command (after checking how it failed)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    heads = [i for i, line in enumerate(lines) if re.fullmatch(r"\d+ config errors?:", line)]
    assert len(heads) == 1, result.stderr
    problems = lines[heads[0] + 1 :]
    assert all(line.startswith("  ") for line in problems), result.stderr
    count = len(problems)
    assert lines[heads[0]] == f"{count} config error{'s' if count != 1 else ''}:", result.stderr
    return [line[2:] for line in problems]


@pytest.fixture
def base(tiny_model: Path, toy_data: Path, tmp_path: Path) -> dict[str, Path]:
    return {"model": tiny_model, "data": toy_data / "train.jsonl", "out": tmp_path / "out"}


@pytest.fixture
def good_config(write_config, base: dict[str, Path]) -> Path:  # type: ignore[no-untyped-def]
    return write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completion
            completion_field: generation
        adapter: lora
        output_dir: {base["out"]}
        """,
        name="good.yml",
    )


def test_valid_config_prints_summary(good_config: Path, base: dict[str, Path]) -> None:
    result = cli("validate", good_config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"config {good_config}: OK" in out
    for where, name in [("adapter", "lora"), ("attention", "sdpa"), ("distributed", "none")]:
        assert any(line.split()[:3] == [where, name, "[trainer"] for line in out.splitlines()), out
    assert "prompt_completion [trainer " in out and "completion_field='generation'" in out
    assert "r=16" in out  # the lora defaults are filled in
    assert "micro 1 x accumulation 1 x processes 1 = 1 rows per step" in out
    assert f"output_dir  {base['out']}" in out


def test_many_errors_at_once_sorted_by_line(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completon
            completion_field: generation
        learning_rat: 1.0e-4
        micro_batch_size: two
        adapter:
          type: lora
          rr: 8
        attention: sdpaa
        output_dir: {base["out"]}
        """
    )
    assert errors_of(cli("validate", cfg)) == [
        f"{cfg}:4  datasets[0].type: unknown formatter 'prompt_completon' (did you mean "
        "'prompt_completion'?); known: alpaca, chat_template, completion, input_output, kto, preference, "
        "pretokenized, prompt, "
        "prompt_completion, sharegpt",
        f"{cfg}:6  learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)",
        f"{cfg}:7  micro_batch_size: input should be a valid integer, unable to parse string as an "
        "integer (got 'two')",
        f"{cfg}:10  adapter.rr: unknown key 'rr' (did you mean 'r'?)",
        f"{cfg}:11  attention.type: unknown attention 'sdpaa' (did you mean 'sdpa'?); "
        "known: eager, flash_attention_2, flash_attention_3, flex_attention, sdpa",
    ]


def test_unknown_adapter_and_missing_required_key(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completion
        adapter: lorra
        adapter_extra: 1
        """
    )
    assert errors_of(cli("validate", cfg)) == [
        f"{cfg}:1  output_dir: required key is missing",  # a missing key points at the file's start
        f"{cfg}:5  adapter.type: unknown adapter 'lorra' (did you mean 'lora'?); "
        "known: full, galore, lora, qlora",
        f"{cfg}:6  adapter_extra: unknown key 'adapter_extra' (did you mean 'adapter'?)",
    ]


def test_plugin_option_error_inline_block(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completion
            completion_feild: generation
        adapter: {{type: lora, rr: 8, dropout: 1.5}}
        distributed: {{type: ddp, num_processes: 2, node_rank: 1}}
        output_dir: {base["out"]}
        """
    )
    assert errors_of(cli("validate", cfg)) == [
        f"{cfg}:5  datasets[0].completion_feild: unknown key 'completion_feild' "
        "(did you mean 'completion_field'?)",
        f"{cfg}:6  adapter.dropout: input should be less than 1 (got 1.5)",
        f"{cfg}:6  adapter.rr: unknown key 'rr' (did you mean 'r'?)",
        f"{cfg}:7  distributed.node_rank: 1 must be below nnodes (1)",  # the plugin's own check
    ]


def test_override_errors(good_config: Path) -> None:
    result = cli("validate", good_config, "adapter.r=abc", "datasets[3].path=x", "nonsense", "a..b=1")
    assert errors_of(result) == [
        "override 'a..b=1'  <root>: cannot parse key 'a..b' (expected a.b or a[0].b)",
        "override 'adapter.r=abc'  adapter.r: input should be a valid integer, unable to parse "
        "string as an integer (got 'abc')",
        "override 'datasets[3].path=x'  datasets[3].path: index 3 is out of range (the list has 1 items)",
        "override 'nonsense'  <root>: an override must look like key.sub=value",
    ]


def test_override_errors_mix_with_file_errors(good_config: Path) -> None:
    """An override is validated like a file value; file lines come first, then overrides."""
    result = cli("validate", good_config, "adapter.rr=4", "learning_rate=-1", "micro_batch_size=[")
    problems = errors_of(result)
    assert problems[0] == "override 'adapter.rr=4'  adapter.rr: unknown key 'rr' (did you mean 'r'?)"
    assert (
        problems[1] == "override 'learning_rate=-1'  learning_rate: input should be greater than 0 (got -1)"
    )
    assert problems[2].startswith("override 'micro_batch_size=['  ")
    assert len(problems) == 3


def test_invalid_yaml_reports_its_line(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        output_dir: {base["out"]}
        adapter: {{type: lora, r: 8
        attention: sdpa
        """
    )
    (problem,) = errors_of(cli("validate", cfg))
    assert problem.startswith(f"{cfg}:4  <root>: invalid YAML: "), problem
    dup = write_config(f"base_model: {base['model']}\nseed: 1\nseed: 2\n", name="dup.yml")
    assert errors_of(cli("validate", dup)) == [f"{dup}:3  <root>: duplicate key 'seed'"]


def test_trainer_args_checked_against_sft_config(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completion
        output_dir: {base["out"]}
        trainer_args:
          dataloader_num_workers: 1
          learning_rate: 1e-3
          neftune_noise_alphaa: 5
          per_device_train_batch_size: 4
        """
    )
    assert errors_of(cli("validate", cfg)) == [
        f"{cfg}:8  trainer_args.learning_rate: set this with the top-level key 'learning_rate'",
        f"{cfg}:9  trainer_args.neftune_noise_alphaa: not a trl.SFTConfig field "
        "(did you mean 'neftune_noise_alpha'?)",
        f"{cfg}:10  trainer_args.per_device_train_batch_size: set this with the top-level key "
        "'micro_batch_size'",
    ]


def test_cross_key_rules_and_missing_file(write_config, base: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"].parent / "nope.jsonl"}
            type: prompt_completion
        warmup_ratio: 0.1
        warmup_steps: 10
        eval_strategy: steps
        eval_steps: 5
        bf16: true
        fp16: true
        output_dir: {base["out"]}
        """
    )
    assert errors_of(cli("validate", cfg)) == [
        f"{cfg}:3  datasets[0].path: dataset '{base['data'].parent / 'nope.jsonl'}' does not exist",
        f"{cfg}:6  warmup_steps: set warmup_ratio or warmup_steps, not both",
        f"{cfg}:7  eval_strategy: 'steps' needs held-out data: set val_set_size or test_datasets",
        f"{cfg}:10  fp16: set bf16 or fp16, not both",
    ]


@pytest.fixture
def best_model_config(write_config, base: dict[str, Path]) -> Path:  # type: ignore[no-untyped-def]
    return write_config(
        f"""
        base_model: {base["model"]}
        datasets:
          - path: {base["data"]}
            type: prompt_completion
        val_set_size: 0.1
        load_best_model_at_end: true
        eval_strategy: steps
        eval_steps: 10
        save_strategy: epoch
        output_dir: {base["out"]}
        """,
        name="best.yml",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "{cfg}:9  save_strategy: must equal eval_strategy ('steps') with load_best_model_at_end"),
        (
            ["save_strategy=steps", "save_steps=25"],
            "override 'save_steps=25'  save_steps: must be a multiple of eval_steps (10) with "
            "load_best_model_at_end",
        ),
        (
            ["save_strategy=steps", "save_steps=0.25", "eval_steps=0.1"],
            "override 'save_steps=0.25'  save_steps: must be a multiple of eval_steps (0.1) with "
            "load_best_model_at_end",
        ),
        (
            ["save_strategy=steps", "save_steps=50", "eval_steps=0.1"],
            "override 'save_steps=50'  save_steps: with load_best_model_at_end give save_steps and "
            "eval_steps both as step counts or both as ratios",
        ),
        (["save_strategy=steps", "save_steps=30"], None),
        (["save_strategy=steps", "save_steps=0.5", "eval_steps=0.1"], None),
    ],
)
def test_load_best_model_at_end_rules(
    best_model_config: Path, overrides: list[str], expected: str | None
) -> None:
    result = cli("validate", best_model_config, *overrides)
    if expected is None:
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout
    else:
        assert errors_of(result) == [expected.format(cfg=best_model_config)]


def test_train_refuses_non_empty_output_dir(good_config: Path, base: dict[str, Path]) -> None:
    out = base["out"]
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert errors_of(cli("train", good_config)) == [
        f"{good_config}:7  output_dir: '{out}' exists and is not empty; set overwrite_output_dir: true "
        "to replace it, or resume: auto to continue it"
    ]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_overwrite_output_dir_only_replaces_an_earlier_run(tmp_path: Path) -> None:
    """The rule `train` applies before writing anything (the accepted case is run through the CLI
    in tests/test_data.py, where the run then stops on a bad data row)."""
    out = tmp_path / "out"
    check_output_dir(str(out), overwrite=False, resume=None)  # missing: fine
    out.mkdir()
    check_output_dir(str(out), overwrite=False, resume=None)  # empty: fine
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigErrors, match="exists and is not empty"):
        check_output_dir(str(out), overwrite=False, resume=None)
    with pytest.raises(ConfigErrors, match=r"was not written by trainer \(no config.resolved.yml\)"):
        check_output_dir(str(out), overwrite=True, resume=None)
    check_output_dir(str(out), overwrite=False, resume="auto")  # resuming reads it, deletes nothing
    (out / RESOLVED_NAME).write_text("base_model: x\n", encoding="utf-8")
    check_output_dir(str(out), overwrite=True, resume=None)
    with pytest.raises(ConfigErrors, match="exists and is not empty"):
        check_output_dir(str(out), overwrite=False, resume=None)
