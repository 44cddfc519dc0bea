"""Axolotl's instruction dataset types (`alpaca:phi`, `alpaca_chat.load_qa`, `alpaca_w_system.*`, a
user-defined `type:` dict, ...) as options of our `alpaca` formatter.

Each entry reproduces the text Axolotl's prompter writes (axolotl/prompters.py and
axolotl/prompt_strategies/alpaca_chat.py, alpaca_instruct.py, alpaca_w_system.py, user_defined.py,
creative_acr.py): the prompt is masked unless train_on_inputs, the response and the tokenizer's EOS
are trained, as Axolotl's InstructionPromptTokenizingStrategy does. Types whose rows Axolotl reshapes
beyond a field rename (jeopardy's "what is " answer prefix, the multiple-choice lists, context_qa's
article + question join, creative_acr's YAML critiques, ...) are left refused.
"""

from __future__ import annotations

import string
from typing import Any

STYLES = ("instruct", "chat", "chatml", "phi")
"""Axolotl's PromptStyle values (our alpaca prompt_style of the same name)."""
CHAT: dict[str, Any] = {"prompt_style": "chat"}
CONCISE_WITH_INPUT = (
    "Below is an instruction from a USER that describes a task, paired with an input that provides "
    "further context. The ASSISTANT writes a response that concisely and appropriately completes the "
    "request.\n\n"
)
CONCISE_NO_INPUT = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n"
)
CREATIVE_ANSWER = (
    "Answer the following question in a comprehensive, in-depth, and creative way. Additionally your "
    "response should be relevant, accurate, and free of any ambiguity."
)
ROW_SYSTEM: dict[str, Any] = {"system_field": "system", "system_prompt": ""}
CHAT_QA = f"SYSTEM: {CONCISE_NO_INPUT}\n"
"""AlpacaChatPrompter's system text in the chat format (its rows never have an input)."""
ALPACA_CHAT = ("alpaca_chat", "alpaca_chat.load")
"""The types whose entry's `conversation:` picks the prompt style."""
OPEN_ORCA: dict[str, Any] = {"instruction_field": "question", "input_field": None, "output_field": "response",
                             "system_field": "system_prompt", "system_prompt": ""}  # fmt: skip

VARIANTS: dict[str, dict[str, Any]] = {
    "alpaca_instruct": {},
    "alpaca_instruct.load": {},
    "alpaca_instruct.load_no_prompt": {"system_prompt": ""},
    "alpaca_chat": CHAT,  # or the entry's `conversation:` style
    "alpaca_chat.load": CHAT,
    "alpaca_chat.load_no_prompt": {**CHAT, "system_prompt": ""},
    # The concise texts end in "\n\n" and the chat system format adds "\n": three newlines, as Axolotl.
    "alpaca_chat.load_concise": {**CHAT, "system_prompt": f"SYSTEM: {CONCISE_WITH_INPUT}\n",
                                 "system_prompt_no_input": f"SYSTEM: {CONCISE_NO_INPUT}\n"},
    "alpaca_chat.load_qa": {**CHAT, "instruction_field": "question", "input_field": None,
                            "output_field": "answer", "system_prompt": CHAT_QA},
    "alpaca_chat.load_camel_ai": {**CHAT, "instruction_field": "message_1", "input_field": None,
                                  "output_field": "message_2", "system_prompt": CHAT_QA},
    "alpaca_w_system": {**CHAT, **ROW_SYSTEM},
    "alpaca_w_system.load": {**CHAT, **ROW_SYSTEM},
    "alpaca_w_system.load_chat": {**CHAT, **ROW_SYSTEM},
    "alpaca_w_system.load_instruct": ROW_SYSTEM,
    "alpaca_w_system.load_open_orca": {"prompt_style": "open_orca", **OPEN_ORCA},
    "alpaca_w_system.load_open_orca_chatml": {"prompt_style": "chatml", **OPEN_ORCA},
    "creative_acr.load_answer": {**CHAT, "input_field": None, "output_field": "revision",
                                 "system_prompt": CREATIVE_ANSWER + "\n"},
}  # fmt: skip
BY_STYLE: dict[str, dict[str, Any]] = {  # Axolotl's DATASET_HANDLERS that take `type: NAME:STYLE`
    "alpaca": {},
    "oasst": {"instruction_field": "INSTRUCTION", "input_field": None, "output_field": "RESPONSE"},
    "gpteacher": {"output_field": "response"},
}
SUMMARIZE_TLDR: dict[str, Any] = {  # SummarizeTLDRPrompter ignores the style
    "instruction_field": "article", "input_field": None, "output_field": "summary", "system_prompt": "",
    "turn_no_input_format": "USER: Summarize the following article as a TL;DR.\n{instruction}\nASSISTANT:",
}  # fmt: skip
USER_DEFINED_DEFAULTS = {"system_prompt": "", "field_system": "system", "field_instruction": "instruction",
                         "field_input": "input", "field_output": "output", "format": "{instruction} {input} ",
                         "no_input_format": "{instruction} ", "system_format": "{system}"}  # fmt: skip
"""Axolotl's UserDefinedDatasetConfig defaults (a null key in the dict takes them)."""
PLACEHOLDERS = {"format": {"instruction", "input"}, "no_input_format": {"instruction"},
                "system_format": {"system"}}  # fmt: skip


def instruction_options(kind: Any, entry: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Our alpaca options for an Axolotl dataset type, and a note: (options, how) when carried,
    (None, why) when the type is an instruction type refused here, (None, "") when it is none."""
    if isinstance(kind, dict):
        return user_defined(kind)
    if not isinstance(kind, str):
        return None, ""
    base, colon, style = kind.partition(":")
    if base == "summarizetldr":
        return dict(SUMMARIZE_TLDR), "Axolotl's summarizetldr text"
    if base in BY_STYLE and colon:
        if style not in STYLES:
            return None, f"prompt style '{style}' is not one of Axolotl's ({', '.join(STYLES)})"
        return {**BY_STYLE[base], **_style(style)}, f"Axolotl's {style} prompt text"
    if kind in BY_STYLE:
        return dict(BY_STYLE[kind]), "Axolotl's instruct prompt text"
    if kind in VARIANTS:
        options = dict(VARIANTS[kind])
        conversation = entry.get("conversation")
        if kind in ALPACA_CHAT and conversation is not None:
            if conversation not in STYLES:
                return (
                    None,
                    f"conversation: {conversation!r} is not one of Axolotl's prompt styles ({STYLES})",
                )
            options.update(_style(conversation))
        return options, f"Axolotl's {kind} text"
    return None, ""


def _style(style: str) -> dict[str, Any]:
    return {} if style == "instruct" else {"prompt_style": style}


def user_defined(kind: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """A `type:` dict (Axolotl's user_defined prompt): its formats and fields."""
    given = {**USER_DEFINED_DEFAULTS, **{k: v for k, v in kind.items() if v is not None}}
    for key, allowed in PLACEHOLDERS.items():
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(given[key]) if f is not None}
        except ValueError as err:
            return None, f"type.{key} is not a format string: {err}"
        if used - allowed:
            return None, f"type.{key} uses {sorted(used - allowed)}; Axolotl fills only {sorted(allowed)}"
    system = given["system_prompt"]
    options: dict[str, Any] = {
        "instruction_field": given["field_instruction"],
        "input_field": given["field_input"],
        "output_field": given["field_output"],
        "system_field": given["field_system"],
        # rows without the system column get the dict's system_prompt, in the system format
        "system_prompt": given["system_format"].format(system=system) if system else "",
        "turn_format": given["format"],
        "turn_no_input_format": given["no_input_format"],
        "system_format": given["system_format"],
    }
    return options, "Axolotl's user-defined prompt formats"
