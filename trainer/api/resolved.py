"""The resolved config a run is built from: the validated `TrainConfig` and the plugin chosen for
each plugin field, instantiated with its typed options. Made by `trainer.resolve.validate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from trainer.api.contract import Adapter, Attention, Callback, Distributed, Formatter, Kernel, Plugin
from trainer.config.errors import Path
from trainer.config.schema import LIST_PLUGIN_FIELDS, PLUGIN_FIELDS, TrainConfig
from trainer.config.yaml_lines import SourceMap

PluginT = TypeVar("PluginT", bound=Plugin[Any])


class PluginSource(Protocol):
    """Where a chosen plugin came from (a `trainer.resolve.registry.Entry`)."""

    kind: str
    name: str
    distribution: str
    version: str


@dataclass
class Chosen(Generic[PluginT]):
    """A plugin chosen by the config: where it was chosen, its registry entry and its instance."""

    path: Path
    entry: PluginSource
    plugin: PluginT


@dataclass
class Resolved:
    """A validated config with its plugins instantiated."""

    config: TrainConfig
    source: SourceMap
    adapter: Chosen[Adapter[Any]]
    attention: Chosen[Attention[Any]]
    distributed: Chosen[Distributed[Any]]
    callbacks: list[Chosen[Callback[Any]]] = field(default_factory=list)
    kernels: list[Chosen[Kernel[Any]]] = field(default_factory=list)
    formatters: list[Chosen[Formatter[Any]]] = field(default_factory=list)
    test_formatters: list[Chosen[Formatter[Any]]] = field(default_factory=list)

    def plugins(self) -> list[Chosen[Any]]:
        return [
            *self.formatters,
            *self.test_formatters,
            self.adapter,
            self.attention,
            self.distributed,
            *self.callbacks,
            *self.kernels,
        ]

    def to_dict(self) -> dict[str, Any]:
        """The config with every default filled in and plugin blocks expanded; re-runnable."""
        data = self.config.model_dump(mode="json")
        for key in PLUGIN_FIELDS:
            data[key] = _block(getattr(self, key))
        for key in LIST_PLUGIN_FIELDS:
            data[key] = [_block(c) for c in getattr(self, key)]
        for key, chosen_list in (("datasets", self.formatters), ("test_datasets", self.test_formatters)):
            data[key] = [
                {**spec.model_dump(mode="json", exclude=set(spec.model_extra or {})), **_block(chosen)}
                for spec, chosen in zip(getattr(self.config, key), chosen_list, strict=True)
            ]
        return data


def _block(chosen: Chosen) -> dict[str, Any]:
    return {"type": chosen.entry.name, **chosen.plugin.options.model_dump(mode="json")}
