"""Write a conversion as our YAML: each top-level value with a comment naming the Axolotl keys it
came from, the environment the run needs, and every dropped key with its note at the end."""

from __future__ import annotations

from typing import Any

import yaml

from trainer.tools.axolotl.convert import Conversion


def _origins(conversion: Conversion, key: str) -> str:
    """The Axolotl keys behind our top-level `key`, as a comment."""
    names = [
        e.key
        for e in conversion.entries
        if e.status == "carried" and (e.note.startswith(f"-> {key}") or e.note.startswith(f"-> {key}."))
    ]
    recorded = conversion.origins.get((key,), "")
    for part in (p.strip() for p in recorded.split(",")):
        if part and part not in names:
            names.append(part)
    return ", ".join(dict.fromkeys(names))


def render(conversion: Conversion) -> str:
    lines = [
        f"# Converted from the Axolotl config {conversion.source} by `trainer convert`.",
        "# Each value names the Axolotl key(s) it came from; dropped keys are listed at the end.",
    ]
    if conversion.env:
        lines.append("# The run needs this environment (Axolotl set it from the config):")
        lines += [f"#   export {name}={value}" for name, value in conversion.env.items()]
    for key, value in conversion.config.items():
        block = _dump({key: value})
        origin = _origins(conversion, key)
        if origin:
            block[0] += f"  # {origin}"
        lines += block
    dropped = conversion.of("dropped")
    if dropped:
        lines += ["", f"# Dropped ({len(dropped)}): no effect on what trains here, or Axolotl's own default"]
        lines += [f"#   {e.where}  {e.key}: {e.note}" for e in dropped]
    return "\n".join(lines) + "\n"


def _dump(value: Any) -> list[str]:
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return text.rstrip("\n").split("\n")
