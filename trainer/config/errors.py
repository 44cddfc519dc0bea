"""Config problems: collected (never raised one by one) and printed as `FILE:LINE  path: message`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Path = tuple[str | int, ...]


def dotted(path: Sequence[str | int]) -> str:
    """Render ("datasets", 0, "type") as "datasets[0].type"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def printable(text: str) -> str:
    """`text` with newlines, tabs and other unprintable characters escaped (`\\n`, `\\x00`), so that a
    problem stays on one line and a terminal shows what the file holds."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Problem:
    """One config problem at a dotted path; `where` is 'file.yml:LINE' or an override.

    `machine`: the problem is this machine's, not the config's: its hardware (no GPU, an older GPU) or
    what is installed on it (a GPU package missing). The same file may be fine where it trains, so
    `validate --skip-machine-checks` prints these as notes instead of errors."""

    path: Path
    message: str
    where: str = ""
    machine: bool = False

    def render(self) -> str:
        prefix = f"{self.where}  " if self.where else ""
        return printable(f"{prefix}{dotted(self.path)}: {self.message}")


@dataclass
class ConfigErrors(Exception):
    """Every problem found in one config, reported together."""

    problems: list[Problem] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    """Lines printed before the count, about the problems as a whole (the file looks like another
    tool's config; some are this machine's): the count line and one line per problem follow."""

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        count = len(self.problems)
        head = f"{count} config error{'s' if count != 1 else ''}:"
        return "\n".join([*self.header, head, *(f"  {p.render()}" for p in self.problems)])
