"""`python -m trainer.cli.plugins`: every installed plugin with its kind, distribution and status."""

from __future__ import annotations

import argparse

from trainer.cli.common import run
from trainer.resolve.registry import default_registry


def rows() -> list[tuple[str, str, str, str, str]]:
    registry = default_registry()
    out = []
    for entry in registry.all_entries():
        status = entry.status()
        if len(registry.entries[entry.kind][entry.name]) > 1:
            status = "conflict: claimed by " + " and ".join(
                e.distribution for e in registry.entries[entry.kind][entry.name]
            )
        out.append((entry.kind, entry.name, entry.distribution, entry.version, status))
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m trainer.cli.plugins", description=__doc__).parse_args(argv)
    table = [("KIND", "NAME", "DISTRIBUTION", "VERSION", "STATUS"), *rows()]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4])
    return 0


if __name__ == "__main__":
    run(main)
