"""Preference methods on prompt + chosen + rejected rows: `dpo`, `orpo`, `simpo` and `reward`.

    method: {type: dpo, beta: 0.1, loss_type: sigmoid}          # or [sigmoid, sft] with loss_weights
    method: {type: orpo, beta: 0.1}                              # no reference model
    method: {type: simpo, beta: 2.0, gamma: 0.5}                 # TRL's CPO trainer, loss_type simpo
    method: reward                                               # a one-score head on the base

Each runs TRL's trainer for it (ORPO and CPO/SimPO from trl.experimental in TRL 1.x). The data is
the `preference` formatter's (or any formatter whose `data` is "preference").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from trainer.api import Method, Options, TrainConfig

DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
"""TRL 1.16 DPOTrainer's loss types."""

PREFERENCE_METRICS = ("rewards/margins", "rewards/accuracies")


def trl_class(name: str, module: str = "") -> Any:
    """`name` from `trl` when the installed TRL exports it there, else from `trl.<module>` (TRL 1.x
    keeps ORPO and CPO under trl.experimental)."""
    import importlib
    import os

    import trl

    if hasattr(trl, name):
        return getattr(trl, name)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # chosen by config, not by accident
    return getattr(importlib.import_module(f"trl.{module}"), name)


def is_peft(config: TrainConfig) -> bool:
    adapter = config.plugin("adapter")
    return bool(getattr(adapter, "peft", False))


class DpoOptions(Options):
    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (KL weight)")
    loss_type: str | list[str] = Field(
        "sigmoid",
        description=f"TRL's DPO loss, or a list of them mixed by loss_weights: {', '.join(DPO_LOSSES)}",
    )
    loss_weights: list[float] | None = Field(None, description="One weight per loss_type (default: 1 each)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (robust, exo)"
    )
    reference: Literal["auto", "frozen_copy", "adapter_off"] = Field(
        "auto",
        description="The reference model: the base with the adapter switched off (automatic under "
        "LoRA/QLoRA: no second copy is held) or a frozen copy of the base (automatic for full training)",
    )
    precompute_ref_log_probs: bool = Field(
        False,
        description="Score the data with the reference once before training (stored beside the prepared "
        "dataset when dataset_prepared_path is set, so a second run does not recompute them); no "
        "reference model is held while training",
    )

    @field_validator("loss_type")
    @classmethod
    def _known_losses(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("give at least one loss type")
        unknown = [name for name in names if name not in DPO_LOSSES]
        if unknown:
            raise ValueError(f"unknown DPO loss {unknown[0]!r}; TRL's: {', '.join(DPO_LOSSES)}")
        return value


class Dpo(Method[DpoOptions]):
    """Direct preference optimisation against a frozen reference (TRL's DPOTrainer)."""

    name = "dpo"
    data = ("preference",)
    packing = True
    metrics = PREFERENCE_METRICS

    def trainer(self) -> tuple[type, type]:
        return trl_class("DPOTrainer"), trl_class("DPOConfig")

    def losses(self) -> list[str]:
        loss = self.options.loss_type
        return [loss] if isinstance(loss, str) else list(loss)

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        opts = self.options
        problems: list[str | tuple[str, str]] = []
        if opts.loss_weights is not None and len(opts.loss_weights) != len(self.losses()):
            problems.append(
                ("loss_weights", f"has {len(opts.loss_weights)} weights for {len(self.losses())} loss types")
            )
        if "exo_pair" in self.losses() and opts.label_smoothing == 0:
            problems.append(
                ("label_smoothing", "the exo_pair loss needs label_smoothing > 0 (the paper uses 1e-3)")
            )
        if opts.reference == "adapter_off" and not is_peft(config):
            name = getattr(config.plugin("adapter"), "name", "this adapter")
            problems.append(
                (
                    "reference",
                    f"adapter_off needs a PEFT adapter (lora, qlora); '{name}' trains the base weights, "
                    "so switching nothing off leaves no reference: use frozen_copy (or auto)",
                )
            )
        return problems

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        opts = self.options
        args: dict[str, Any] = {
            "beta": opts.beta,
            "loss_type": self.losses(),
            "label_smoothing": opts.label_smoothing,
            "precompute_ref_log_probs": opts.precompute_ref_log_probs,
        }
        if opts.loss_weights is not None:
            args["loss_weights"] = list(opts.loss_weights)
        return args

    def reference(self, peft: bool) -> str | None:
        if self.options.precompute_ref_log_probs and self.options.reference != "frozen_copy":
            return "adapter_off" if peft else "before_training"
        if self.options.reference == "frozen_copy" or not peft:
            return "copy"
        return "adapter_off"


class OrpoOptions(Options):
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term (lambda in the ORPO paper)")


class Orpo(Method[OrpoOptions]):
    """Odds-ratio preference optimisation: SFT on chosen plus an odds-ratio term, no reference."""

    name = "orpo"
    data = ("preference",)
    packing = True
    metrics = PREFERENCE_METRICS

    def trainer(self) -> tuple[type, type]:
        return trl_class("ORPOTrainer", "experimental.orpo"), trl_class("ORPOConfig", "experimental.orpo")

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        return {"beta": self.options.beta}


class SimpoOptions(Options):
    beta: float = Field(2.0, gt=0, description="Reward scale (SimPO's beta; the paper uses 2.0-2.5)")
    gamma: float = Field(0.5, ge=0, description="Target reward margin (TRL's simpo_gamma)")
    cpo_alpha: float = Field(
        0.0, ge=0, description="Weight of an added SFT loss on chosen (CPO; 0 = pure SimPO)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class Simpo(Method[SimpoOptions]):
    """SimPO: a length-normalised, reference-free margin loss (TRL's CPO trainer, loss_type simpo)."""

    name = "simpo"
    data = ("preference",)
    packing = True
    metrics = PREFERENCE_METRICS

    def trainer(self) -> tuple[type, type]:
        return trl_class("CPOTrainer", "experimental.cpo"), trl_class("CPOConfig", "experimental.cpo")

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        opts = self.options
        return {
            "loss_type": "simpo",
            "beta": opts.beta,
            "simpo_gamma": opts.gamma,
            "cpo_alpha": opts.cpo_alpha,
            "label_smoothing": opts.label_smoothing,
        }


class RewardOptions(Options):
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="Pull the mean reward towards 0 with this weight (Eisenstein et al. 2023)"
    )


class Reward(Method[RewardOptions]):
    """A reward model: a one-score head on the base, trained so chosen scores above rejected. The
    output loads with AutoModelForSequenceClassification."""

    name = "reward"
    data = ("preference",)
    model = "sequence_classification"
    metrics = ("accuracy", "margin")

    def trainer(self) -> tuple[type, type]:
        return trl_class("RewardTrainer"), trl_class("RewardConfig")

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        return {"center_rewards_coefficient": self.options.center_rewards_coefficient}

    def prepare_columns(self, dataset: Any, args: Any) -> Any:
        """TRL's reward rows are whole sequences: prompt + chosen, prompt + rejected."""

        def whole(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "chosen_ids": row["prompt_ids"] + row["chosen_ids"],
                "rejected_ids": row["prompt_ids"] + row["rejected_ids"],
            }

        return dataset.map(whole, remove_columns=["prompt_ids"], desc=None)
