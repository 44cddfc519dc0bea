"""The core's shape, held by tests: no import cycle in `trainer/` (function-level imports count: they
are cycles waiting for a refactor), no layer importing a higher one, plugins importing only
`trainer.api`, and framework internals used only inside trainer/training, each with a version note."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO


def core_imports() -> dict[str, set[str]]:
    """trainer module -> the trainer modules it imports (anywhere in the file)."""
    files = {}
    for path in (REPO / "trainer").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {
        name: {target for target in imported_modules(path) if target in files and target != name}
        for name, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (depth-first search)."""
    found, done, path = [], set(), []

    def visit(node: str) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return found


def test_the_core_has_no_import_cycle() -> None:
    graph = core_imports()
    assert "trainer.runtime.build" in graph["trainer.runtime.run"]  # the graph is read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


LAYERS = (
    ("trainer.config",),
    ("trainer.api",),
    ("trainer.resolve",),
    ("trainer.data",),
    ("trainer.outputs",),
    ("trainer.training",),
    ("trainer.inference", "trainer.evaluation"),
    ("trainer.runtime",),
    ("trainer.tools",),
    ("trainer.cli",),
)
"""The core's layers, lowest first (docs/architecture.md draws them): a module may import its own
layer and those below it, never one above."""

FRAMEWORKS = ("transformers", "trl", "accelerate", "peft", "torch", "deepspeed", "bitsandbytes")
FENCE = "trainer/training/"


def layer_of(module: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if any(module.startswith(n) for n in names)), None)


def test_every_core_module_is_in_a_layer() -> None:
    unplaced = [name for name in core_imports() if name != "trainer" and layer_of(name) is None]
    assert unplaced == []


def test_no_layer_imports_a_higher_one() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in core_imports().items()
        for target in targets
        if name != "trainer" and target != "trainer" and layer_of(target) > layer_of(name)  # type: ignore[operator]
    ]
    assert upward == []


def test_the_layer_check_finds_an_upward_import() -> None:
    assert layer_of("trainer.config.schema") == 0 and layer_of("trainer.cli.train") == len(LAYERS) - 1
    assert layer_of("trainer.runtime.run") > layer_of("trainer.training.sft")  # type: ignore[operator]


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_plugins_import_only_the_public_api() -> None:
    files = sorted((REPO / "plugins").rglob("*.py")) + sorted((REPO / "examples").rglob("*.py"))
    assert len(files) > 20
    reaching = {
        str(path.relative_to(REPO)): sorted(
            {
                m
                for m in imported_modules(path)
                if m.startswith("trainer.") and not m.startswith("trainer.api")
            }
        )
        for path in files
    }
    assert {path: found for path, found in reaching.items() if found} == {}


def private_framework_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of a framework's private API in a file: `from transformers.x import
    _name`, or an attribute `_name` read on anything but `self`/`cls` (a trainer's `_metrics`, a
    module's `_buffers`, `PartialState._shared_state`, `super()._save`), plus assignments to `.data`
    and `.save_pretrained`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in FRAMEWORKS:
            found += [
                (node.lineno, f"import {node.module}.{a.name}") for a in node.names if a.name.startswith("_")
            ]
        elif isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if private and owner not in ("self", "cls", "os", "sys"):  # os._exit is the stdlib's
                found.append((node.lineno, f".{node.attr}"))
            if node.attr in ("data", "save_pretrained") and isinstance(node.ctx, ast.Store):
                found.append((node.lineno, f".{node.attr} ="))
    return sorted(found)


def test_framework_internals_are_used_only_inside_the_fence() -> None:
    outside = {}
    for path in [*(REPO / "trainer").rglob("*.py"), *(REPO / "plugins").rglob("*.py")]:
        relative = str(path.relative_to(REPO))
        if relative.startswith(FENCE):
            continue
        uses = [what for _, what in private_framework_uses(path.read_text(encoding="utf-8"))]
        if uses:
            outside[relative] = uses
    assert outside == {}


def test_every_private_use_in_the_fence_names_a_version() -> None:
    """Each private use sits under a comment naming the framework version it was written against
    (within four lines above it, or above the function it is in)."""
    unnoted = []
    for path in (REPO / FENCE).rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for line, what in private_framework_uses(source):
            number = line - 1
            start = next((i for i in range(number, -1, -1) if re.match(r"\s*def ", lines[i])), number)
            above = "\n".join(lines[max(0, start - 4) : number + 1])
            if not re.search(r"(transformers|TRL|accelerate|torch|PEFT) \d", above):
                unnoted.append(f"{path.relative_to(REPO)}:{line}: {what}")
    assert unnoted == []


def test_the_private_use_finder_finds_them() -> None:
    source = "from transformers.utils import _x\ntrainer._metrics['a'] = 1\nself._own = 1\np.data = q\n"
    assert private_framework_uses(source) == [
        (1, "import transformers.utils._x"),
        (2, "._metrics"),
        (4, ".data ="),
    ]
    assert private_framework_uses("return super()._get_output_dir(trial)") == [(1, "._get_output_dir")]
    assert private_framework_uses("self._staging = True") == []


def test_each_plugin_kind_follows_from_its_one_table_row() -> None:
    """A kind is one row of trainer.config.kinds.PLUGIN_KINDS plus its base class: the base class
    table, the schema key, the resolved config, the registry, the `plugins` listing and the docs'
    kind table all follow from it."""
    from trainer.api import BASES, PLUGIN_KINDS, Plugin, Resolved
    from trainer.config.schema import TrainConfig
    from trainer.resolve.registry import Registry

    docs = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    registry = Registry()
    for kind in PLUGIN_KINDS:
        assert BASES[kind.group].__name__ == kind.base
        assert kind.function or issubclass(BASES[kind.group], Plugin)  # a function kind names callables
        assert kind.group in registry.entries  # discovery reads the group `trainer.<group>`
        assert f"`trainer.{kind.group}`" in docs, f"docs/writing-plugins.md lacks the {kind.group} kind"
        if kind.key is not None:
            field = TrainConfig.model_fields[kind.key]
            assert field.description == kind.description
            assert (field.default if not kind.many else field.default_factory()) == (  # type: ignore[misc]
                [] if kind.many else kind.default
            )
    keys = [kind.key for kind in PLUGIN_KINDS if kind.key]
    assert keys == [key for key in TrainConfig.model_fields if key in keys]
    assert "chosen" in Resolved.__dataclass_fields__  # every key's plugin, by the table


def test_setup_registers_only_known_kinds() -> None:
    from trainer.api import KINDS

    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    groups = set(re.findall(r'"trainer\.([a-z_]+)": \[', setup))
    assert groups and groups <= set(KINDS)


def test_setup_packages_every_core_and_plugin_folder() -> None:
    """A non-editable `pip install .` ships only what find_packages finds: a folder of modules with no
    __init__.py (trainer/config had none) would be left out of the wheel."""
    from setuptools import find_packages

    found = set(find_packages(str(REPO), include=["trainer", "trainer.*", "plugins", "plugins.*"]))
    folders = {
        ".".join(path.parent.relative_to(REPO).parts)
        for top in ("trainer", "plugins")
        for path in (REPO / top).rglob("*.py")
    }
    assert folders - found == set()
