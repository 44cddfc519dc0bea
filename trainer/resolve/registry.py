"""Plugin discovery through entry points: metadata first, import only when a plugin is chosen.

A `Registry` is built from the installed distributions (`Registry.discover()`) or from explicit
entries (tests). Two distributions claiming one name, a plugin that fails to import, or an unknown
name each produce a `PluginError` whose message names the distributions involved.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field

from trainer.api import BASES, KINDS, PLUGIN_KINDS, Plugin
from trainer.config.errors import did_you_mean

GROUP_PREFIX = "trainer."

IMPORT_PATH_MARKS = (".", ":", "/")
"""An unknown plugin name with one of these looks like an import path (`pkg.mod:Cls`): its error says
that plugins come only from installed entry points. No name is ever imported."""


FUNCTION_KINDS = frozenset(kind.group for kind in PLUGIN_KINDS if kind.function)
"""Kinds whose entry points name a plain callable, not a Plugin class."""


class PluginError(Exception):
    """A plugin that cannot be used: unknown, ambiguous, or broken."""


@dataclass
class Entry:
    """One registered plugin, known from metadata alone until `load()` is called."""

    kind: str
    name: str
    target: str
    distribution: str
    version: str
    _loaded: type[Plugin] | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)

    def load(self) -> type[Plugin]:
        """Import the plugin class (or, for a function kind, the callable); a failure becomes a
        PluginError naming the distribution."""
        if self._loaded is not None:
            return self._loaded
        if self._error is not None:
            raise PluginError(self._error)
        try:
            cls = md.EntryPoint(self.name, self.target, GROUP_PREFIX + self.kind).load()
            base = BASES[self.kind]
            if self.kind in FUNCTION_KINDS:
                if not callable(cls) or isinstance(cls, type):
                    raise TypeError(f"{self.target} is not a function (a trainer.api.{base.__name__})")
            elif not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{self.target} is not a subclass of trainer.api.{base.__name__}")
        except Exception as err:
            self._error = (
                f"{self.kind} plugin '{self.name}' from {self.distribution} {self.version} "
                f"failed to load: {type(err).__name__}: {err}"
            )
            raise PluginError(self._error) from None
        self._loaded = cls
        return cls

    def status(self) -> str:
        """'ok' or the import error, importing the plugin to find out."""
        try:
            self.load()
        except PluginError as err:
            return f"error: {err}"
        return "ok"


@dataclass
class Registry:
    """Plugins by kind and name. Conflicting claims are kept so that using them is an error."""

    entries: dict[str, dict[str, list[Entry]]] = field(default_factory=lambda: {kind: {} for kind in KINDS})

    @classmethod
    def discover(cls) -> Registry:
        """Read every installed distribution's `trainer.*` entry points (no plugin is imported)."""
        registry = cls()
        seen: set[tuple[str, str, str]] = set()
        for dist in md.distributions():
            dist_name = dist.metadata["Name"] or "<unknown>"
            for ep in dist.entry_points:
                if not ep.group.startswith(GROUP_PREFIX):
                    continue
                kind = ep.group[len(GROUP_PREFIX) :]
                key = (kind, ep.name, dist_name)
                if kind not in KINDS or key in seen:
                    continue
                seen.add(key)
                registry.add(Entry(kind, ep.name, ep.value, dist_name, dist.version))
        return registry

    def add(self, entry: Entry) -> None:
        self.entries[entry.kind].setdefault(entry.name, []).append(entry)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all_entries(self) -> list[Entry]:
        return [e for kind in KINDS for name in self.names(kind) for e in self.entries[kind][name]]

    def entry(self, kind: str, name: str) -> Entry:
        """The single entry for a name; unknown or doubly-claimed names raise PluginError."""
        claims = self.entries[kind].get(name, [])
        label = kind.rstrip("s") if kind != "attention" else "attention"
        if not claims:
            known = ", ".join(self.names(kind)) or "none installed"
            hint = ""
            if any(mark in name for mark in IMPORT_PATH_MARKS):
                hint = (
                    f". A plugin type is the name of an installed '{GROUP_PREFIX}{kind}' entry point, "
                    "never an import path (nothing named in a config is imported); "
                    "`python -m trainer.cli.plugins` lists the installed plugins"
                )
            raise PluginError(
                f"unknown {label} '{name}'{did_you_mean(name, self.names(kind))}; known: {known}{hint}"
            )
        if len(claims) > 1:
            who = " and ".join(f"{e.distribution} {e.version} ({e.target})" for e in claims)
            raise PluginError(f"{label} '{name}' is claimed by more than one distribution: {who}")
        return claims[0]

    def get(self, kind: str, name: str) -> type[Plugin]:
        """Import and return the plugin class for a name."""
        return self.entry(kind, name).load()


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry of installed plugins (discovered once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry.discover()
    return _DEFAULT
