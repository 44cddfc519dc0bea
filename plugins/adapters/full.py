"""`full`: every weight of the model trains (or those matching `unfrozen_parameters`). The output is
a complete Hugging Face model.

adapter:
  type: full
  unfrozen_parameters: ['model\\.layers\\.1\\..*', 'lm_head\\..*']   # regexes; default: all train
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from trainer.api import (
    Adapter,
    BaseModelInfo,
    ConfigErrors,
    Options,
    Problem,
    TrainConfig,
    Training,
    full_training,
)


class FullOptions(Options):
    unfrozen_parameters: list[str] | None = Field(
        None,
        description="Regexes (re.search on parameter names such as 'model.layers.0.mlp.up_proj.weight'): "
        "only matching parameters train, the rest are frozen; empty or unset = all train",
    )


class Full(Adapter[FullOptions]):
    name = "full"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        for i, pattern in enumerate(self.options.unfrozen_parameters or []):
            try:
                re.compile(pattern)
            except re.error as err:
                problems.append(("unfrozen_parameters", f"item {i} {pattern!r} is not a valid regex: {err}"))
        return problems

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        patterns = [re.compile(p) for p in self.options.unfrozen_parameters or []]
        if not patterns:
            return full_training(base)
        return full_training(base, lambda name: any(p.search(name) for p in patterns))

    def prepare_model(self, model: Any, config: TrainConfig) -> Any:
        patterns = [re.compile(p) for p in self.options.unfrozen_parameters or []]
        if not patterns:
            return model
        matched = 0
        for name, param in model.named_parameters():
            train = any(p.search(name) for p in patterns)
            param.requires_grad_(train)
            matched += train
        if not matched:
            names = [name for name, _ in model.named_parameters()][:8]
            raise ConfigErrors(
                [
                    Problem(
                        ("adapter", "unfrozen_parameters"),
                        f"matches no parameter of the model, so nothing would train; names look like {names}",
                    )
                ]
            )
        return model
