"""The preference data shapes: the `preference`, `kto` and `prompt` formatters on text and chat rows
(TRL's explicit and implicit prompts, Axolotl's {system, question, chosen, rejected}), the prompt
rendered once with the chat template, only completion tokens trained, and the length policy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from plugins.formatters.preference import KtoFormatter, PreferenceFormatter, PromptFormatter
from trainer.api import RowError
from trainer.data.encode import SegmentEncoder
from trainer.data.shapes import EncodedJudged, EncodedPair, ShapeEncoder


@pytest.fixture
def tokenizer(tiny_model: Path) -> Any:
    """A fresh one per test: a chat_template option sets the tokenizer's template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def encode(
    tokenizer: Any, formatter: Any, row: dict[str, Any], target: str = "preference", n: int = 256
) -> Any:
    formatter.prepare(tokenizer)
    shapes = ShapeEncoder(SegmentEncoder(tokenizer, 256), formatter, target, "drop")
    examples, _ = shapes.encode(formatter.format(row))
    return examples


def text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_text_rows_get_bos_and_eos_and_train_only_the_completions(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = {"prompt": "Reverse: ab\nAnswer: ", "chosen": "BA", "rejected": "ba!"}
    (pair,) = encode(tokenizer, PreferenceFormatter(), row)
    assert isinstance(pair, EncodedPair)
    assert text(tokenizer, pair.prompt_ids) == "<s>Reverse: ab\nAnswer: "
    assert text(tokenizer, pair.chosen_ids) == "BA</s>" and text(tokenizer, pair.rejected_ids) == "ba!</s>"
    assert pair.lengths() == [len(pair.prompt_ids) + 3, len(pair.prompt_ids) + 4]


def test_chat_rows_render_the_prompt_once_with_the_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    options = PreferenceFormatter.Options(prompt_field="messages", chat_template="chatml")
    row = {
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
        "chosen": {"role": "assistant", "content": "Hello."},
        "rejected": "Hi there",
    }
    (pair,) = encode(tokenizer, PreferenceFormatter(options), row)
    prompt = (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text(tokenizer, pair.prompt_ids) == prompt
    assert text(tokenizer, pair.chosen_ids) == "Hello.<|im_end|>"  # up to the end of turn
    assert text(tokenizer, pair.rejected_ids) == "Hi there<|im_end|>"
    from transformers.utils.chat_template_utils import render_jinja_template

    whole = render_jinja_template(  # what apply_chat_template renders for the whole conversation
        conversations=[[*row["messages"], row["chosen"]]], chat_template=tokenizer.chat_template
    )[0][0]
    assert whole.startswith(prompt + "Hello.<|im_end|>")


def test_implicit_prompt_rows_use_the_shared_turns(tokenizer) -> None:  # type: ignore[no-untyped-def]
    user = {"role": "user", "content": "2+2?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "4"}],
        "rejected": [user, {"role": "assistant", "content": "5"}],
    }
    options = PreferenceFormatter.Options(chat_template="chatml")
    (pair,) = encode(tokenizer, PreferenceFormatter(options), row)
    assert text(tokenizer, pair.prompt_ids) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert (text(tokenizer, pair.chosen_ids), text(tokenizer, pair.rejected_ids)) == (
        "4<|im_end|>",
        "5<|im_end|>",
    )


def test_axolotl_system_question_rows_through_the_field_mapping(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = {"system": "Sys.", "question": "Q?", "chosen": "A.", "rejected": "B."}
    chatml = PreferenceFormatter.Options(prompt_field="question", chat_template="chatml")
    (pair,) = encode(tokenizer, PreferenceFormatter(chatml), row)
    assert text(tokenizer, pair.prompt_ids) == (
        "<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    (plain,) = encode(
        tokenizer, PreferenceFormatter(PreferenceFormatter.Options(prompt_field="question")), row
    )
    assert text(tokenizer, plain.prompt_ids) == "<s>Sys.Q?"  # text rows stay text without a template


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "Q", "chosen": "A"}, "missing field 'rejected'"),
        ({"prompt": "Q", "chosen": "A", "rejected": "A"}, "chosen and rejected are the same"),
        ({"prompt": "Q", "chosen": 5, "rejected": "A"}, "field 'chosen' must be text or chat messages"),
        ({"prompt": [{"role": "user"}], "chosen": "A", "rejected": "B"},
         "prompt[0].content must be a string"),
        ({"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"},
         "need a chat template"),
        ({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "y"}]},
         "share no first turns"),
        ({"prompt": "Q" * 300, "chosen": "A", "rejected": "B"}, "leaving no room for the completions"),
    ],
)  # fmt: skip
def test_bad_rows_say_what_is_wrong(tokenizer, row, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RowError, match=re.escape(message)):
        encode(tokenizer, PreferenceFormatter(), row)


def test_too_long_completions_drop_or_truncate(tokenizer) -> None:  # type: ignore[no-untyped-def]
    formatter = PreferenceFormatter()
    formatter.prepare(tokenizer)
    row = {"prompt": "Q: ", "chosen": "a" * 40, "rejected": "b"}
    with pytest.raises(ValueError, match="too long: 45 tokens, over sequence_len 20"):
        ShapeEncoder(SegmentEncoder(tokenizer, 20), formatter, "preference", "drop").encode(
            formatter.format(row)
        )
    (pair,), changed = ShapeEncoder(
        SegmentEncoder(tokenizer, 20), formatter, "preference", "truncate"
    ).encode(formatter.format(row))
    assert changed == "truncated" and len(pair.prompt_ids) + len(pair.chosen_ids) == 20
    assert text(tokenizer, pair.rejected_ids) == "b</s>"  # the shorter one is whole


def test_kto_rows_and_pairs_unpaired_for_kto(tokenizer) -> None:  # type: ignore[no-untyped-def]
    (row,) = encode(
        tokenizer, KtoFormatter(), {"prompt": "Q ", "completion": "A", "label": False}, "unpaired"
    )
    assert isinstance(row, EncodedJudged) and row.label is False
    assert text(tokenizer, row.completion_ids) == "A</s>"
    with pytest.raises(RowError, match="field 'label' must be true or false"):
        encode(tokenizer, KtoFormatter(), {"prompt": "Q", "completion": "A", "label": "yes"}, "unpaired")
    pair_rows = encode(
        tokenizer, PreferenceFormatter(), {"prompt": "Q ", "chosen": "A", "rejected": "B"}, "unpaired"
    )
    assert [(text(tokenizer, r.completion_ids), r.label) for r in pair_rows] == [
        ("A</s>", True),
        ("B</s>", False),
    ]


def test_prompt_rows_keep_their_columns_for_the_rewards(tokenizer) -> None:  # type: ignore[no-untyped-def]
    (row,) = encode(
        tokenizer, PromptFormatter(), {"prompt": "Reverse: ab\n", "answer": "ba", "n": 2}, "prompt"
    )
    assert row.columns() == {"prompt": "Reverse: ab\n", "prompt_ids": row.prompt_ids, "answer": "ba", "n": 2}
    assert text(tokenizer, row.prompt_ids) == "<s>Reverse: ab\n"


def test_an_empty_system_field_is_no_system_turn() -> None:
    """As Axolotl's chatml.* / llama3.* types treat it: a row whose system field is "" renders like a
    row without one (the formatter's system_prompt, if any, applies)."""
    from plugins.formatters.preference import PreferenceFormatter, PreferenceOptions

    formatter = PreferenceFormatter(PreferenceOptions())
    assert formatter._system({"system": ""}) is None
    assert formatter._system({}) is None
    assert formatter._system({"system": "Be brief."}) == "Be brief."
    prompted = PreferenceFormatter(PreferenceOptions(system_prompt="Default."))
    assert prompted._system({"system": ""}) == "Default."
