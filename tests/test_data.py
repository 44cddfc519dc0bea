"""Data: label masking token by token with the tiny byte-level tokenizer, TRL's collator on our
labels, readers for every local format with file:line errors, bad-row policy, truncation, the
deterministic val split and the prepared-dataset cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_command
from trainer.api.resolved import Resolved
from trainer.data.encode import IGNORE, SegmentEncoder, fit
from trainer.data.pipeline import Prepared, build_datasets, fingerprint
from trainer.data.readers import DataError
from trainer.outputs.output_dir import RESOLVED_NAME
from trainer.resolve.validate import load_config

REPO = Path(__file__).resolve().parent.parent
BOS, EOS = 1, 2

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids, computed independently: one token per UTF-8 byte, id = byte + 3."""
    return [b + 3 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token) == (BOS, EOS, None)
    assert tok("héllo", add_special_tokens=False).input_ids == ids("héllo")
    return tok


@pytest.fixture(scope="module")
def eos_pad_tokenizer(tiny_model: Path) -> Any:
    """As the trainer loads it: no pad token of its own, so EOS doubles as pad."""
    from transformers import AutoTokenizer

    from trainer.config.schema import TrainConfig
    from trainer.runtime.build import load_tokenizer

    tok = load_tokenizer(
        TrainConfig(
            base_model=str(tiny_model), datasets=[{"path": "x", "type": "completion"}], output_dir="o"
        )
    )
    assert tok.pad_token_id == tok.eos_token_id == EOS
    assert AutoTokenizer.from_pretrained(str(tiny_model)).pad_token is None  # nothing saved back
    return tok


def formatter(kind: str, **options: Any) -> Any:
    from plugins.formatters.alpaca import Alpaca
    from plugins.formatters.completion import Completion
    from plugins.formatters.prompt_completion import PromptCompletion

    cls = {"prompt_completion": PromptCompletion, "alpaca": Alpaca, "completion": Completion}[kind]
    return cls(cls.Options(**options))


def encode(tok: Any, fmt: Any, row: dict[str, Any], sequence_len: int = 1024) -> Any:
    return SegmentEncoder(tok, sequence_len).encode(fmt, fmt.format(row))


# ---- masking ---------------------------------------------------------------------------------


def test_prompt_completion_custom_fields(tokenizer: Any) -> None:
    fmt = formatter("prompt_completion", prompt_field="question", completion_field="generation")
    enc = encode(tokenizer, fmt, {"question": "Reverse: abc\nA: ", "generation": "cba", "other": 1})
    prompt, answer = ids("Reverse: abc\nA: "), ids("cba")
    assert enc.input_ids == [BOS, *prompt, *answer, EOS]
    assert enc.labels == [IGNORE] * (1 + len(prompt)) + [*answer, EOS]
    # the system prompt is part of the masked prompt; train_on_prompt trains it too
    fmt = formatter("prompt_completion", completion_field="generation", system_prompt="Be terse.\n")
    enc = encode(tokenizer, fmt, {"prompt": "Q", "generation": "A"})
    assert enc.input_ids == [BOS, *ids("Be terse.\nQ"), *ids("A"), EOS]
    assert enc.labels == [IGNORE] * (1 + len(ids("Be terse.\nQ"))) + [*ids("A"), EOS]
    fmt = formatter("prompt_completion", train_on_prompt=True)
    enc = encode(tokenizer, fmt, {"prompt": "Q", "completion": "A"})
    assert enc.labels == [IGNORE, *ids("Q"), *ids("A"), EOS]  # BOS is never a target


@pytest.mark.parametrize(
    ("row", "prompt"),
    [
        (
            {"instruction": "Add 2 and 3.", "input": "Use digits.", "output": "5"},
            ALPACA_WITH_INPUT.format(instruction="Add 2 and 3.", input="Use digits."),
        ),
        ({"instruction": "Say hi.", "output": "hi"}, ALPACA_NO_INPUT.format(instruction="Say hi.")),
        (
            {"instruction": "Say hi.", "input": "  ", "output": "hi"},
            ALPACA_NO_INPUT.format(instruction="Say hi."),
        ),
    ],
)
def test_alpaca_masks_the_template(tokenizer: Any, row: dict[str, str], prompt: str) -> None:
    enc = encode(tokenizer, formatter("alpaca"), row)
    assert enc.input_ids == [BOS, *ids(prompt), *ids(row["output"]), EOS]
    assert enc.labels == [IGNORE] * (1 + len(ids(prompt))) + [*ids(row["output"]), EOS]
    assert tokenizer.decode(enc.input_ids[1 : 1 + len(ids(prompt))]) == prompt


def test_completion_trains_every_token(tokenizer: Any) -> None:
    enc = encode(tokenizer, formatter("completion", field="body"), {"body": "plain text ü"})
    assert enc.input_ids == [BOS, *ids("plain text ü"), EOS]
    assert enc.labels == [IGNORE, *ids("plain text ü"), EOS]


def test_eos_as_pad_stays_trained_through_trl_collator(tokenizer: Any, eos_pad_tokenizer: Any) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    fmt = formatter("prompt_completion", completion_field="generation")
    rows = [{"prompt": "ab", "generation": "ba"}, {"prompt": "abcd", "generation": "dcba"}]
    encoded = [encode(eos_pad_tokenizer, fmt, row) for row in rows]
    # pad == eos changes nothing in the encoding
    assert [e.input_ids for e in encoded] == [encode(tokenizer, fmt, row).input_ids for row in rows]
    assert [e.labels for e in encoded] == [encode(tokenizer, fmt, row).labels for row in rows]

    collator = DataCollatorForLanguageModeling(pad_token_id=eos_pad_tokenizer.eos_token_id)
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    short, width = len(encoded[0].input_ids), len(encoded[1].input_ids)
    assert batch["input_ids"].shape == (2, width)
    pad = width - short
    assert pad == 4
    assert batch["input_ids"][0].tolist() == [*encoded[0].input_ids, *[EOS] * pad]  # padded with EOS
    labels = batch["labels"].tolist()
    assert labels[0] == [*encoded[0].labels, *[IGNORE] * pad]  # padding ignored ...
    assert labels[0][short - 1] == EOS  # ... the real EOS still trained
    assert labels[1] == encoded[1].labels and labels[1][-1] == EOS
    assert batch["attention_mask"].tolist() == [[1] * short + [0] * pad, [1] * width]


def test_length_policy(tokenizer: Any) -> None:
    fmt = formatter("prompt_completion", completion_field="generation")
    full = encode(tokenizer, fmt, {"prompt": "abc", "generation": "0123456789"})
    assert len(full.input_ids) == 15  # BOS + 3 + 10 + EOS
    (cut,), what = fit(full, 8, split=False, too_long="truncate")
    assert what == "truncated"
    assert cut.input_ids == [BOS, *ids("abc"), *ids("0123")]
    assert cut.labels == [IGNORE] * 4 + ids("0123")
    assert fit(full, 8, split=False, too_long="drop") == ([], "too long")
    assert fit(full, 15, split=False, too_long="drop") == ([full], "")  # fits exactly
    chunks, what = fit(full, 6, split=True, too_long="drop")
    assert what == "chunked" and [len(c.input_ids) for c in chunks] == [6, 6, 3]
    assert [t for c in chunks for t in c.input_ids] == full.input_ids
    assert [t for c in chunks for t in c.labels] == full.labels


# ---- reading files through a resolved config -------------------------------------------------


ROWS = [{"prompt": f"word {w}\n", "generation": w[::-1]} for w in ("abc", "hello", "xyz", "trainer", "ok")]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    elif suffix == ".csv":
        import csv

        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def resolve(write_config, tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a config over the given data files (+ extra YAML lines) and load it."""

    def make(
        files: list[Path], extra: str = "", formatter_options: str = "completion_field: generation"
    ) -> Resolved:
        datasets = "".join(
            f"  - path: {file}\n    type: prompt_completion\n    {formatter_options}\n" for file in files
        )
        text = f"base_model: {tiny_model}\ndatasets:\n{datasets}output_dir: {tmp_path / 'out'}\n{extra}"
        if "shuffle:" not in extra:
            text += "shuffle: false\n"  # keep file order, to compare rows
        return load_config(str(write_config(text)))

    return make


def prepare(resolved: Resolved, tokenizer: Any) -> Prepared:
    return build_datasets(resolved, tokenizer)


def dropped(prepared: Prepared) -> dict[str, int]:
    return {why: n for why, n in prepared.report.dropped.items() if n}


def test_every_local_format_reads_the_same_rows(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [write_rows(tmp_path / f"rows.{ext}", ROWS) for ext in ("jsonl", "json", "csv", "parquet")]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    prepared = prepare(resolve([*files, wrapped]), tokenizer)
    report = prepared.report
    expected = [[BOS, *ids(r["prompt"]), *ids(r["generation"]), EOS] for r in ROWS]
    assert prepared.train["input_ids"] == expected * 5
    assert (report.rows_read, report.rows_kept, dropped(prepared), report.truncated) == (25, 25, {}, 0)
    assert report.total_tokens == 5 * sum(map(len, expected))
    assert report.trainable_tokens == 5 * sum(len(ids(r["generation"])) + 1 for r in ROWS)


@pytest.mark.parametrize(
    ("name", "content", "where", "message"),
    [
        (
            "bad.jsonl",
            '{"prompt": "a", "generation": "b"}\n\n{"prompt": "c", "generation": \n',
            "bad.jsonl:3",
            "invalid JSON",
        ),
        (
            "missing.jsonl",
            '{"prompt": "a", "generation": "b"}\n{"prompt": "c"}\n',
            "missing.jsonl:2",
            "missing field 'generation'",
        ),
        (
            "list.jsonl",
            '{"prompt": "a", "generation": "b"}\n[1, 2]\n',
            "list.jsonl:2",
            "a row must be an object",
        ),
        (
            "typed.jsonl",
            '{"prompt": "a", "generation": "b"}\n{"prompt": "c", "generation": 5}\n',
            "typed.jsonl:2",
            "field 'generation' must be a string, got int",
        ),
        ("missing.csv", "prompt,generation\na,b\nc\n", "missing.csv:3", "missing field 'generation'"),
        (
            "missing.json",
            '[{"prompt": "a", "generation": "b"}, {"prompt": "c"}]',
            "missing.json row 2",
            "missing field 'generation'",
        ),
        ("broken.json", '[{"prompt": "a",\n "generation": }]', "broken.json:2", "invalid JSON"),
    ],
)
def test_bad_rows_name_file_line_and_field(  # type: ignore[no-untyped-def]
    resolve, tokenizer: Any, tmp_path: Path, name: str, content: str, where: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == str(tmp_path / where)
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{tmp_path / where}  ")


def test_bad_row_in_parquet_names_the_row(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_rows(tmp_path / "rows.parquet", [*ROWS[:2], {"prompt": "p", "generation": None}])
    with pytest.raises(DataError) as caught:
        prepare(resolve([path]), tokenizer)
    assert caught.value.where == f"{path} row 3"
    assert caught.value.message.startswith("missing field 'generation'")


def test_on_bad_rows_skip_counts(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r) for r in ROWS[:3]] + ["{not json", '{"prompt": "x"}', json.dumps(ROWS[3])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mixed.jsonl:4  invalid JSON.*on_bad_rows: skip"):
        prepare(resolve([path]), tokenizer)
    prepared = prepare(resolve([path], "on_bad_rows: skip\n"), tokenizer)
    report = prepared.report
    assert dropped(prepared) == {"bad": 2}
    assert (report.rows_read, report.rows_kept) == (6, 4)
    assert len(prepared.train) == 4
    assert report.first_bad_rows[0].startswith(f"{path}:4  bad: invalid JSON")
    assert report.first_bad_rows[1] == f"{path}:5  bad: missing field 'generation'"
    assert any("dropped: 2 bad" in line for line in report.lines())


def test_too_long_rows_are_dropped_or_truncated(resolve, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_rows(
        tmp_path / "long.jsonl",
        [
            {"prompt": "ab", "generation": "x" * 20},  # truncated, keeps trainable tokens
            {"prompt": "ab", "generation": "xy"},  # fits
            {"prompt": "p" * 40, "generation": "z"},  # only prompt left: nothing to train on
        ],
    )
    prepared = prepare(resolve([path], "sequence_len: 12\n"), tokenizer)  # too_long: drop (default)
    assert dropped(prepared) == {"too long": 2}
    assert prepared.train["input_ids"] == [[BOS, *ids("abxy"), EOS]]
    truncate = "sequence_len: 12\ntoo_long: truncate\n"
    with pytest.raises(DataError, match=r"long.jsonl:3  truncated to sequence_len 12: nothing left to train"):
        prepare(resolve([path], truncate), tokenizer)
    prepared = prepare(resolve([path], truncate + "on_bad_rows: skip\n"), tokenizer)
    assert prepared.report.truncated == 1
    assert dropped(prepared) == {"bad": 1}
    assert [len(x) for x in prepared.train["input_ids"]] == [12, 6]
    assert prepared.report.length_max == 12


def test_train_cli_stops_on_bad_data_after_replacing_an_earlier_run(
    write_config, tiny_model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Exit 2 with `data error: FILE:LINE ...`, no traceback, before any training. The output_dir
    holds an earlier run, so overwrite_output_dir: true is accepted (and clears it)."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "a", "generation": "b",}\n', encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / RESOLVED_NAME).write_text("# an earlier run\n", encoding="utf-8")
    (out / "model.safetensors").write_text("old", encoding="utf-8")
    cfg = write_config(
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {data}
            type: prompt_completion
            completion_field: generation
        output_dir: {out}
        overwrite_output_dir: true
        max_steps: 1
        """
    )
    result = run_command("train", cfg, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("data error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"data error: {data}:2  invalid JSON")
    assert "on_bad_rows: skip" in errors[0]
    assert not (out / "model.safetensors").exists()  # the earlier run was cleared ...
    assert "base_model:" in (out / RESOLVED_NAME).read_text(encoding="utf-8")  # ... and this one recorded
    assert not any(name.startswith("checkpoint") for name in os.listdir(out))


# ---- split and cache -------------------------------------------------------------------------


@pytest.fixture
def forty_rows(tmp_path: Path) -> Path:
    rows = [{"prompt": f"row {i}: ", "generation": f"answer {i}"} for i in range(40)]
    return write_rows(tmp_path / "forty.jsonl", rows)


def eval_rows(resolved: Resolved, tokenizer: Any) -> tuple[list[str], list[str]]:
    prepared = build_datasets(resolved, tokenizer)
    train, evals, report = prepared.train, prepared.eval, prepared.report
    decode = tokenizer.decode
    assert (report.train_rows, report.eval_rows) == (len(train), len(evals))
    return [decode(x[1:]) for x in train["input_ids"]], [decode(x[1:]) for x in evals["input_ids"]]


@pytest.mark.parametrize(("size", "count"), [("0.1", 4), ("0.25", 10), ("7", 7)])
def test_val_split_is_deterministic_by_seed(
    resolve, tokenizer: Any, forty_rows: Path, size: str, count: int
) -> None:  # type: ignore[no-untyped-def]
    first = eval_rows(resolve([forty_rows], f"val_set_size: {size}\nseed: 3\n"), tokenizer)
    again = eval_rows(resolve([forty_rows], f"val_set_size: {size}\nseed: 3\n"), tokenizer)
    other = eval_rows(resolve([forty_rows], f"val_set_size: {size}\nseed: 4\n"), tokenizer)
    train, evals = first
    assert len(evals) == count and len(train) == 40 - count
    assert sorted(train + evals) == sorted(f"row {i}: answer {i}</s>" for i in range(40))
    assert again == first
    assert set(other[1]) != set(evals)


def test_val_split_count_must_leave_training_rows(resolve, tokenizer: Any, forty_rows: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="40 eval rows leaves no training rows"):
        build_datasets(resolve([forty_rows], "val_set_size: 40\n"), tokenizer)


def test_prepared_dataset_cache(resolve, tokenizer: Any, forty_rows: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prepared = tmp_path / "prepared"
    extra = f"dataset_prepared_path: {prepared}\nval_set_size: 0.25\n"
    resolved = resolve([forty_rows], extra)
    cache_dir = str(prepared / fingerprint(resolved, tokenizer))
    # a leftover from a crashed writer, with a plausible but wrong report: never used
    leftover = Path(f"{cache_dir}.tmp-999999")
    leftover.mkdir(parents=True)
    (leftover / "report.json").write_text(json.dumps({"rows_read": 1, "rows_kept": 1}), encoding="utf-8")

    first = build_datasets(resolved, tokenizer)
    train, evals, report, used = first.train, first.eval, first.report, first.cache_dir
    assert used == cache_dir
    assert report.rows_read == 40 and (len(train), len(evals)) == (30, 10)
    # built in memory, written, then read back: file-backed from the first run on (TRL caches beside it)
    assert train.cache_files and all(f["filename"].startswith(cache_dir) for f in train.cache_files)
    assert sorted(os.listdir(cache_dir)) == ["eval", "report.json", "train"]
    assert not [n for n in os.listdir(prepared) if ".tmp-" in n and n != leftover.name]

    again = build_datasets(resolve([forty_rows], extra), tokenizer)
    train2, evals2, report2, used2 = again.train, again.eval, again.report, again.cache_dir
    assert report2.cache.startswith("reused the prepared dataset")
    assert used2 == cache_dir
    assert train2.cache_files and all(f["filename"].startswith(cache_dir) for f in train2.cache_files)
    assert train2["input_ids"] == train["input_ids"] and evals2["labels"] == evals["labels"]
    assert report2.rows_read == 40 and report2.total_tokens == report.total_tokens

    # what changes the data changes the fingerprint
    assert fingerprint(resolve([forty_rows], extra + "sequence_len: 64\n"), tokenizer) != Path(cache_dir).name
    assert fingerprint(resolve([forty_rows], extra + "seed: 1\n"), tokenizer) != Path(cache_dir).name
    assert (
        fingerprint(resolve([forty_rows], extra + "max_train_samples: 5\n"), tokenizer)
        == Path(cache_dir).name
    )
    with open(forty_rows, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "one ", "generation": "more"}) + "\n")
    third = build_datasets(resolve([forty_rows], extra), tokenizer)
    train3, report3, used3 = third.train, third.report, third.cache_dir
    assert used3 is not None
    assert used3 != cache_dir and report3.rows_read == 41
    assert sorted(n for n in os.listdir(prepared) if ".tmp-" not in n) == sorted(
        [Path(cache_dir).name, Path(used3).name]
    )
    assert len(train3) == 41 - math.ceil(41 * 0.25)


def test_sentencepiece_style_tokenizer_tokenizes_the_whole_text() -> None:
    """A tokenizer that puts a prefix space before every call's text would add a stray '▁' token
    at each segment boundary; the encoder tokenizes the whole row instead and keeps the mask."""
    from tests.test_chat_template import sentencepiece_like

    tok = sentencepiece_like(special=False)
    fmt = formatter("prompt_completion")
    encoder = SegmentEncoder(tok, 1024)
    assert encoder.whole_text
    enc = encoder.encode(fmt, fmt.format({"prompt": "Capital? ", "completion": "Paris."}))
    assert enc.input_ids == [*tok("Capital? Paris.", add_special_tokens=False).input_ids, tok.eos_token_id]
    pairs = zip(enc.input_ids, enc.labels, strict=True)
    assert [tok.convert_ids_to_tokens(t) for t, label in pairs if label != IGNORE] == ["▁Paris", ".", "</s>"]
    cut = [tok(text, add_special_tokens=False).input_ids for text in ("Capital? ", "Paris.")]
    assert cut[0] + cut[1] != enc.input_ids[:-1]  # what per-segment tokenization would have given
