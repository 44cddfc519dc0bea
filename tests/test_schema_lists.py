"""The hard-coded optimizer and scheduler names in trainer.config.schema (kept there so that
validate needs no torch) must equal the installed transformers' enums."""

from __future__ import annotations

from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from trainer.config.schema import OPTIMIZERS, SCHEDULERS, TrainConfig


def test_optimizers_match_transformers() -> None:
    assert sorted(OPTIMIZERS) == sorted(member.value for member in OptimizerNames)
    assert len(set(OPTIMIZERS)) == len(OPTIMIZERS)


def test_schedulers_match_transformers() -> None:
    assert sorted(SCHEDULERS) == sorted(member.value for member in SchedulerType)
    assert len(set(SCHEDULERS)) == len(SCHEDULERS)


def test_config_accepts_exactly_these_names() -> None:
    fields = TrainConfig.model_fields
    assert set(fields["optimizer"].annotation.__args__) == set(OPTIMIZERS)  # type: ignore[union-attr]
    assert set(fields["lr_scheduler"].annotation.__args__) == set(SCHEDULERS)  # type: ignore[union-attr]
