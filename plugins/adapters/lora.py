"""`lora`: low-rank adapters through PEFT; the output is a PEFT adapter that loads on the base.

adapter:
  type: lora
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: all-linear      # or a list like [q_proj, v_proj]
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainer.api import Adapter, Contribution, Options
from trainer.config.schema import TrainConfig


class LoraOptions(Options):
    r: int = Field(16, gt=0, description="Rank of the update matrices")
    alpha: float = Field(32, gt=0, description="Scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' or module names such as [q_proj, v_proj]"
    )
    bias: Literal["none", "all", "lora_only"] = "none"


class Lora(Adapter):
    name = "lora"
    Options = LoraOptions

    def contribute(self, config: TrainConfig) -> Contribution:
        from peft import LoraConfig

        opts: LoraOptions = self.options  # type: ignore[assignment]
        target = opts.target_modules if isinstance(opts.target_modules, str) else list(opts.target_modules)
        peft_config = LoraConfig(
            r=opts.r,
            lora_alpha=opts.alpha,  # type: ignore[arg-type]
            lora_dropout=opts.dropout,
            target_modules=target,
            bias=opts.bias,
            task_type="CAUSAL_LM",
        )
        return Contribution(peft_config=peft_config)
