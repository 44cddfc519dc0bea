"""`prompt_completion`: a prompt field and a completion field; loss on the completion (+ EOS) only.

datasets:
  - path: data/train.jsonl          # {"prompt": "...", "generation": "..."}
    type: prompt_completion
    prompt_field: prompt
    completion_field: generation
    system_prompt: "You are terse.\\n"   # optional, prepended to every prompt (not trained)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.api import Formatter, Options, Segment


class PromptCompletionOptions(Options):
    prompt_field: str = Field("prompt", description="Row field holding the prompt")
    completion_field: str = Field("completion", description="Row field holding the answer")
    system_prompt: str = Field("", description="Text put before every prompt (not trained)")
    train_on_prompt: bool = Field(False, description="Also compute the loss on the prompt")


class PromptCompletion(Formatter[PromptCompletionOptions]):
    name = "prompt_completion"

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        prompt = self.field(row, opts.prompt_field)
        completion = self.field(row, opts.completion_field)
        return [
            Segment(opts.system_prompt + prompt, train=opts.train_on_prompt),
            Segment(completion, train=True),
        ]
