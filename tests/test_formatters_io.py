"""The `input_output` (template-free labelled segments) and `pretokenized` (ids + labels) formatters:
exact ids and labels with the tiny byte-level tokenizer, every row error with its field, and both
found by name through a YAML config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plugins.formatters.input_output import InputOutput
from plugins.formatters.pretokenized import Pretokenized
from trainer.api import RowError
from trainer.api.resolved import Resolved
from trainer.config.errors import ConfigErrors
from trainer.data.encode import IGNORE, SegmentEncoder
from trainer.resolve.validate import load_config

BOS, EOS = 1, 2
VOCAB = 259  # 3 special tokens + 256 bytes


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids, computed independently: one token per UTF-8 byte, id = byte + 3."""
    return [b + 3 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (BOS, EOS, VOCAB)
    return tok


def encode(tok: Any, fmt: Any, row: dict[str, Any], sequence_len: int = 1024) -> Any:
    fmt.prepare(tok)
    return SegmentEncoder(tok, sequence_len).encode(fmt, fmt.format(row))


def io(**options: Any) -> InputOutput:
    return InputOutput(InputOutput.Options(**options))


def pretok(**options: Any) -> Pretokenized:
    return Pretokenized(Pretokenized.Options(**options))


def row_error(tok: Any, fmt: Any, row: dict[str, Any]) -> tuple[str, str | None]:
    fmt.prepare(tok)
    with pytest.raises(RowError) as info:
        fmt.format(row)
    return str(info.value), info.value.field


# ---- input_output ----------------------------------------------------------------------------

SEGMENTS: list[dict[str, Any]] = [
    {"text": "<|user|> Reverse: abc\n", "label": False},
    {"text": "<|bot|> cba", "label": True},
    {"text": "\n<|user|> Again: xy\n", "label": False},
    {"text": "<|bot|> yx é", "label": True},
]


def test_input_output_trains_exactly_the_labelled_text(tokenizer: Any) -> None:
    enc = encode(tokenizer, io(), {"segments": SEGMENTS, "other": 1})
    expected_ids, expected_labels = [BOS], [IGNORE]
    for seg in SEGMENTS:
        expected_ids += ids(seg["text"])
        expected_labels += ids(seg["text"]) if seg["label"] else [IGNORE] * len(ids(seg["text"]))
    assert enc.input_ids == expected_ids  # BOS, then the text verbatim: no template, no EOS
    assert enc.labels == expected_labels
    # the trained tokens decode to exactly the labelled text, the untrained ones to the rest
    trained = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(trained) == "<|bot|> cba<|bot|> yx é"
    assert tokenizer.decode(enc.input_ids[1:]) == "".join(seg["text"] for seg in SEGMENTS)


def test_input_output_bos_eos_and_keys(tokenizer: Any) -> None:
    row = {"parts": [{"t": "Q", "train": False}, {"t": "", "train": False}, {"t": "A", "train": True}]}
    fmt = io(field="parts", text_key="t", label_key="train", add_bos=False, add_eos=True)
    assert (fmt.add_bos, fmt.add_eos) == (False, True)
    enc = encode(tokenizer, fmt, row)
    assert enc.input_ids == [*ids("Q"), *ids("A"), EOS]  # the empty segment adds nothing
    assert enc.labels == [IGNORE, *ids("A"), EOS]  # EOS is trained
    enc = encode(tokenizer, io(add_eos=True), {"segments": [{"text": "ab", "label": True}]})
    assert enc.input_ids == [BOS, *ids("ab"), EOS]
    assert enc.labels == [IGNORE, *ids("ab"), EOS]
    # the defaults: BOS yes, EOS no; a row that wants EOS writes it (special tokens in the text count)
    enc = encode(tokenizer, io(), {"segments": [{"text": "ab</s>", "label": True}]})
    assert (enc.input_ids, enc.labels) == ([BOS, *ids("ab"), EOS], [IGNORE, *ids("ab"), EOS])
    assert (io().add_bos, io().add_eos) == (True, False)
    assert (InputOutput().add_bos, InputOutput().add_eos) == (True, False)  # default options too


@pytest.mark.parametrize(
    ("row", "message", "field"),
    [
        ({"text": "x"}, "missing field 'segments'", "segments"),
        ({"segments": None}, "missing field 'segments'", "segments"),
        ({"segments": "ab"}, "field 'segments' must be a list of segments, got str", "segments"),
        ({"segments": {"text": "a"}}, "field 'segments' must be a list of segments, got dict", "segments"),
        ({"segments": []}, "field 'segments' is an empty list; a row needs at least one segment", "segments"),
        (
            {"segments": [{"text": "a", "label": True}, "b"]},
            "segments[1] must be an object with 'text' and 'label', got str",
            "segments[1]",
        ),
        ({"segments": [{"label": True}]}, "segments[0] has no 'text'", "segments[0].text"),
        (
            {"segments": [{"text": 5, "label": True}]},
            "segments[0].text must be a string, got int",
            "segments[0].text",
        ),
        (
            {"segments": [{"text": "a", "label": True}, {"text": "b", "label": True}, {"text": "c"}]},
            "segments[2] has no 'label' (true to train on the text, false to mask it)",
            "segments[2].label",
        ),
        (
            {"segments": [{"text": "a", "label": 1}]},
            "segments[0].label must be true or false, got int 1",
            "segments[0].label",
        ),
        (
            {"segments": [{"text": "a", "label": "true"}]},
            "segments[0].label must be true or false, got str 'true'",
            "segments[0].label",
        ),
    ],
)
def test_input_output_row_errors(tokenizer: Any, row: dict[str, Any], message: str, field: str) -> None:
    assert row_error(tokenizer, io(), row) == (message, field)


def test_input_output_errors_use_the_configured_names(tokenizer: Any) -> None:
    fmt = io(field="parts", text_key="t", label_key="train")
    assert row_error(tokenizer, fmt, {"segments": [{"t": "a", "train": True}]}) == (
        "missing field 'parts'",
        "parts",
    )
    assert row_error(tokenizer, fmt, {"parts": [{"t": "a", "train": None}]}) == (
        "parts[0] has no 'train' (true to train on the text, false to mask it)",
        "parts[0].train",
    )


# ---- pretokenized ----------------------------------------------------------------------------


def test_pretokenized_without_labels_trains_every_token(tokenizer: Any) -> None:
    enc = encode(tokenizer, pretok(), {"input_ids": [5, 0, 258, 7], "text": "ignored"})
    assert enc.input_ids == [5, 0, 258, 7]  # no BOS, no EOS by default; ids used as they are
    assert enc.labels == [5, 0, 258, 7]
    enc = encode(tokenizer, pretok(), {"input_ids": [5, 6], "labels": None})  # null labels: all trained
    assert enc.labels == [5, 6]


def test_pretokenized_labels_become_runs(tokenizer: Any) -> None:
    fmt = pretok()
    fmt.prepare(tokenizer)
    row = {"input_ids": [1, 10, 11, 12, 13, 14, 15], "labels": [-100, -100, 11, 12, -100, 14, 15]}
    segments = fmt.format(row)
    assert [(s.ids, s.train, s.text) for s in segments] == [
        ([1, 10], False, ""),
        ([11, 12], True, ""),
        ([13], False, ""),
        ([14, 15], True, ""),
    ]
    enc = SegmentEncoder(tokenizer, 1024).encode(fmt, segments)
    assert enc.input_ids == row["input_ids"]
    assert enc.labels == row["labels"]
    # all masked is allowed (the core counts trainable tokens)
    enc = encode(tokenizer, fmt, {"input_ids": [9, 9], "labels": [-100, -100]})
    assert (enc.input_ids, enc.labels) == ([9, 9], [IGNORE, IGNORE])


def test_pretokenized_bos_eos_and_fields(tokenizer: Any) -> None:
    fmt = pretok(input_ids_field="tokens", labels_field="mask", add_bos=True, add_eos=True)
    assert (fmt.add_bos, fmt.add_eos) == (True, True)
    enc = encode(tokenizer, fmt, {"tokens": [10, 11, 12], "mask": [-100, 11, 12], "labels": "unused"})
    assert enc.input_ids == [BOS, 10, 11, 12, EOS]
    assert enc.labels == [IGNORE, IGNORE, 11, 12, EOS]
    assert (Pretokenized().add_bos, Pretokenized().add_eos) == (False, False)


def test_pretokenized_length_policy_is_the_cores(tokenizer: Any) -> None:
    enc = encode(tokenizer, pretok(), {"input_ids": list(range(3, 23))}, sequence_len=4)
    assert enc.input_ids == list(range(3, 23))  # the encoder keeps full length; `fit` decides
    assert not Pretokenized.split_long


@pytest.mark.parametrize(
    ("row", "message", "field"),
    [
        ({"labels": [1]}, "missing field 'input_ids'", "input_ids"),
        ({"input_ids": "1 2 3"}, "field 'input_ids' must be a list of integers, got str", "input_ids"),
        ({"input_ids": []}, "field 'input_ids' is an empty list", "input_ids"),
        ({"input_ids": [4, 5.0]}, "input_ids[1] must be an integer, got float 5.0", "input_ids[1]"),
        ({"input_ids": [4, "5"]}, "input_ids[1] must be an integer, got str '5'", "input_ids[1]"),
        ({"input_ids": [4, 5, True]}, "input_ids[2] must be an integer, got bool True", "input_ids[2]"),
        (
            {"input_ids": [3, 4, 5, 6, 7, 70000]},
            "input_ids[5] = 70000 is outside the tokenizer's vocabulary (0..258)",
            "input_ids[5]",
        ),
        (
            {"input_ids": [3, 259]},
            "input_ids[1] = 259 is outside the tokenizer's vocabulary (0..258)",
            "input_ids[1]",
        ),
        (
            {"input_ids": [-1, 4]},
            "input_ids[0] = -1 is outside the tokenizer's vocabulary (0..258)",
            "input_ids[0]",
        ),
        (
            {"input_ids": [-100, 4], "labels": [-100, 4]},
            "input_ids[0] = -100 is outside the tokenizer's vocabulary (0..258)",
            "input_ids[0]",
        ),
        (
            {"input_ids": [4, 5], "labels": "4 5"},
            "field 'labels' must be a list of integers, got str",
            "labels",
        ),
        (
            {"input_ids": [4, 5], "labels": [4, False]},
            "labels[1] must be an integer, got bool False",
            "labels[1]",
        ),
        (
            {"input_ids": [4, 5, 6], "labels": [4, 5]},
            "field 'labels' has 2 entries but 'input_ids' has 3; they must match one to one",
            "labels",
        ),
        (
            {"input_ids": [4, 5, 6], "labels": [-100, 5, 7]},
            "labels[2] = 7 must be -100 (not trained) or the input id at that position (input_ids[2] = 6)",
            "labels[2]",
        ),
        (
            {"input_ids": [4, 5], "labels": [-1, 5]},
            "labels[0] = -1 must be -100 (not trained) or the input id at that position (input_ids[0] = 4)",
            "labels[0]",
        ),
    ],
)
def test_pretokenized_row_errors(tokenizer: Any, row: dict[str, Any], message: str, field: str) -> None:
    assert row_error(tokenizer, pretok(), row) == (message, field)


def test_pretokenized_errors_use_the_configured_names(tokenizer: Any) -> None:
    fmt = pretok(input_ids_field="tokens", labels_field="mask")
    assert row_error(tokenizer, fmt, {"tokens": [4, 300]}) == (
        "tokens[1] = 300 is outside the tokenizer's vocabulary (0..258)",
        "tokens[1]",
    )
    assert row_error(tokenizer, fmt, {"tokens": [4, 5], "mask": [4, 4]}) == (
        "mask[1] = 4 must be -100 (not trained) or the input id at that position (tokens[1] = 5)",
        "mask[1]",
    )


def test_pretokenized_needs_prepare() -> None:
    with pytest.raises(RuntimeError, match=r"prepare\(tokenizer\) must be called"):
        pretok().format({"input_ids": [4]})


# ---- through a YAML config -------------------------------------------------------------------


@pytest.fixture
def resolve(write_config, tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a config with one dataset of the given formatter (+ option lines) and load it."""

    def make(kind: str, options: str = "") -> Resolved:
        data = tmp_path / "rows.jsonl"
        data.write_text(json.dumps({"input_ids": [4]}) + "\n", encoding="utf-8")
        lines = "".join(f"    {line}\n" for line in options.splitlines())
        text = (
            f"base_model: {tiny_model}\ndatasets:\n  - path: {data}\n    type: {kind}\n{lines}"
            f"output_dir: {tmp_path / 'out'}\n"
        )
        return load_config(str(write_config(text)))

    return make


def test_input_output_through_config(resolve, tokenizer: Any) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve("input_output", "field: parts\nadd_eos: true\nsplit: train")
    fmt = resolved.formatters[0].plugin
    assert isinstance(fmt, InputOutput) and (fmt.add_bos, fmt.add_eos) == (True, True)
    enc = encode(tokenizer, fmt, {"parts": [{"text": "Q", "label": False}, {"text": "A", "label": True}]})
    assert enc.input_ids == [BOS, *ids("Q"), *ids("A"), EOS]
    assert enc.labels == [IGNORE, IGNORE, *ids("A"), EOS]
    assert (
        resolved.to_dict()["datasets"][0].items()
        >= {
            "split": "train",
            "type": "input_output",
            "field": "parts",
            "text_key": "text",
            "label_key": "label",
            "add_bos": True,
            "add_eos": True,
        }.items()
    )


def test_pretokenized_through_config(resolve, tokenizer: Any) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve("pretokenized", "labels_field: mask\nadd_eos: true")
    fmt = resolved.formatters[0].plugin
    assert isinstance(fmt, Pretokenized) and (fmt.add_bos, fmt.add_eos) == (False, True)
    enc = encode(tokenizer, fmt, {"input_ids": [7, 8], "mask": [-100, 8]})
    assert (enc.input_ids, enc.labels) == ([7, 8, EOS], [IGNORE, 8, EOS])


@pytest.mark.parametrize(
    ("kind", "option", "expected"),
    [
        (
            "input_output",
            "text_field: text",
            "datasets[0].text_field: unknown key 'text_field' (did you mean 'text_key'?)",
        ),
        (
            "input_output",
            "add_bos: maybe",
            "datasets[0].add_bos: input should be a valid boolean, unable to interpret input (got 'maybe')",
        ),
        (
            "pretokenized",
            "label_field: mask",
            "datasets[0].label_field: unknown key 'label_field' (did you mean 'labels_field'?)",
        ),
    ],
)
def test_bad_option_is_a_config_error(resolve, kind: str, option: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigErrors) as info:
        resolve(kind, option)
    [problem] = info.value.problems
    assert problem.render() == f"{problem.where}  {expected}"
    assert problem.where.endswith("cfg.yml:5")  # the option's own line
