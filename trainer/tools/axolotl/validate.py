"""A conversion checked by our own validation (as `validate --skip-machine-checks` checks a config)
before anything is written: each problem becomes a refusal of the Axolotl key whose value it is
about (FILE:LINE key: the value it became, and why ours rejects it), so a conversion either writes a
config that validates or exits 2 with refusals, never a half-working file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.tools.axolotl.convert import Conversion, Entry, convert
from trainer.tools.axolotl.emit import render

if TYPE_CHECKING:
    from trainer.config.errors import ConfigErrors


def check(text: str, name: str) -> ConfigErrors | None:
    """Our validation of the converted text (machine checks set aside), or None when it passes."""
    from trainer.config.errors import ConfigErrors
    from trainer.config.yaml_lines import load_yaml_text
    from trainer.resolve.registry import default_registry
    from trainer.resolve.validate import resolve

    data, source = load_yaml_text(text, name)
    try:
        resolve(data, source, [], default_registry(), skip_machine_checks=True)
    except ConfigErrors as err:
        return err
    return None


def convert_checked(path: str) -> Conversion:
    """`convert(path)`, with what our validation rejects in the result refused."""
    conversion = convert(path)
    if conversion.of("refused"):
        return conversion
    problems = check(render(conversion), path)
    for problem in problems.problems if problems is not None else []:
        key, where = _source_of(conversion, tuple(problem.path))
        ours = ".".join(str(part) for part in problem.path) or "the config"
        note = f"carried as {ours}, which this tool's validation rejects: {problem.message}"
        conversion.entries.append(Entry(key, where, "refused", note))
    return conversion


def _source_of(conversion: Conversion, path: tuple[Any, ...]) -> tuple[str, str]:
    """The Axolotl key a value of ours came from and its FILE:LINE (line 1 for a default written out)."""
    for cut in range(len(path), 0, -1):
        recorded = conversion.origins.get(path[:cut])
        if recorded:
            name = recorded.split(", ")[0]
            for entry in conversion.entries:
                if entry.key == name and entry.status == "carried":
                    return name, entry.where
            return f"{path[0]} ({name})", f"{conversion.source}:1"
    return str(path[0]) if path else "config", f"{conversion.source}:1"
