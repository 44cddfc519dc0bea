"""YAML loading that keeps line numbers: `load_yaml` returns the data plus a path -> line map.

Only the safe loader's node types are constructed (`yaml.safe_load` semantics), except that
`1e-4` (an exponent without a dot, YAML 1.2 style) is read as a float, not as a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.config.errors import Path


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-4` / `2E5` as floats (PyYAML 1.1 reads strings)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class SourceMap:
    """Where each value came from: a file with line numbers, plus command-line overrides."""

    file: str
    lines: dict[Path, int] = field(default_factory=dict)
    overrides: dict[Path, str] = field(default_factory=dict)

    def where(self, path: Path) -> str:
        """The most specific known location of `path` (or of its nearest parent)."""
        for cut in range(len(path), -1, -1):
            prefix = tuple(path[:cut])
            if prefix in self.overrides:
                return f"override '{self.overrides[prefix]}'"
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
        return self.file


class YamlSyntaxError(Exception):
    """A YAML file that does not parse; carries the line."""

    def __init__(self, file: str, line: int, message: str):
        super().__init__(f"{file}:{line}  {message}")
        self.file, self.line, self.message = file, line, message


def _construct(node: yaml.Node, path: Path, lines: dict[Path, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = Loader.construct_object(_LOADER, key_node, deep=True)  # type: ignore[arg-type]
            if key in out:
                raise YamlSyntaxError("", key_node.start_mark.line + 1, f"duplicate key '{key}'")
            child = (*path, key)
            out[key] = _construct(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return Loader.construct_object(_LOADER, node, deep=True)  # type: ignore[arg-type]


_LOADER = Loader("")


def load_yaml_text(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data and a SourceMap of line numbers."""
    source = SourceMap(file=file)
    try:
        node = yaml.compose(text, Loader=Loader)
        data = {} if node is None else _construct(node, (), source.lines)
    except YamlSyntaxError as err:
        raise YamlSyntaxError(file, err.line, err.message) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlSyntaxError(file, line, f"invalid YAML: {err.problem or err}") from None
    return data, source


def load_yaml(path: str) -> tuple[Any, SourceMap]:
    """Read and parse a YAML file, keeping line numbers."""
    with open(path, encoding="utf-8") as handle:
        return load_yaml_text(handle.read(), path)
