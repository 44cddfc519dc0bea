"""`python -m trainer.cli.schema [--builtin] [-o FILE]`: JSON Schema of the config, for editors.

Each plugin block becomes a choice between the installed plugins' own options (keyed by `type`),
so an editor completes and checks plugin options too. `--builtin` limits it to the plugins shipped
with trainer (what schemas/trainer.schema.json holds).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from trainer.cli.common import run
from trainer.config.schema import LIST_PLUGIN_FIELDS, PLUGIN_FIELDS, DatasetSpec, TrainConfig
from trainer.resolve.registry import PluginError, Registry, default_registry

BUILTIN_DISTRIBUTION = "trainer"


def plugin_choices(registry: Registry, kind: str, builtin: bool, bare_names: bool) -> list[dict[str, Any]]:
    """One schema per plugin of a kind: its options plus `type: const name`."""
    choices: list[dict[str, Any]] = []
    for name in registry.names(kind):
        try:
            entry = registry.entry(kind, name)
            if builtin and entry.distribution != BUILTIN_DISTRIBUTION:
                continue
            cls = entry.load()
        except PluginError:
            continue
        schema = cls.Options.model_json_schema()
        schema.setdefault("properties", {})
        schema["properties"] = {"type": {"const": name}, **schema["properties"]}
        schema["required"] = ["type", *schema.get("required", [])]
        schema["title"] = f"{kind} plugin '{name}'"
        if cls.__doc__:
            schema["description"] = cls.__doc__.strip().splitlines()[0]
        choices.append(schema)
        if bare_names:
            choices.append({"const": name})
    return choices


def build_schema(registry: Registry, builtin: bool = False) -> dict[str, Any]:
    schema = TrainConfig.model_json_schema()
    props = schema["properties"]
    for key, kind in PLUGIN_FIELDS.items():
        props[key] = {
            "description": props[key].get("description", ""),
            "default": props[key].get("default"),
            "anyOf": plugin_choices(registry, kind, builtin, bare_names=True),
        }
    for key, kind in LIST_PLUGIN_FIELDS.items():
        props[key]["items"] = {"anyOf": plugin_choices(registry, kind, builtin, bare_names=True)}
    spec = DatasetSpec.model_json_schema()
    formatter_options = []
    for choice in plugin_choices(registry, "formatters", builtin, bare_names=False):
        merged = json.loads(json.dumps(choice))
        merged["properties"] = {**spec["properties"], **merged["properties"]}
        merged["required"] = sorted({*spec.get("required", []), *merged["required"]})
        merged["additionalProperties"] = False
        formatter_options.append(merged)
    props["datasets"]["items"] = {"anyOf": formatter_options}
    props["test_datasets"]["items"] = {"anyOf": formatter_options}
    schema.get("$defs", {}).pop("DatasetSpec", None)
    if not schema.get("$defs"):
        schema.pop("$defs", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trainer config"
    return schema


def render(builtin: bool = False) -> str:
    return json.dumps(build_schema(default_registry(), builtin), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.cli.schema", description=__doc__)
    parser.add_argument("--builtin", action="store_true", help="only the plugins shipped with trainer")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render(args.builtin)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    run(main)
