"""`python -m trainer.cli.preprocess` as a user runs it: the prepared directory and its report.json
(every drop reason counted), the printed report, `--show` / `--show-only`, reuse and invalidation
of the prepared dataset, config and data errors, and a `train` run that reuses what it wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_command

REPO = Path(__file__).resolve().parent.parent
BOS, EOS, IGNORE = 1, 2, -100
DROPPED = {"bad": 2, "empty": 1, "too long": 1, "filtered": 2, "duplicate": 1}
SUMMARY = "rows read 15, kept 8, dropped: 2 bad, 1 empty, 1 too long, 2 filtered, 1 duplicate"


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids, computed independently: one token per UTF-8 byte, id = byte + 3."""
    return [b + 3 for b in text.encode("utf-8")]


def qa(prompt: str, completion: str) -> str:
    return json.dumps({"prompt": prompt, "completion": completion})


# prompt_completion rows, one per line; sequence_len 40, min_length 8
QA_LINES = [
    qa("Q: sky? A: ", "blue"),  # 1  kept (17 tokens)
    "{not json",  # 2  bad
    qa("Q: long? A: ", "x" * 40),  # 3  too long (54 tokens)
    qa("Q: who? A: ", "As an AI language model"),  # 4  filtered by drop_regex (36 tokens: fits)
    qa("Q: sky? A: ", "blue"),  # 5  duplicate of line 1
    qa("a", "b"),  # 6  filtered: 4 tokens, under min_length
    qa("Q: grass? A: ", "green"),  # 7  kept
    qa("Q: sun? A: ", "yellow"),  # 8  kept
    qa("Q: snow? A: ", "white"),  # 9  kept
    qa("Q: coal? A: ", "black"),  # 10 kept
    json.dumps({"prompt": "Q: blood? A: "}),  # 11 bad: no completion
    qa("Q: sea? A: ", "deep blue"),  # 12 kept
]
# completion rows (field `text`)
TEXT_LINES = [
    json.dumps({"text": ""}),  # 1  empty
    json.dumps({"text": "plain text to learn"}),  # 2  kept
    json.dumps({"text": "more plain text"}),  # 3  kept
]
KEPT_QA = [
    ("Q: sky? A: ", "blue"),
    ("Q: grass? A: ", "green"),
    ("Q: sun? A: ", "yellow"),
    ("Q: snow? A: ", "white"),
    ("Q: coal? A: ", "black"),
    ("Q: sea? A: ", "deep blue"),
]
KEPT_TEXT = ["plain text to learn", "more plain text"]


def expected_examples() -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every kept row: answers + EOS trained, prompts and BOS masked."""
    out = [([BOS, *ids(p), *ids(c), EOS], [IGNORE] * (1 + len(ids(p))) + [*ids(c), EOS]) for p, c in KEPT_QA]
    out += [([BOS, *ids(t), EOS], [IGNORE, *ids(t), EOS]) for t in KEPT_TEXT]
    return out


@dataclass
class Workspace:
    root: Path
    qa: Path
    text: Path
    cfg: Path
    prepared: Path
    out: Path

    def prepared_dirs(self) -> list[str]:
        return sorted(n for n in os.listdir(self.prepared) if ".tmp-" not in n)


def make_workspace(root: Path, tiny_model: Path, extra: str = "") -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(
        root, root / "qa.jsonl", root / "text.jsonl", root / "cfg.yml", root / "prepared", root / "out"
    )
    ws.qa.write_text("\n".join(QA_LINES) + "\n", encoding="utf-8")
    ws.text.write_text("\n".join(TEXT_LINES) + "\n", encoding="utf-8")
    ws.cfg.write_text(
        f"base_model: {tiny_model}\n"
        "datasets:\n"
        f"  - path: {ws.qa}\n"
        "    type: prompt_completion\n"
        f"  - path: {ws.text}\n"
        "    type: completion\n"
        "on_bad_rows: skip\n"
        "sequence_len: 40\n"
        "too_long: drop\n"
        "filters:\n"
        "  dedupe: true\n"
        '  drop_regex: ["As an AI language model"]\n'
        "  min_length: 8\n"
        "val_set_size: 2\n"
        "seed: 7\n"
        f"dataset_prepared_path: {ws.prepared}\n"
        f"output_dir: {ws.out}\n"
        "micro_batch_size: 4\n"
        "max_steps: 2\n"
        'save_strategy: "no"\n' + extra,
        encoding="utf-8",
    )
    return ws


def preprocess(*args: Any) -> subprocess.CompletedProcess[str]:
    return run_command("preprocess", *args, cwd=REPO)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@dataclass
class FirstRun:
    ws: Workspace
    result: subprocess.CompletedProcess[str]
    cache_dir: Path


@pytest.fixture(scope="module")
def first_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """One `preprocess cfg.yml --show 2` run, shared by the tests that only read what it wrote."""
    ws = make_workspace(tmp_path_factory.mktemp("preprocess") / "ws", tiny_model)
    result = ok(preprocess(ws.cfg, "--show", "2"))
    (name,) = ws.prepared_dirs()
    return FirstRun(ws, result, ws.prepared / name)


def load(path: Path) -> Any:
    import datasets

    return datasets.load_from_disk(str(path))


def read_report(cache_dir: Path) -> dict[str, Any]:
    return json.loads((cache_dir / "report.json").read_text(encoding="utf-8"))


# ---- what it writes ---------------------------------------------------------------------------


def test_writes_train_eval_and_report(first_run: FirstRun) -> None:
    cache_dir = first_run.cache_dir
    assert re.fullmatch(r"prepared-[0-9a-f]{16}", cache_dir.name)
    assert os.listdir(first_run.ws.prepared) == [cache_dir.name]  # no temporary directory left
    assert sorted(os.listdir(cache_dir)) == ["eval", "report.json", "train"]
    train, evals = load(cache_dir / "train"), load(cache_dir / "eval")
    assert train.column_names == ["input_ids", "labels"]
    assert evals.column_names == ["input_ids", "labels"]
    assert (len(train), len(evals)) == (6, 2)  # val_set_size: 2 of the 8 kept rows
    got = [(row["input_ids"], row["labels"]) for ds in (train, evals) for row in ds]
    assert sorted(got) == sorted(expected_examples())
    # one row, exactly: BOS and prompt masked, answer and EOS trained
    prompt, answer = "Q: sky? A: ", "blue"
    (row,) = [r for r in got if r[0] == [BOS, *ids(prompt), *ids(answer), EOS]]
    assert row[1] == [IGNORE] * 12 + [*ids("blue"), EOS]


def test_report_json_counts_every_drop_reason(first_run: FirstRun) -> None:
    report = read_report(first_run.cache_dir)
    assert report["rows_read"] == len(QA_LINES) + len(TEXT_LINES) == 15
    assert report["rows_kept"] == 8
    assert report["dropped"] == DROPPED
    assert report["fingerprint"] == first_run.cache_dir.name
    train = load(first_run.cache_dir / "train")
    lengths = [len(x) for x in train["input_ids"]]
    assert report["total_tokens"] == sum(lengths)
    trainable = sum(label != IGNORE for labels in train["labels"] for label in labels)
    assert report["trainable_tokens"] == trainable
    ordered, n = sorted(lengths), len(lengths)
    assert report["length_p50"] == ordered[n // 2]
    assert report["length_p95"] == ordered[min(n - 1, int(n * 0.95))]
    assert report["length_max"] == ordered[-1] == max(lengths)
    by_path = {d["path"]: (d["rows_read"], d["rows_kept"]) for d in report["datasets"]}
    assert by_path == {str(first_run.ws.qa): (12, 6), str(first_run.ws.text): (3, 2)}


def test_report_json_counts_the_saved_rows(first_run: FirstRun) -> None:
    report = read_report(first_run.cache_dir)
    assert report["train_rows"] == len(load(first_run.cache_dir / "train")) == 6
    assert report["eval_rows"] == len(load(first_run.cache_dir / "eval")) == 2


def test_printed_report_names_each_drop_reason(first_run: FirstRun) -> None:
    stdout, cache_dir = first_run.result.stdout, first_run.cache_dir
    lines = stdout.splitlines()
    assert SUMMARY in lines
    assert "examples: train 6, eval 2" in lines
    summary = next(line for line in lines if line.startswith("rows read "))
    for reason in DROPPED:
        assert re.search(rf"\d+ {reason}\b", summary), reason
    assert f"  dropped: {first_run.ws.qa}:2  bad: invalid JSON" in stdout
    assert f"prepared dataset written to {cache_dir}" in lines
    assert lines[-1] == f"report: {cache_dir / 'report.json'}"


# ---- --show ------------------------------------------------------------------------------------


def test_show_marks_the_trained_text(first_run: FirstRun) -> None:
    qa_path = first_run.ws.qa
    lines = first_run.result.stdout.splitlines()
    shown = lines[: lines.index("")]  # the examples, then a blank line, then the report
    assert shown[0] == "first 2 training rows, trained tokens between [[ and ]]:"
    assert shown[1] == f"--- {qa_path}:1: 17 tokens, 5 trained"
    assert shown[2] == "<s>Q: sky? A: [[blue</s>]]"  # prompt outside, answer and EOS inside
    assert shown[3] == f"--- {qa_path}:2"
    assert shown[4].startswith("dropped (bad): invalid JSON")
    assert len(shown) == 5
    assert "\x1b[" not in first_run.result.stdout  # not a terminal: no colors


def test_show_only_writes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_model)
    result = ok(preprocess(ws.cfg, "--show-only", "--show", "20"))
    assert not ws.prepared.exists()
    assert "rows read" not in result.stdout and "report:" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "first 20 training rows, trained tokens between [[ and ]]:"
    headers = [line for line in lines if line.startswith("--- ")]
    assert len(headers) == 15  # every row of both files, in file order (fewer than 20)
    assert headers[0] == f"--- {ws.qa}:1: 17 tokens, 5 trained"
    assert headers[-1].startswith(f"--- {ws.text}:3: ")
    text = result.stdout
    assert "<s>Q: grass? A: [[green</s>]]" in text
    assert "<s>[[plain text to learn</s>]]" in text  # completion: everything but BOS is trained
    assert f"--- {ws.text}:1\ndropped (empty): no text" in text
    assert f"--- {ws.qa}:3\ndropped (too long): 54 tokens, over sequence_len 40" in text
    assert f"--- {ws.qa}:4\ndropped (filtered): matches drop_regex 'As an AI language model'" in text
    assert f"--- {ws.qa}:6\ndropped (filtered): 4 tokens, under min_length" in text
    assert f"--- {ws.qa}:11\ndropped (bad): missing field 'completion'" in text
    # duplicates are found over the whole data set, not in the preview: line 5 is shown as a row
    assert f"--- {ws.qa}:5: 17 tokens, 5 trained\n<s>Q: sky? A: [[blue</s>]]" in text


# ---- reuse and invalidation -------------------------------------------------------------------


def test_reuse_leftover_and_changed_data(tiny_model: Path, tmp_path: Path) -> None:
    import datasets

    ws = make_workspace(tmp_path / "ws", tiny_model)
    first = ok(preprocess(ws.cfg))
    (name,) = ws.prepared_dirs()
    cache_dir = ws.prepared / name
    assert f"prepared dataset written to {cache_dir}" in first.stdout

    again = ok(preprocess(ws.cfg))
    assert f"reused the prepared dataset {cache_dir}" in again.stdout
    assert SUMMARY in again.stdout.splitlines()
    assert ws.prepared_dirs() == [name]

    # an interrupted writer left a complete-looking directory under its temporary name: never used
    shutil.rmtree(cache_dir)
    leftover = ws.prepared / f"{name}.tmp-123"
    fake = {"input_ids": [[BOS, EOS]], "labels": [[IGNORE, EOS]]}
    datasets.Dataset.from_dict(fake).save_to_disk(str(leftover / "train"))
    (leftover / "report.json").write_text(json.dumps({"rows_read": 1, "rows_kept": 1}), encoding="utf-8")
    third = ok(preprocess(ws.cfg))
    assert "reused" not in third.stdout
    assert f"prepared dataset written to {cache_dir}" in third.stdout
    assert read_report(cache_dir)["rows_read"] == 15 and len(load(cache_dir / "train")) == 6
    assert json.loads((leftover / "report.json").read_text(encoding="utf-8"))["rows_read"] == 1  # untouched

    # changing a data file makes a new directory; the old one stays as it was
    with open(ws.qa, "a", encoding="utf-8") as handle:
        handle.write(qa("Q: leaf? A: ", "green too") + "\n")
    fourth = ok(preprocess(ws.cfg))
    names = ws.prepared_dirs()
    assert len(names) == 2 and name in names
    new_dir = ws.prepared / next(n for n in names if n != name)
    assert re.fullmatch(r"prepared-[0-9a-f]{16}", new_dir.name)
    assert f"prepared dataset written to {new_dir}" in fourth.stdout
    assert read_report(new_dir)["rows_read"] == 16 and read_report(cache_dir)["rows_read"] == 15


# ---- errors ------------------------------------------------------------------------------------


def test_config_error_exits_2_with_file_and_line(tiny_model: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_model, extra="learning_rat: 0.001\n")
    line = ws.cfg.read_text(encoding="utf-8").splitlines().index("learning_rat: 0.001") + 1
    result = preprocess(ws.cfg)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[0] == "1 config error:"
    assert (
        f"  {ws.cfg}:{line}  learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)"
        in result.stderr.splitlines()
    )
    assert not ws.prepared.exists()


def test_bad_row_with_on_bad_rows_fail_exits_2(tiny_model: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", tiny_model)
    result = preprocess(ws.cfg, "on_bad_rows=fail")  # an override, as a user would try it
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("data error:")]
    assert error.startswith(f"data error: {ws.qa}:2  invalid JSON")
    assert error.endswith("(set on_bad_rows: skip to skip such rows)")
    assert not ws.prepared.exists() or ws.prepared_dirs() == []


# ---- train reuses it --------------------------------------------------------------------------


def test_train_reuses_the_prepared_dataset(first_run: FirstRun) -> None:
    result = run_command("train", first_run.ws.cfg, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in result.stderr, result.stderr
    reused = f"data: reused the prepared dataset {first_run.cache_dir} (nothing that changes it changed)"
    assert reused in result.stdout.splitlines()
    assert "data: rows read 15, kept 8" in result.stdout
    out = first_run.ws.out
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "config.resolved.yml").is_file()
    assert not any(name.startswith("checkpoint") for name in os.listdir(out))  # save_strategy: "no"
