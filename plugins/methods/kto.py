"""`kto`: Kahneman-Tversky optimisation on rows judged desirable or not (TRL's KTOTrainer).

method: {type: kto, beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0}
datasets:
  - path: judged.jsonl     # {"prompt": ..., "completion": ..., "label": true}
    type: kto
  - path: prefs.jsonl      # pairs work too: chosen is desirable, rejected undesirable
    type: preference
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from plugins.methods.preference import trl_class
from trainer.api import Method, Options, TrainConfig


class KtoOptions(Options):
    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference")
    desirable_weight: float = Field(1.0, gt=0, description="Loss weight of desirable rows")
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable rows")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="TRL's KTO loss")
    reference: Literal["auto", "frozen_copy", "adapter_off"] = Field(
        "auto", description="As dpo's: the adapter switched off under LoRA/QLoRA, else a frozen copy"
    )


class Kto(Method[KtoOptions]):
    """KTO: desirable completions up, undesirable ones down, against a reference and a KL estimate."""

    name = "kto"
    data = ("unpaired", "preference")
    packing = True  # padding-free batches; not sample_packing (see check)
    metrics = ("rewards/margins", "rewards/chosen", "rewards/rejected")

    def trainer(self) -> tuple[type, type]:
        return trl_class("KTOTrainer"), trl_class("KTOConfig")

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        if self.options.loss_type == "kto" and config.micro_batch_size < 2:
            problems.append(
                "the kto loss estimates its KL term from the other rows of a micro-batch: set "
                "micro_batch_size to 2 or more (or loss_type: apo_zero_unpaired)"
            )
        if config.sample_packing and self.options.loss_type == "kto":
            problems.append(
                (
                    "loss_type",
                    "the kto loss pairs each row with a micro-batch neighbour's completion for its KL term, "
                    "which packed micro-batches of changing size would break: use sample_packing: false "
                    "(batches are padding-free anyway) or loss_type: apo_zero_unpaired",
                )
            )
        if self.options.reference == "adapter_off" and not getattr(config.plugin("adapter"), "peft", False):
            problems.append(("reference", "adapter_off needs a PEFT adapter (lora, qlora): use frozen_copy"))
        return problems

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        opts = self.options
        args: dict[str, Any] = {
            "beta": opts.beta,
            "desirable_weight": opts.desirable_weight,
            "undesirable_weight": opts.undesirable_weight,
            "loss_type": opts.loss_type,
        }
        if opts.loss_type == "kto":  # each row's KL completion is its micro-batch neighbour's
            args["train_sampling_strategy"] = "sequential"  # the data pipeline shuffled already
        return args

    def reference(self, peft: bool) -> str | None:
        return "adapter_off" if peft and self.options.reference != "frozen_copy" else "copy"

    def prepare_columns(self, dataset: Any, args: Any) -> Any:
        """The KL term's mismatched completions, as TRL 1.16 builds them: within each micro-batch,
        row i gets row i-1's completion."""
        if args.loss_type != "kto":
            return dataset

        def rotate(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
            completions = rows["completion_ids"]
            return {"KL_completion_ids": completions[-1:] + completions[:-1]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
