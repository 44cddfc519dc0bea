"""Command-line overrides: `key.sub=value` and `datasets[0].path=value`, values parsed as YAML."""

from __future__ import annotations

import re
from typing import Any

from trainer.config.errors import Path, Problem
from trainer.config.yaml_lines import YamlSyntaxError, load_value

_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[\d+\])*)")


def parse_key(key: str) -> Path:
    """'datasets[0].path' -> ('datasets', 0, 'path'); ValueError when malformed."""
    path: list[str | int] = []
    for part in key.split("."):
        match = _PART.fullmatch(part)
        if not match:
            raise ValueError(f"cannot parse key '{key}' (expected a.b or a[0].b)")
        path.append(match.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(path)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[list[Problem], dict[Path, str]]:
    """Apply overrides in place; returns problems and the path -> override text map."""
    problems: list[Problem] = []
    where: dict[Path, str] = {}
    for text in overrides:
        if "=" not in text:
            problems.append(Problem((), "an override must look like key.sub=value", f"override '{text}'"))
            continue
        key, raw = text.split("=", 1)
        try:
            path = parse_key(key.strip())
        except ValueError as err:
            problems.append(Problem((), str(err), f"override '{text}'"))
            continue
        try:
            value = load_value(raw) if raw.strip() else ""  # read like the file's values
        except YamlSyntaxError as err:
            problems.append(Problem(path, f"cannot read the value: {err.message}", f"override '{text}'"))
            continue
        error = _set(data, path, value)
        if error:
            problems.append(Problem(path, error, f"override '{text}'"))
        else:
            where[path] = text
    return problems, where


def _set(data: Any, path: Path, value: Any) -> str | None:
    node = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(part, int):
            if not isinstance(node, list):
                return "is not a list, cannot index it"
            if part >= len(node):
                if part == len(node) and last:
                    node.append(value)
                    return None
                return f"index {part} is out of range (the list has {len(node)} items)"
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            if not isinstance(node, dict):
                return "is not a mapping, cannot set a key in it"
            if last:
                node[part] = value
                continue
            if isinstance(node.get(part), str) and isinstance(path[i + 1], str):
                node[part] = {"type": node[part]}  # a bare plugin name becomes a block
            node = node.setdefault(part, {} if not isinstance(path[i + 1], int) else [])
    return None
