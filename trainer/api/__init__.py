"""The public API: everything a plugin may import from trainer, and nothing else.

Plugins (the built-ins under plugins/ and third-party packages) import from `trainer.api` only: the
plugin base classes and `Contribution` (trainer.api.contract), the resolved config that `check()`
and `contribute()` read (trainer.api.resolved), a torch-free description of the base model
(trainer.api.base_model), and the config types, problem reporting and optimizer table re-exported
below. A name not listed in `__all__` is internal and may change.
"""

from trainer.api.base_model import BaseModelInfo, describe_base_model
from trainer.api.contract import (
    BASES,
    DATA_SHAPES,
    Adapter,
    Attention,
    Callback,
    Contribution,
    Distributed,
    Eval,
    EvalContext,
    Formatter,
    Judged,
    Kernel,
    Method,
    Metric,
    Options,
    Plugin,
    Preference,
    PromptOnly,
    Reward,
    RowError,
    Segment,
    Sharding,
    TrainedTensor,
    Training,
    full_training,
)
from trainer.api.resolved import Chosen, Resolved
from trainer.config.errors import ConfigErrors, Problem, did_you_mean
from trainer.config.kinds import KINDS, PLUGIN_KINDS, PluginKind
from trainer.config.optimizers import OPTIMIZERS, Optimizer
from trainer.config.schema import DatasetSpec, TrainConfig

__all__ = [
    "BASES",
    "DATA_SHAPES",
    "KINDS",
    "OPTIMIZERS",
    "PLUGIN_KINDS",
    "Adapter",
    "Attention",
    "BaseModelInfo",
    "Callback",
    "Chosen",
    "ConfigErrors",
    "Contribution",
    "DatasetSpec",
    "Distributed",
    "Eval",
    "EvalContext",
    "Formatter",
    "Judged",
    "Kernel",
    "Method",
    "Metric",
    "Optimizer",
    "Options",
    "Plugin",
    "PluginKind",
    "Preference",
    "Problem",
    "PromptOnly",
    "Resolved",
    "Reward",
    "RowError",
    "Segment",
    "Sharding",
    "TrainConfig",
    "TrainedTensor",
    "Training",
    "describe_base_model",
    "did_you_mean",
    "full_training",
]
