"""The plugin kinds, one row each. A row is all the core needs to know about a kind: its entry-point
group (`trainer.<group>`), its base class in `trainer.api`, and the config key that chooses it. The
schema's plugin keys, the resolved config, plugin discovery, the `plugins` and `schema` commands and
the docs' kind table all follow from this table (tests/test_architecture.py holds them to it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PluginKind:
    group: str
    """The entry-point group is `trainer.<group>`."""
    base: str
    """The base class a plugin of this kind subclasses, by its name in `trainer.api`."""
    key: str | None
    """The config key that chooses it (None: chosen elsewhere: formatters by each dataset's `type`,
    rewards by the method's `rewards`)."""
    many: bool = False
    """The key takes a list of blocks instead of one."""
    default: str | None = None
    """The plugin chosen when the key is absent (single-block keys)."""
    description: str = ""
    function: bool = False
    """The entry point names a plain callable (a function) instead of a `Plugin` class."""


PLUGIN_KINDS: tuple[PluginKind, ...] = (
    PluginKind("formatters", "Formatter", None, description="Turn each dataset's rows into trained text"),
    PluginKind(
        "methods",
        "Method",
        "method",
        default="sft",
        description="Training objective and its TRL trainer: sft, dpo, kto, orpo, simpo, reward, grpo",
    ),
    PluginKind(
        "adapters", "Adapter", "adapter", default="full", description="Which weights train: full, lora, ..."
    ),
    PluginKind(
        "attention",
        "Attention",
        "attention",
        default="sdpa",
        description="Attention kernel: eager, sdpa, ...",
    ),
    PluginKind(
        "distributed", "Distributed", "distributed", default="none", description="Processes: none, ddp, ..."
    ),
    PluginKind("callbacks", "Callback", "callbacks", many=True, description="Callback plugins"),
    PluginKind(
        "kernels",
        "Kernel",
        "kernels",
        many=True,
        description="Kernel plugins that swap modules or the loss for fused kernels: liger, ...",
    ),
    PluginKind(
        "evals",
        "Eval",
        "evals",
        many=True,
        description="Measurements run before and after training and by `evaluate`: loss, generation, lm_eval",
    ),
    PluginKind(
        "metrics",
        "Metric",
        None,
        description="Generation metrics: fn(predictions, references, **columns) -> float | list[float]",
        function=True,
    ),
    PluginKind(
        "rewards",
        "Reward",
        None,
        description="Reward functions grpo calls: fn(prompts, completions, **columns) -> list[float]",
        function=True,
    ),
)

KINDS = tuple(kind.group for kind in PLUGIN_KINDS)
"""Every kind's entry-point group name (public API)."""

PLUGIN_FIELDS = {k.key: k.group for k in PLUGIN_KINDS if k.key and not k.many}
"""Single-block plugin keys of TrainConfig and their kind."""

LIST_PLUGIN_FIELDS = {k.key: k.group for k in PLUGIN_KINDS if k.key and k.many}
"""Plugin-list keys of TrainConfig (any number of blocks each) and their kind."""
