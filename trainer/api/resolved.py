"""The resolved config a run is built from: the validated `TrainConfig` and the plugin chosen for
each plugin field, instantiated with its typed options. Made by `trainer.resolve.validate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from trainer.api.contract import Adapter, Attention, Callback, Distributed, Formatter, Kernel, Method, Plugin
from trainer.config.errors import Path, Problem
from trainer.config.kinds import LIST_PLUGIN_FIELDS, PLUGIN_FIELDS, PLUGIN_KINDS
from trainer.config.schema import TrainConfig
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
    """A validated config with its plugins instantiated: `chosen` holds, for every plugin key of the
    kind table (trainer.config.kinds), the chosen plugin (a list for list keys); `formatters` and
    `test_formatters` the formatter of each dataset. The typed properties below are shorthands."""

    config: TrainConfig
    source: SourceMap
    chosen: dict[str, Any] = field(default_factory=dict)
    formatters: list[Chosen[Formatter[Any]]] = field(default_factory=list)
    test_formatters: list[Chosen[Formatter[Any]]] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    """This machine's problems with the config, set aside by `validate --skip-machine-checks` (each a
    `Problem.machine` with its file:line); empty otherwise."""

    @property
    def method(self) -> Chosen[Method[Any]]:
        return self.chosen["method"]

    @property
    def adapter(self) -> Chosen[Adapter[Any]]:
        return self.chosen["adapter"]

    @property
    def attention(self) -> Chosen[Attention[Any]]:
        return self.chosen["attention"]

    @property
    def distributed(self) -> Chosen[Distributed[Any]]:
        return self.chosen["distributed"]

    @property
    def callbacks(self) -> list[Chosen[Callback[Any]]]:
        return list(self.chosen.get("callbacks", []))

    @property
    def kernels(self) -> list[Chosen[Kernel[Any]]]:
        return list(self.chosen.get("kernels", []))

    def plugins(self) -> list[Chosen[Any]]:
        """Every chosen plugin: the datasets' formatters, then each plugin key in the table's order."""
        out: list[Chosen[Any]] = [*self.formatters, *self.test_formatters]
        for kind in PLUGIN_KINDS:
            if kind.key is not None:
                item = self.chosen[kind.key]
                out += item if isinstance(item, list) else [item]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config with every default filled in and plugin blocks expanded; re-runnable."""
        data = self.config.model_dump(mode="json")
        for key in PLUGIN_FIELDS:
            data[key] = _block(self.chosen[key])
        for key in LIST_PLUGIN_FIELDS:
            data[key] = [_block(c) for c in self.chosen[key]]
        for key, chosen_list in (("datasets", self.formatters), ("test_datasets", self.test_formatters)):
            data[key] = [
                {**spec.model_dump(mode="json", exclude=set(spec.model_extra or {})), **_block(chosen)}
                for spec, chosen in zip(getattr(self.config, key), chosen_list, strict=True)
            ]
        return data


def _block(chosen: Chosen) -> dict[str, Any]:
    return {"type": chosen.entry.name, **chosen.plugin.options.model_dump(mode="json")}
