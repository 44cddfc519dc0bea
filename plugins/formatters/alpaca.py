"""`alpaca`: instruction / input / output rows in the Stanford Alpaca prompt format, or one of
Axolotl's other instruction prompt styles.

    datasets:
      - path: data/alpaca.json          # [{"instruction": ..., "input": ..., "output": ...}]
        type: alpaca
        prompt_style: instruct           # chat, chatml, phi, open_orca
        system_prompt: null              # default: the Alpaca preamble in the style's system format

The prompt (system text, instruction, optional input) is masked; the output and EOS are trained.
Rows with an empty or missing `input` use the no-input turn. The text of each style is Axolotl's
(`AlpacaPrompter` in axolotl/prompters.py, `OpenOrcaSystemDataPrompter` for open_orca), so a
converted Axolotl config trains on the same text:

    instruct  {system}\\n\\n |
              ### Instruction:\\n{instruction}\\n\\n[### Input:\\n{input}\\n\\n]### Response:\\n
    chat      SYSTEM: {system}\\n | USER: {instruction}\\n[{input}\\n]ASSISTANT:
    chatml    <|im_start|>system\\n{system}<|im_end|>\\n |
              <|im_start|>user\\n{instruction}[\\n{input}]<|im_end|>\\n<|im_start|>assistant\\n
    phi       <|system|>\\n{system}<|end|>\\n | <|user|>\\n{instruction}<|end|>\\n<|assistant|>\\n
              (with an input: <|user|>\\n{instruction}<|end|>{input}<|assistant|>, as Axolotl writes it)

A whitespace-only input counts as none here (Axolotl writes the input turn for it).

`turn_format`, `turn_no_input_format` and `system_format` replace the style's text (Axolotl's
user-defined dataset type: `{instruction}` and `{input}`, and `{system}`). `system_prompt` is the
text written before the turn as it is (the style's system format is not applied to it); `system_field`
reads the system text from each row instead (wrapped in the system format; an empty one writes none).
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, model_validator

from trainer.api import Formatter, Options, Segment

SYSTEM_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
PREAMBLE_WITH_INPUT = SYSTEM_WITH_INPUT + "\n\n"
PREAMBLE_NO_INPUT = SYSTEM_NO_INPUT + "\n\n"

STYLES: dict[str, tuple[str, str, str]] = {
    # style: (turn with input, turn without input, system format), as Axolotl's prompters write them
    "instruct": (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "{system}\n\n",
    ),
    "chat": (
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
        "SYSTEM: {system}\n",
    ),
    "chatml": (
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{system}<|im_end|>\n",
    ),
    # Axolotl's phi style, odd bits kept on purpose so converted configs train on the same text:
    # with an input the turn is '<|user|>\n{instruction}<|end|>{input}<|assistant|>' (the input sits
    # after <|end|>, with no newline around it or after <|assistant|>), unlike the no-input turn.
    "phi": (
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
        "<|system|>\n{system}<|end|>\n",
    ),
    "open_orca": (  # Axolotl's alpaca_w_system.load_open_orca
        "### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n",
        "### Human:\n{instruction}\n### Assistant:\n",
        "### System:\n{system}\n",
    ),
}
PLACEHOLDERS = {
    "turn_format": {"instruction", "input"},
    "turn_no_input_format": {"instruction"},
    "system_format": {"system"},
}


class AlpacaOptions(Options):
    instruction_field: str = "instruction"
    input_field: str | None = Field("input", description="Row field with the input; null: rows have none")
    output_field: str = "output"
    prompt_style: Literal["instruct", "chat", "chatml", "phi", "open_orca"] = Field(
        "instruct", description="The prompt text: Axolotl's alpaca prompt styles (type alpaca:chat, ...)"
    )
    system_prompt: str | None = Field(
        None,
        description="Text written before the turn as it is (replaces the Alpaca preamble, '' for none); "
        "default: the Alpaca system text in the style's system format",
    )
    system_prompt_no_input: str | None = Field(
        None, description="system_prompt for rows without input (default: system_prompt)"
    )
    system_field: str | None = Field(
        None,
        description="Row field with the system text, written in the system format (empty: none); rows "
        "without the field get system_prompt",
    )
    turn_format: str | None = Field(None, description="The turn with input ({instruction}, {input})")
    turn_no_input_format: str | None = Field(None, description="The turn without input ({instruction})")
    system_format: str | None = Field(None, description="How a system text is written ({system})")
    train_on_prompt: bool = False

    @model_validator(mode="after")
    def _placeholders(self) -> AlpacaOptions:
        for name, allowed in PLACEHOLDERS.items():
            text = getattr(self, name)
            if text is None:
                continue
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as err:
                raise ValueError(f"{name}: {err} (write a literal brace as {{{{ or }}}})") from None
            unknown = sorted(used - allowed)
            if unknown:
                named = ", ".join("{" + u + "}" for u in unknown)
                raise ValueError(f"{name} may use {sorted(allowed)} only, not {named}")
        if self.system_prompt_no_input is not None and self.system_prompt is None:
            raise ValueError("system_prompt_no_input needs system_prompt (the text for rows with input)")
        return self


class Alpaca(Formatter[AlpacaOptions]):
    name = "alpaca"

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        turn, turn_no_input, system_format = STYLES[opts.prompt_style]
        instruction = self.field(row, opts.instruction_field)
        context = self.field(row, opts.input_field, optional=True) if opts.input_field else ""
        output = self.field(row, opts.output_field)
        has_input = bool(context.strip())
        system_format = opts.system_format if opts.system_format is not None else system_format
        if opts.system_field is not None and opts.system_field in row:
            text = row[opts.system_field]
            if text is not None and not isinstance(text, str):
                self.field(row, opts.system_field)  # raises the RowError naming the field
            system = system_format.format(system=text) if text else ""
        elif has_input:
            default = system_format.format(system=SYSTEM_WITH_INPUT)
            system = default if opts.system_prompt is None else opts.system_prompt
        else:
            default = system_format.format(system=SYSTEM_NO_INPUT)
            given = opts.system_prompt if opts.system_prompt_no_input is None else opts.system_prompt_no_input
            system = default if given is None else given
        if has_input:
            prompt = system + (opts.turn_format or turn).format(instruction=instruction, input=context)
        else:
            prompt = system + (opts.turn_no_input_format or turn_no_input).format(instruction=instruction)
        return [Segment(prompt, train=opts.train_on_prompt), Segment(output, train=True)]
