"""The data pipeline end to end on real files: weighted mixing, held-out data, filters and
de-duplication, chunking, worker processes, and the prepared-data fingerprint."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from trainer.api.resolved import Resolved
from trainer.config.errors import ConfigErrors
from trainer.data.encode import IGNORE
from trainer.data.pipeline import build_datasets, fingerprint
from trainer.data.readers import DataError
from trainer.resolve.validate import load_config

BOS, EOS = 1, 2


def ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from trainer.config.schema import TrainConfig
    from trainer.runtime.build import load_tokenizer

    spec = {"path": "x", "type": "completion"}
    return load_tokenizer(TrainConfig(base_model=str(tiny_model), datasets=[spec], output_dir="o"))


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def config(tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a config with the given body (YAML, dedented) and load it."""

    def make(body: str) -> Resolved:
        text = f"base_model: {tiny_model}\noutput_dir: {tmp_path / 'out'}\n" + textwrap.dedent(body)
        path = tmp_path / "cfg.yml"
        path.write_text(text, encoding="utf-8")
        return load_config(str(path))

    return make


def decoded_answers(dataset: Any) -> list[str]:
    """The trained text of every row (tiny byte tokenizer: id - 3 is the byte)."""
    return [
        bytes(t - 3 for t, label in zip(row_ids, labels, strict=True) if label != IGNORE and t > 2).decode()
        for row_ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True)
    ]


# ---- mixing ----------------------------------------------------------------------------------


@pytest.fixture
def three_sources(tmp_path: Path) -> list[Path]:
    sizes = {"a": 2000, "b": 5000, "c": 3000}
    return [
        jsonl(tmp_path / f"{name}.jsonl", [{"prompt": "q ", "completion": f"{name}{i}"} for i in range(n)])
        for name, n in sizes.items()
    ]


def mix_config(files: list[Path], weights: list[float | None], extra: str = "") -> str:
    lines = ["datasets:"]
    for file, weight in zip(files, weights, strict=True):
        lines += [f"  - path: {file}", "    type: prompt_completion"]
        if weight is not None:
            lines.append(f"    weight: {weight}")
    return "\n".join(lines) + "\n" + extra


def source_counts(dataset: Any) -> Counter[str]:
    return Counter(answer[0] for answer in decoded_answers(dataset))


def test_weights_set_each_datasets_share_of_10k_rows(
    config, tokenizer: Any, three_sources: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    resolved = config(mix_config(three_sources, [0.5, 0.3, 0.2], "seed: 7\n"))
    prepared = build_datasets(resolved, tokenizer)
    counts = source_counts(prepared.train)
    total = sum(counts.values())
    assert total == 10_000  # the epoch keeps the size of the concatenation
    for name, share in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(counts[name] / total - share) < 0.01, counts
    answers = Counter(decoded_answers(prepared.train))
    # 'a' (2000 rows, 5000 wanted) repeats every row 2x, then 1000 distinct rows a 3rd time
    a_repeats = Counter(n for answer, n in answers.items() if answer.startswith("a"))
    assert a_repeats == {3: 1000, 2: 1000}
    # 'b' (5000 rows, 3000 wanted) is a subsample without repeats
    assert {n for answer, n in answers.items() if answer.startswith("b")} == {1}
    assert [(c.path, c.train_rows) for c in prepared.report.datasets] == [
        (str(three_sources[0]), 5000),
        (str(three_sources[1]), 3000),
        (str(three_sources[2]), 2000),
    ]
    # the same seed gives the same mix; another seed another one with the same shares
    again = build_datasets(config(mix_config(three_sources, [0.5, 0.3, 0.2], "seed: 7\n")), tokenizer)
    assert again.train["input_ids"] == prepared.train["input_ids"]
    other = build_datasets(config(mix_config(three_sources, [0.5, 0.3, 0.2], "seed: 8\n")), tokenizer)
    assert other.train["input_ids"] != prepared.train["input_ids"]
    assert source_counts(other.train) == counts


def test_unweighted_datasets_are_concatenated(config, tokenizer: Any, three_sources: list[Path]) -> None:  # type: ignore[no-untyped-def]
    prepared = build_datasets(config(mix_config(three_sources, [None] * 3, "shuffle: false\n")), tokenizer)
    answers = decoded_answers(prepared.train)
    assert answers == [f"{n}{i}" for n, size in (("a", 2000), ("b", 5000), ("c", 3000)) for i in range(size)]
    # an unset weight counts 1 once any dataset has a weight
    half = build_datasets(config(mix_config(three_sources, [2.0, None, 1.0])), tokenizer)
    assert source_counts(half.train) == {"a": 5000, "b": 2500, "c": 2500}


def test_eval_rows_are_held_out_before_mixing(config, tokenizer: Any, three_sources: list[Path]) -> None:  # type: ignore[no-untyped-def]
    prepared = build_datasets(
        config(mix_config(three_sources, [0.8, 0.1, 0.1], "val_set_size: 0.1\n")), tokenizer
    )
    train, evals = set(decoded_answers(prepared.train)), set(decoded_answers(prepared.eval))
    assert len(prepared.eval) == 1000 and not train & evals  # repeated rows never leak into eval
    assert len(prepared.train) == 9000


def test_test_datasets_are_the_eval_set(config, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train = jsonl(tmp_path / "train.jsonl", [{"prompt": "q ", "completion": f"t{i}"} for i in range(20)])
    test = jsonl(tmp_path / "test.jsonl", [{"q": "q ", "a": f"e{i}"} for i in range(5)])
    body = f"""
        datasets:
          - path: {train}
            type: prompt_completion
        test_datasets:
          - path: {test}
            type: prompt_completion
            prompt_field: q
            completion_field: a
        shuffle: false
    """
    prepared = build_datasets(config(body), tokenizer)
    assert decoded_answers(prepared.eval) == [f"e{i}" for i in range(5)]
    assert len(prepared.train) == 20
    assert prepared.report.eval_rows == 5
    assert config(body).config.eval_strategy == "epoch"  # evaluation is on by default with test data
    with pytest.raises(ConfigErrors, match="set val_set_size or test_datasets, not both"):
        config(textwrap.dedent(body) + "val_set_size: 0.1\n")


# ---- filters and length ----------------------------------------------------------------------


def test_filters_dedupe_regex_and_length(config, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"prompt": "hi ", "completion": "hello"},
        {"prompt": "hi ", "completion": "hello"},  # duplicate
        {"prompt": "why? ", "completion": "As an AI language model, I cannot."},  # refusal
        {"prompt": "a", "completion": "b"},  # 4 tokens: under min_length
        {"prompt": "long ", "completion": "x" * 40},  # over max_length
        {"prompt": "ok ", "completion": "fine"},
    ]
    data = jsonl(tmp_path / "rows.jsonl", rows)
    body = f"""
        datasets:
          - path: {data}
            type: prompt_completion
        filters:
          dedupe: true
          drop_regex: ["As an AI language model"]
          min_length: 5
          max_length: 30
        shuffle: false
    """
    prepared = build_datasets(config(body), tokenizer)
    assert decoded_answers(prepared.train) == ["hello", "fine"]
    report = prepared.report
    assert {k: v for k, v in report.dropped.items() if v} == {"duplicate": 1, "filtered": 3}
    assert (report.rows_read, report.rows_kept) == (6, 2)
    assert any("matches drop_regex 'As an AI language model'" in line for line in report.first_bad_rows)


def test_a_row_with_nothing_to_train_is_a_bad_row(config, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = jsonl(
        tmp_path / "segments.jsonl",
        [
            {"segments": [{"text": "kept", "label": True}]},
            {"segments": [{"text": "all masked", "label": False}]},
        ],
    )
    body = f"datasets:\n  - path: {data}\n    type: input_output\n"
    with pytest.raises(DataError, match=r"segments.jsonl:2  no token is trained"):
        build_datasets(config(body), tokenizer)
    prepared = build_datasets(config(body + "on_bad_rows: skip\n"), tokenizer)
    assert prepared.report.dropped["bad"] == 1 and len(prepared.train) == 1


def test_long_documents_are_chunked_not_truncated(config, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    data = jsonl(tmp_path / "docs.jsonl", [{"text": text}, {"text": "short"}])
    body = f"datasets:\n  - path: {data}\n    type: completion\nsequence_len: 32\nshuffle: false\n"
    prepared = build_datasets(config(body), tokenizer)
    rows = prepared.train["input_ids"]
    assert [len(r) for r in rows] == [32, 32, 32, 6, 7]  # BOS + 100 + EOS = 102 tokens -> 4 chunks
    assert [t for r in rows[:4] for t in r] == [BOS, *ids(text), EOS]
    assert all(label != IGNORE for r in prepared.train["labels"][:4] for label in r[1:])
    assert prepared.report.chunked == 1 and prepared.report.rows_kept == 2


def test_worker_processes_give_identical_data(config, tokenizer: Any, three_sources: list[Path]) -> None:  # type: ignore[no-untyped-def]
    body = mix_config(three_sources, [None] * 3, "val_set_size: 0.05\n")
    one = build_datasets(config(body), tokenizer)
    two = build_datasets(config(body + "dataset_num_proc: 2\n"), tokenizer)
    assert two.train["input_ids"] == one.train["input_ids"] and two.train["labels"] == one.train["labels"]
    assert two.eval["input_ids"] == one.eval["input_ids"]
    assert two.report.total_tokens == one.report.total_tokens


# ---- fingerprint -----------------------------------------------------------------------------

BASE = """
datasets:
  - path: {data}
    type: prompt_completion
sequence_len: 64
"""

SAME = [
    "learning_rate: 0.1\n",
    "num_epochs: 3\n",
    "max_train_samples: 5\n",
    "dataset_num_proc: 2\n",
    "logging_steps: 3\n",
    "micro_batch_size: 4\n",
]
DIFFERENT = [
    "seed: 1\n",
    "val_set_size: 0.5\n",
    "on_bad_rows: skip\n",
    "too_long: truncate\n",
    "shuffle: false\n",
    "filters: {dedupe: true}\n",
    "filters: {drop_regex: [x]}\n",
    "filters: {min_length: 2}\n",
    "filters: {max_length: 50}\n",
]


def test_fingerprint_follows_exactly_what_changes_the_data(
    config, tokenizer: Any, tmp_path: Path, tiny_model: Path
) -> None:  # type: ignore[no-untyped-def]
    data = jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a"}])
    base = BASE.format(data=data)

    def with_option(line: str) -> str:
        return base.replace("type: prompt_completion\n", f"type: prompt_completion\n    {line}\n")

    reference = fingerprint(config(base), tokenizer)
    assert fingerprint(config(base), tokenizer) == reference
    for extra in SAME:
        assert fingerprint(config(base + extra), tokenizer) == reference, extra
    seen = {reference}
    for body in [
        *(base + extra for extra in DIFFERENT),
        base.replace("sequence_len: 64", "sequence_len: 65"),
        with_option("train_on_prompt: true"),  # a formatter option
        with_option("weight: 2"),
        with_option("field: prompt").replace("prompt_completion", "completion"),  # the formatter
        base + f"test_datasets:\n  - path: {data}\n    type: prompt_completion\n",
    ]:
        found = fingerprint(config(body), tokenizer)
        assert found not in seen, body
        seen.add(found)
    # the data's content (same path)
    jsonl(data, [{"prompt": "q", "completion": "b"}])
    assert fingerprint(config(base), tokenizer) not in seen
    jsonl(data, [{"prompt": "q", "completion": "a"}])
    assert fingerprint(config(base), tokenizer) == reference
    # the tokenizer: its vocabulary, special tokens and chat template
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_model)
    other.pad_token = other.eos_token
    assert fingerprint(config(base), other) == reference
    other.chat_template = "{{ messages }}"
    assert fingerprint(config(base), other) != reference
    other = AutoTokenizer.from_pretrained(tiny_model)
    other.pad_token = other.eos_token
    other.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    assert fingerprint(config(base), other) != reference


def test_a_formatter_that_raises_gives_a_located_bad_row(config, tokenizer: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A formatter that does not check its input (as a third-party one may not) still names the row."""
    data = jsonl(tmp_path / "rows.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    resolved = config(f"datasets:\n  - path: {data}\n    type: prompt_completion\n")
    plugin = resolved.formatters[0].plugin

    def careless(row: dict[str, Any]) -> Any:
        from trainer.api import Segment

        return [Segment(row["prompt"]), Segment(row["completion"], train=True)]

    plugin.format = careless  # type: ignore[method-assign]
    with pytest.raises(DataError, match=r"rows.jsonl:2  formatter 'prompt_completion' failed: KeyError"):
        build_datasets(resolved, tokenizer)


def test_two_datasets_cannot_save_two_chat_templates(config, tiny_model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)  # its own: preparing sets its template
    data = jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}],
    )
    body = f"""
        datasets:
          - path: {data}
            type: chat_template
            chat_template: chatml
          - path: {data}
            type: chat_template
            chat_template: llama3
    """
    with pytest.raises(DataError, match=r"datasets\[1\] sets a different chat template than datasets\[0\]"):
        build_datasets(config(body), tokenizer)
    same = body.replace("llama3", "chatml")
    assert len(build_datasets(config(same), tokenizer).train) == 2
