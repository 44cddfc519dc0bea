"""YAML loading that keeps line numbers: `load_yaml` returns the data plus a path -> line map.

Only the safe loader's node types are constructed (`yaml.safe_load` semantics, merge keys `<<`
included), except that `1e-4` (an exponent without a dot, YAML 1.2 style) is read as a float, not as a
string. What does not load (bad syntax, a duplicate key, a key that is a list or a mapping, a value its
tag cannot read, a `!!python/...` tag, nesting deeper than MAX_DEPTH, a recursive alias, a file that is
not UTF-8) is a `YamlSyntaxError` with the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainer.config.errors import Path

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists a config may have (PyYAML composes recursively)."""

MAX_VALUES = 100_000
"""Most values a config may expand to (aliases can repeat a subtree exponentially)."""

MERGE_TAG = "tag:yaml.org,2002:merge"
PYTHON_TAG = "tag:yaml.org,2002:python/"
"""`!!python/...` tags (objects, names, modules): refused by name, never constructed."""


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-4` / `2E5` as floats (PyYAML 1.1 reads strings) and
    refuses nesting deeper than MAX_DEPTH with the line, instead of exhausting Python's stack."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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
    duplicates: list[tuple[Path, int, int]] = field(default_factory=list)
    """Keys written twice, when the file was read with `last_wins`: (path, first line, last line)."""

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


class _Builder:
    """Plain data from a composed node tree, recording the line of every path on the way."""

    def __init__(self, loader: Loader, lines: dict[Path, int], duplicates: list[Any] | None = None):
        self.loader, self.lines = loader, lines
        self.duplicates = duplicates
        """None: a key written twice is an error; a list: the last value wins and it is recorded."""
        self.ancestors: set[int] = set()
        self.count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise YamlSyntaxError("", _line(node), f"expands to more than {MAX_VALUES} values (aliases?)")
        if str(node.tag).startswith(PYTHON_TAG):  # the safe loader could not build it anyway
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise YamlSyntaxError(
                "", _line(node), f"tag '{tag}' is refused: a config is plain data (no Python objects)"
            )
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self.lines[path] = _line(node)
            return self.scalar(node)
        if id(node) in self.ancestors:
            raise YamlSyntaxError("", _line(node), "an alias refers to a collection that contains it")
        default = "tag:yaml.org,2002:" + ("seq" if isinstance(node, yaml.SequenceNode) else "map")
        if node.tag != default:
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise YamlSyntaxError("", _line(node), f"tag '{tag}' is not supported on a {kind}")
        self.ancestors.add(id(node))
        try:
            self.lines[path] = _line(node)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.ancestors.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                merged.append(value_node)
                continue
            key = self.key(key_node)
            child = (*path, key)
            if key in out:
                if self.duplicates is None:
                    raise YamlSyntaxError("", _line(key_node), f"duplicate key '{key}'")
                self.duplicates.append((child, self.lines.get(child, 0), _line(key_node)))
            out[key] = self.build(value_node, child)
            self.lines[child] = _line(key_node)
        # `<<: *defaults` (YAML merge keys, as yaml.safe_load reads them): keys set here win, then
        # the first merged mapping that has the key.
        for value_node in merged:
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise YamlSyntaxError(
                        "", _line(source), "a merge key '<<' takes a mapping or a list of mappings"
                    )
                outer, self.lines = self.lines, {}
                try:
                    found = self.build(source, path)
                finally:
                    inner, self.lines = self.lines, outer
                for key, value in found.items():
                    if key not in out:
                        out[key] = value
                        child = (*path, key)
                        self.lines.update((p, n) for p, n in inner.items() if p[: len(child)] == child)
        return out

    def key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            raise YamlSyntaxError("", _line(node), f"a key must be a single value, not a {kind}")
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as err:  # e.g. `!!float abc`, `!!int 3.5`
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise YamlSyntaxError("", _line(node), f"cannot read {node.value!r} as {tag} ({err})") from None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def load_yaml_text(text: str, file: str, last_wins: bool = False) -> tuple[Any, SourceMap]:
    """Parse YAML text into plain data and a SourceMap of line numbers (an empty file is `{}`).
    A key written twice in one mapping is an error, or with `last_wins` (how `yaml.safe_load` reads
    it) the last value, recorded in `SourceMap.duplicates`."""
    source = SourceMap(file=file)
    data = _parse(text, file, source.lines, source.duplicates if last_wins else None)
    return ({} if data is _EMPTY else data), source


_EMPTY = object()


def _parse(text: str, file: str, lines: dict[Path, int], duplicates: list[Any] | None = None) -> Any:
    """The document's data (_EMPTY when there is none), recording lines; raises YamlSyntaxError."""
    loader: Loader | None = None
    try:
        loader = Loader(text)
        node = loader.get_single_node()
        data = _EMPTY if node is None else _Builder(loader, lines, duplicates).build(node, ())
    except YamlSyntaxError as err:
        raise YamlSyntaxError(file, err.line, err.message) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlSyntaxError(file, line, f"invalid YAML: {err.problem or err}") from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow, e.g. a control character
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        raise YamlSyntaxError(
            file,
            line,
            f"invalid YAML: character {char} at column {column} is not allowed (YAML takes "
            "printable characters only)",
        ) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(file, 0, f"invalid YAML: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data


def load_value(text: str) -> Any:
    """One value written in YAML (a command-line override), read like a config file's values; an
    empty document is None. Raises YamlSyntaxError (without a file; the line is within `text`)."""
    data = _parse(text, "", {})
    return None if data is _EMPTY else data


def load_yaml(path: str, last_wins: bool = False) -> tuple[Any, SourceMap]:
    """Read and parse a YAML file, keeping line numbers (`last_wins`: see load_yaml_text)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise YamlSyntaxError(
            path,
            line,
            f"not UTF-8 text: byte 0x{raw[err.start]:02x} at column {column} (save the file as UTF-8)",
        ) from None
    return load_yaml_text(text, path, last_wins)
