"""The alpaca formatter's prompt styles and Axolotl's instruction dataset types carried onto it: each
row renders to the text Axolotl's prompter writes (the expected strings are written out by hand from
axolotl/prompters.py and prompt_strategies/*.py of Axolotl 0.21.0), the prompt is masked and the
response + EOS trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.data.encode import IGNORE, SegmentEncoder

BOS, EOS = 1, 2
SYS = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
SYS_NO = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
CONCISE = (
    "Below is an instruction from a USER that describes a task, paired with an input that provides further "
    "context. The ASSISTANT writes a response that concisely and appropriately completes the request.\n\n"
)
CONCISE_NO = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n"
)
ROW = {"instruction": "Add 2 and 3.", "input": "Use digits.", "output": "5"}
NO_INPUT = {"instruction": "Say hi.", "input": "", "output": "hi"}

# (options, row, Axolotl's prompt text): AlpacaPrompter(style)._build_result and the strategies' fields
STYLE_CASES = [
    ({}, ROW, f"{SYS}\n\n### Instruction:\nAdd 2 and 3.\n\n### Input:\nUse digits.\n\n### Response:\n"),
    ({}, NO_INPUT, f"{SYS_NO}\n\n### Instruction:\nSay hi.\n\n### Response:\n"),
    ({"prompt_style": "chat"}, ROW, f"SYSTEM: {SYS}\nUSER: Add 2 and 3.\nUse digits.\nASSISTANT:"),
    ({"prompt_style": "chat"}, NO_INPUT, f"SYSTEM: {SYS_NO}\nUSER: Say hi.\nASSISTANT:"),
    (
        {"prompt_style": "chatml"},
        ROW,
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nAdd 2 and 3.\nUse digits.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (
        {"prompt_style": "chatml"},
        NO_INPUT,
        f"<|im_start|>system\n{SYS_NO}<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    # Axolotl's phi turn with input: the input right after <|end|>, no newline before <|assistant|>
    (
        {"prompt_style": "phi"},
        ROW,
        f"<|system|>\n{SYS}<|end|>\n<|user|>\nAdd 2 and 3.<|end|>Use digits.<|assistant|>",
    ),
    (
        {"prompt_style": "phi"},
        NO_INPUT,
        f"<|system|>\n{SYS_NO}<|end|>\n<|user|>\nSay hi.<|end|>\n<|assistant|>\n",
    ),
]


def ids(text: str) -> list[int]:
    """The tiny tokenizer's ids: one token per UTF-8 byte, id = byte + 3."""
    return [b + 3 for b in text.encode("utf-8")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def alpaca(**options: Any) -> Any:
    from plugins.formatters.alpaca import Alpaca, AlpacaOptions

    return Alpaca(AlpacaOptions(**options))


def rendered(fmt: Any, row: dict[str, Any]) -> tuple[str, str]:
    prompt, output = fmt.format(row)
    assert not prompt.train and output.train
    return prompt.text, output.text


def assert_masked(tokenizer: Any, fmt: Any, row: dict[str, Any], prompt: str, output: str) -> None:
    enc = SegmentEncoder(tokenizer, 4096).encode(fmt, fmt.format(row))
    assert enc.input_ids == [BOS, *ids(prompt), *ids(output), EOS]
    assert enc.labels == [IGNORE] * (1 + len(ids(prompt))) + [*ids(output), EOS]


@pytest.mark.parametrize(("options", "row", "prompt"), STYLE_CASES)
def test_each_style_writes_axolotls_text(
    tokenizer: Any, options: dict[str, Any], row: Any, prompt: str
) -> None:
    fmt = alpaca(**options)
    assert rendered(fmt, row) == (prompt, row["output"])
    assert_masked(tokenizer, fmt, row, prompt, row["output"])


def test_train_on_prompt_trains_the_style_text(tokenizer: Any) -> None:
    fmt = alpaca(prompt_style="chatml", train_on_prompt=True)
    enc = SegmentEncoder(tokenizer, 4096).encode(fmt, fmt.format(NO_INPUT))
    assert enc.labels == [IGNORE, *enc.input_ids[1:]]


# (Axolotl dataset type, row, Axolotl's prompt text, the trained response)
TYPE_CASES: list[tuple[Any, dict[str, Any], str, str]] = [
    (
        "alpaca:phi",
        ROW,
        f"<|system|>\n{SYS}<|end|>\n<|user|>\nAdd 2 and 3.<|end|>Use digits.<|assistant|>",
        "5",
    ),
    ("alpaca_instruct.load_no_prompt", NO_INPUT, "### Instruction:\nSay hi.\n\n### Response:\n", "hi"),
    ("alpaca_chat", ROW, f"SYSTEM: {SYS}\nUSER: Add 2 and 3.\nUse digits.\nASSISTANT:", "5"),
    ("alpaca_chat.load_no_prompt", NO_INPUT, "USER: Say hi.\nASSISTANT:", "hi"),
    # AlpacaConcisePrompter: the texts end in "\n\n", the chat system format adds "\n"
    ("alpaca_chat.load_concise", ROW, f"SYSTEM: {CONCISE}\nUSER: Add 2 and 3.\nUse digits.\nASSISTANT:", "5"),
    ("alpaca_chat.load_concise", NO_INPUT, f"SYSTEM: {CONCISE_NO}\nUSER: Say hi.\nASSISTANT:", "hi"),
    (
        "alpaca_chat.load_qa",
        {"question": "Capital of France?", "answer": "Paris."},
        f"SYSTEM: {CONCISE_NO}\nUSER: Capital of France?\nASSISTANT:",
        "Paris.",
    ),
    (
        "alpaca_chat.load_camel_ai",
        {"message_1": "Hi?", "message_2": "Hello."},
        f"SYSTEM: {CONCISE_NO}\nUSER: Hi?\nASSISTANT:",
        "Hello.",
    ),
    (
        "alpaca_w_system.load_instruct",
        {**ROW, "system": "Be exact."},
        "Be exact.\n\n### Instruction:\nAdd 2 and 3.\n\n### Input:\nUse digits.\n\n### Response:\n",
        "5",
    ),
    (
        "alpaca_w_system.load_chat",
        {**NO_INPUT, "system": "Be warm."},
        "SYSTEM: Be warm.\nUSER: Say hi.\nASSISTANT:",
        "hi",
    ),
    (
        "alpaca_w_system",
        {**NO_INPUT, "system": ""},
        "USER: Say hi.\nASSISTANT:",
        "hi",
    ),  # empty: no system turn
    (
        "alpaca_w_system.load_open_orca",
        {"question": "2+2?", "response": "4", "system_prompt": "Be brief."},
        "### System:\nBe brief.\n### Human:\n2+2?\n### Assistant:\n",
        "4",
    ),
    (
        "alpaca_w_system.load_open_orca_chatml",
        {"question": "2+2?", "response": "4", "system_prompt": "Be brief."},
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
        "4",
    ),
    (
        "oasst:chat",
        {"INSTRUCTION": "Hi?", "RESPONSE": "Hello."},
        f"SYSTEM: {SYS_NO}\nUSER: Hi?\nASSISTANT:",
        "Hello.",
    ),
    (
        "gpteacher",
        {"instruction": "Add 2 and 3.", "input": "Use digits.", "response": "5"},
        f"{SYS}\n\n### Instruction:\nAdd 2 and 3.\n\n### Input:\nUse digits.\n\n### Response:\n",
        "5",
    ),
    (
        "summarizetldr",
        {"article": "Long text.", "summary": "Short."},
        "USER: Summarize the following article as a TL;DR.\nLong text.\nASSISTANT:",
        "Short.",
    ),
    (
        "creative_acr.load_answer",
        {"instruction": "Why is the sky blue?", "revision": "Rayleigh.", "answer": "unused"},
        "Answer the following question in a comprehensive, in-depth, and creative way. Additionally your "
        "response should be relevant, accurate, and free of any ambiguity.\n"
        "USER: Why is the sky blue?\nASSISTANT:",
        "Rayleigh.",
    ),
    # user_defined (a type: dict): rows without the system column get system_prompt in system_format
    (
        {
            "system_prompt": "Be kind.",
            "system_format": "<<SYS>>{system}<</SYS>>\n",
            "field_output": "answer",
            "format": "[INST] {instruction}\n{input} [/INST]",
            "no_input_format": "[INST] {instruction} [/INST]",
        },
        {"instruction": "Hi?", "answer": "Hello."},
        "<<SYS>>Be kind.<</SYS>>\n[INST] Hi? [/INST]",
        "Hello.",
    ),
    (
        {
            "system_prompt": "Be kind.",
            "system_format": "<<SYS>>{system}<</SYS>>\n",
            "field_output": "answer",
            "format": "[INST] {instruction}\n{input} [/INST]",
            "no_input_format": "[INST] {instruction} [/INST]",
        },
        {"instruction": "Hi?", "input": "x", "answer": "Hello.", "system": "Be sharp."},
        "<<SYS>>Be sharp.<</SYS>>\n[INST] Hi?\nx [/INST]",
        "Hello.",
    ),
    ({}, {"instruction": "Hi?", "output": "Hello."}, "Hi? ", "Hello."),  # the dict's defaults
]


@pytest.mark.parametrize(("kind", "row", "prompt", "response"), TYPE_CASES)
def test_axolotl_instruction_types_render_axolotls_text(
    tokenizer: Any, kind: Any, row: dict[str, Any], prompt: str, response: str
) -> None:
    from trainer.tools.axolotl.alpaca_types import instruction_options

    options, how = instruction_options(kind, {"type": kind, "path": "d.jsonl"})
    assert options is not None, how
    fmt = alpaca(**options)
    assert rendered(fmt, row) == (prompt, response)
    assert_masked(tokenizer, fmt, row, prompt, response)


def test_alpaca_chat_conversation_picks_the_style() -> None:
    from trainer.tools.axolotl.alpaca_types import instruction_options

    options, _ = instruction_options("alpaca_chat", {"conversation": "chatml"})
    assert options is not None
    assert rendered(alpaca(**options), NO_INPUT)[0].startswith(f"<|im_start|>system\n{SYS_NO}<|im_end|>\n")
    refused, why = instruction_options("alpaca_chat", {"conversation": "llama-2"})
    assert refused is None and "llama-2" in why
    refused, why = instruction_options("alpaca:vicuna", {})
    assert refused is None and "vicuna" in why
    assert instruction_options("jeopardy", {}) == (None, "")  # no honest match: stays refused
    refused, why = instruction_options({"format": "{instruction} {context}"}, {})
    assert refused is None and "context" in why


def test_bad_formats_are_refused_with_the_option_named() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="turn_format may use"):
        alpaca(turn_format="{instruction} {answer}")
    with pytest.raises(ValidationError, match="system_format"):
        alpaca(system_format="{system")
    with pytest.raises(ValidationError, match="system_prompt_no_input needs system_prompt"):
        alpaca(system_prompt_no_input="x")
