"""`alpaca`: instruction / input / output rows in the Stanford Alpaca prompt format.

    datasets:
      - path: data/alpaca.json          # [{"instruction": ..., "input": ..., "output": ...}]
        type: alpaca
        system_prompt: null              # default: the Alpaca preamble

The prompt (preamble, instruction, optional input) is masked; the output and EOS are trained.
Rows with an empty or missing `input` use the no-input template.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.api import Formatter, Options, Segment

PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)


class AlpacaOptions(Options):
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    system_prompt: str | None = Field(
        None, description="Replaces the Alpaca preamble (with and without input) when set"
    )
    train_on_prompt: bool = False


class Alpaca(Formatter[AlpacaOptions]):
    name = "alpaca"

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        instruction = self.field(row, opts.instruction_field)
        context = self.field(row, opts.input_field, optional=True).strip()
        output = self.field(row, opts.output_field)
        if context:
            preamble = PREAMBLE_WITH_INPUT if opts.system_prompt is None else opts.system_prompt
            prompt = f"{preamble}### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
        else:
            preamble = PREAMBLE_NO_INPUT if opts.system_prompt is None else opts.system_prompt
            prompt = f"{preamble}### Instruction:\n{instruction}\n\n### Response:\n"
        return [Segment(prompt, train=opts.train_on_prompt), Segment(output, train=True)]
