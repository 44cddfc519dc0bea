"""`galore`: full-parameter training with a GaLore optimizer (gradient low-rank projection).

Every weight trains and the output is a complete Hugging Face model, as with `full`; the
difference is the optimizer state: for the targeted linear weights (m x n) the Adam moments live in
a rank-r projection of the gradient (r x n or m x r), which is where the memory saving comes from.
Everything else (embeddings, norms, biases, untargeted linears) gets a plain full-size state.

optimizer: galore_adamw           # or galore_adamw_8bit, galore_adafactor, *_layerwise
adapter:
  type: galore
  rank: 128                       # projection rank (at most min(m, n) of the targeted weights)
  update_proj_gap: 200            # steps between recomputing the projection (an SVD per weight)
  scale: 0.25                     # scale of the projected-back update
  proj_type: std                  # std, reverse_std, left, right, full
  target_modules: [".*attn.*", ".*attention.*", ".*mlp.*"]

Targets are matched by transformers the way `optim_target_modules` is: an entry equal to a module
name or contained in it, or a regex that matches the whole module name; only `nn.Linear` modules are
projected. The layer-wise variants step each parameter during backward, so they cannot accumulate
gradients (gradient_accumulation_steps must be 1) and transformers refuses them under DDP.
The GaLore package (and bitsandbytes for the 8-bit variants) is checked at validate time through
the `optimizer` key, so this plugin declares no `requires` of its own (one message, not two).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from trainer.api import (
    OPTIMIZERS,
    Adapter,
    BaseModelInfo,
    ConfigErrors,
    Contribution,
    Options,
    Problem,
    TrainConfig,
    Training,
    full_training,
)

GALORE_OPTIMIZERS = tuple(name for name in OPTIMIZERS if name.startswith("galore_"))
BROKEN = ("galore_adafactor_layerwise",)
"""Refused at validate time: transformers 5.x cannot build it (see check())."""
DEFAULT_TARGETS = (".*attn.*", ".*attention.*", ".*mlp.*")


class GaLoreOptions(Options):
    rank: int = Field(128, gt=0, description="Rank of the gradient projection")
    update_proj_gap: int = Field(200, gt=0, description="Optimizer steps between projection updates")
    scale: float = Field(0.25, gt=0, description="Scale of the projected-back update")
    proj_type: Literal["std", "reverse_std", "left", "right", "full"] = Field(
        "std", description="Which side is projected: std = the smaller dimension"
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        min_length=1,
        description="Linear modules whose gradients are projected: names, substrings or full-match "
        "regexes (transformers' optim_target_modules), or 'all-linear'",
    )


class GaLore(Adapter[GaLoreOptions]):
    name = "galore"
    sets_optim_target_modules = True

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        """Full training, the targeted matrices' optimizer state on rank-`rank` projections."""
        targets = self.options.target_modules
        linears = base.linear_layers()
        if isinstance(targets, str):
            chosen = set(linears)
        else:
            chosen = {m for m in linears if any(_transformers_selects(t, m) for t in targets)}
        training = full_training(base)
        training.trainable = [
            replace(t, projected_rank=self.options.rank) if t.name.removesuffix(".weight") in chosen else t
            for t in training.trainable
        ]
        return training

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        optimizer = config.optimizer
        if optimizer not in GALORE_OPTIMIZERS:
            problems.append(
                f"needs a GaLore optimizer: set the top-level optimizer to one of "
                f"{', '.join(n for n in GALORE_OPTIMIZERS if n not in BROKEN)} (it is '{optimizer}')"
            )
        elif optimizer == "galore_adafactor_layerwise":
            # transformers builds the per-parameter Adafactors before it turns relative_step off, so
            # each one raises "Cannot combine manual `lr` and `relative_step=True` options".
            problems.append(
                "optimizer 'galore_adafactor_layerwise' fails to start in transformers (its per-layer "
                "Adafactor gets relative_step=True with an lr); use galore_adafactor or "
                "galore_adamw_layerwise"
            )
        elif optimizer.endswith("_layerwise"):
            if config.gradient_accumulation_steps != 1:
                problems.append(
                    f"optimizer '{optimizer}' steps each layer during backward and cannot accumulate "
                    f"gradients: set gradient_accumulation_steps to 1 (it is "
                    f"{config.gradient_accumulation_steps}), or use '{optimizer.removesuffix('_layerwise')}'"
                )
            distributed = config.plugin("distributed")
            if distributed is not None and distributed.world_size() > 1:
                problems.append(
                    f"optimizer '{optimizer}' does not support multi-process (DDP) training in "
                    f"transformers; use '{optimizer.removesuffix('_layerwise')}' or distributed: none"
                )
        targets = self.options.target_modules
        if isinstance(targets, list):
            for pattern in targets:
                try:
                    re.compile(pattern)
                except re.error as err:
                    problems.append(("target_modules", f"not a valid regular expression '{pattern}': {err}"))
        return problems

    def contribute(self, config: TrainConfig) -> Contribution:
        opts = self.options
        targets = opts.target_modules if isinstance(opts.target_modules, str) else list(opts.target_modules)
        optim_args = (
            f"rank={opts.rank},update_proj_gap={opts.update_proj_gap},"
            f"scale={opts.scale},proj_type={opts.proj_type}"
        )
        return Contribution(sft_args={"optim_target_modules": targets, "optim_args": optim_args})

    def prepare_model(self, model: Any, config: TrainConfig) -> Any:
        """Fail before training (with the option's path) when no linear module is targeted."""
        targets = self.options.target_modules
        linear = targeted_linears(model, targets)
        if not linear:
            names = sorted({name.rsplit(".", 1)[-1] for name in _linear_names(model)})
            raise ConfigErrors(
                [
                    Problem(
                        ("adapter", "target_modules"),
                        f"{targets!r} matches no nn.Linear module of the model; its linear modules "
                        f"are named {', '.join(names)}",
                    )
                ]
            )
        return model


def _transformers_selects(target: str, module: str) -> bool:
    """transformers' optim_target_modules rule for one entry: a substring or a full-match regex."""
    try:
        return target in module or re.fullmatch(target, module) is not None
    except re.error:
        return False


def targeted_linears(model: Any, targets: str | list[str]) -> list[str]:
    """Names of the nn.Linear modules GaLore projects, matched exactly as transformers does."""
    from transformers.trainer_utils import check_target_module_exists

    if isinstance(targets, str) and targets.replace("_", "-") == "all-linear":
        return _linear_names(model)
    return [name for name in _linear_names(model) if check_target_module_exists(targets, name)]


def _linear_names(model: Any) -> list[str]:
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
