"""The plugin registry with fresh `Registry()` objects (no global state), discovery of the
built-ins, the `plugins` command, and contribution conflicts in `trainer.runtime.build.merge`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_command
from trainer.api import Contribution
from trainer.config.errors import ConfigErrors
from trainer.resolve.registry import Entry, PluginError, Registry
from trainer.resolve.validate import load_config
from trainer.runtime.build import merge

REPO = Path(__file__).resolve().parent.parent

BUILTINS = {
    ("formatters", "prompt_completion"): "plugins.formatters.prompt_completion:PromptCompletion",
    ("formatters", "completion"): "plugins.formatters.completion:Completion",
    ("formatters", "alpaca"): "plugins.formatters.alpaca:Alpaca",
    ("adapters", "full"): "plugins.adapters.full:Full",
    ("adapters", "lora"): "plugins.adapters.lora:Lora",
    ("attention", "eager"): "plugins.attention.kernels:Eager",
    ("methods", "sft"): "plugins.methods.sft:Sft",
    ("attention", "sdpa"): "plugins.attention.kernels:Sdpa",
    ("attention", "flash_attention_2"): "plugins.attention.kernels:FlashAttention2",
    ("distributed", "none"): "plugins.distributed.single:SingleProcess",
    ("distributed", "ddp"): "plugins.distributed.ddp:Ddp",
    ("callbacks", "generation_eval"): "plugins.callbacks.generation_eval:GenerationEval",
}


def builtin_registry(*extra: Entry) -> Registry:
    registry = Registry()
    for (kind, name), target in BUILTINS.items():
        registry.add(Entry(kind, name, target, "trainer", "0.1.0"))
    for entry in extra:
        registry.add(entry)
    return registry


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_name_suggests_and_lists_known() -> None:
    registry = builtin_registry()
    with pytest.raises(PluginError) as caught:
        registry.entry("formatters", "alpacca")
    assert str(caught.value) == (
        "unknown formatter 'alpacca' (did you mean 'alpaca'?); known: alpaca, completion, prompt_completion"
    )
    with pytest.raises(PluginError) as caught:
        registry.entry("adapters", "qwerty")
    assert str(caught.value) == "unknown adapter 'qwerty'; known: full, lora"
    with pytest.raises(PluginError, match=r"unknown callback 'x'; known: none installed"):
        Registry().entry("callbacks", "x")


def test_two_distributions_claiming_one_name_is_an_error_naming_both() -> None:
    registry = builtin_registry(
        Entry("adapters", "lora", "other_lora.plugin:Lora", "fancy-lora", "2.0"),
    )
    with pytest.raises(PluginError) as caught:
        registry.get("adapters", "lora")
    message = str(caught.value)
    assert message == (
        "adapter 'lora' is claimed by more than one distribution: trainer 0.1.0 "
        "(plugins.adapters.lora:Lora) and fancy-lora 2.0 (other_lora.plugin:Lora)"
    )
    assert registry.get("adapters", "full").name == "full"  # the rest is unaffected


def test_conflict_is_a_config_error_only_where_chosen(
    write_config, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    registry = builtin_registry(Entry("adapters", "lora", "other_lora.plugin:Lora", "fancy-lora", "2.0"))
    cfg = write_config(
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {toy_data / "train.jsonl"}
            type: prompt_completion
        adapter: lora
        output_dir: {tmp_path / "out"}
        """
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(cfg), registry=registry)
    (problem,) = caught.value.problems
    assert problem.where == f"{cfg}:5" and problem.path == ("adapter", "type")
    assert "claimed by more than one distribution: trainer 0.1.0" in problem.message
    assert "fancy-lora 2.0" in problem.message
    assert load_config(str(cfg), ["adapter=full"], registry=registry).adapter.entry.name == "full"


def test_broken_plugin_is_reported_and_does_not_break_other_runs(
    write_config, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    registry = builtin_registry(
        Entry("adapters", "broken", "no_such_module_for_trainer_tests.sub:Thing", "broken-dist", "0.3"),
        Entry("formatters", "wrongbase", "plugins.adapters.lora:Lora", "mixup-dist", "1.0"),
        Entry("callbacks", "notaclass", "os.path:join", "odd-dist", "0.1"),
    )
    with pytest.raises(PluginError) as caught:
        registry.get("adapters", "broken")
    assert str(caught.value) == (
        "adapters plugin 'broken' from broken-dist 0.3 failed to load: ModuleNotFoundError: "
        "No module named 'no_such_module_for_trainer_tests'"
    )
    with pytest.raises(PluginError, match=r"broken-dist 0\.3 failed to load"):  # the error is kept
        registry.get("adapters", "broken")
    assert registry.entries["adapters"]["broken"][0].status().startswith("error: adapters plugin 'broken'")
    with pytest.raises(PluginError) as caught:
        registry.get("formatters", "wrongbase")
    assert str(caught.value) == (
        "formatters plugin 'wrongbase' from mixup-dist 1.0 failed to load: TypeError: "
        "plugins.adapters.lora:Lora is not a subclass of trainer.api.Formatter"
    )
    with pytest.raises(PluginError, match=r"os\.path:join is not a subclass of trainer\.api\.Callback"):
        registry.get("callbacks", "notaclass")
    assert registry.entries["adapters"]["lora"][0].status() == "ok"  # others still load

    cfg = write_config(
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {toy_data / "train.jsonl"}
            type: prompt_completion
        adapter: lora
        output_dir: {tmp_path / "out"}
        """
    )
    assert load_config(str(cfg), registry=registry).adapter.entry.name == "lora"
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(cfg), ["adapter=broken", "datasets[0].type=wrongbase"], registry=registry)
    assert [p.render() for p in caught.value.problems] == [
        "override 'adapter=broken'  adapter.type: adapters plugin 'broken' from broken-dist 0.3 failed to "
        "load: ModuleNotFoundError: No module named 'no_such_module_for_trainer_tests'",
        "override 'datasets[0].type=wrongbase'  datasets[0].type: formatters plugin 'wrongbase' from "
        "mixup-dist 1.0 failed to load: TypeError: plugins.adapters.lora:Lora is not a subclass of "
        "trainer.api.Formatter",
    ]


def test_discover_finds_builtins_without_importing_them() -> None:
    result = run_python(
        "import json, sys\n"
        "from trainer.resolve.registry import Registry\n"
        "registry = Registry.discover()\n"
        "entries = [[e.kind, e.name, e.target, e.distribution] for e in registry.all_entries()]\n"
        "print(json.dumps({'entries': entries,"
        " 'imported': sorted(m for m in sys.modules if m == 'plugins' or m.startswith('plugins.')),"
        " 'torch': 'torch' in sys.modules}))\n"
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["imported"] == []  # metadata only: no plugin module (e.g. plugins.adapters.lora)
    assert not found["torch"]
    builtins = {(kind, name): (target, dist) for kind, name, target, dist in found["entries"]}
    for key, target in BUILTINS.items():
        assert builtins.get(key) == (target, "trainer"), key


def test_discovered_builtins_load(tmp_path: Path) -> None:
    registry = Registry.discover()
    for kind, name in BUILTINS:
        claims = registry.entries[kind][name]
        assert [e.distribution for e in claims] == ["trainer"]
        cls = registry.get(kind, name)
        assert cls.name == name


def test_plugins_command_lists_every_plugin() -> None:
    result = run_command("plugins", cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[1:]}
    for kind, name in BUILTINS:
        assert rows[(kind, name)] == ["trainer", "0.1.0", "ok"], lines


def test_merge_conflict_names_both_owners() -> None:
    lora = "adapters plugin 'lora' (trainer)"
    eager = "attention plugin 'eager' (trainer)"
    other = "attention plugin 'fast' (fast-attn)"
    merged = merge(
        [
            (lora, Contribution(model_kwargs={"dtype": "auto"}, sft_args={"seed": 1})),
            (eager, Contribution(model_kwargs={"attn_implementation": "eager", "dtype": "auto"})),
        ]
    )
    assert merged.model_kwargs == {"dtype": "auto", "attn_implementation": "eager"}  # equal values agree
    assert merged.owners["model_kwargs.attn_implementation"] == eager

    with pytest.raises(ConfigErrors) as caught:
        merge(
            [
                (eager, Contribution(model_kwargs={"attn_implementation": "eager"})),
                (other, Contribution(model_kwargs={"attn_implementation": "fast"})),
                (lora, Contribution(peft_config="peft-a", data_collator="c1")),
                (other, Contribution(peft_config="peft-b")),
            ]
        )
    assert [p.message for p in caught.value.problems] == [
        f"model_kwargs.attn_implementation is set to 'eager' by {eager} and to 'fast' by {other}",
        f"peft_config is given by both {lora} and {other}",
    ]


@pytest.mark.parametrize(
    ("block", "module", "message"),
    [
        (
            "adapter: {type: qlora}",
            "bitsandbytes",
            "adapter: needs the 'bitsandbytes' package: pip install 'trainer[qlora]'",
        ),
        (
            "distributed: {type: deepspeed, stage: 2}",
            "deepspeed",
            "distributed: needs the 'deepspeed' package: pip install 'trainer[deepspeed]'",
        ),
    ],
)
def test_a_missing_extra_is_one_validate_error_naming_it(
    block, module, message, write_config, tiny_model, toy_data, monkeypatch
) -> None:
    """A plugin whose optional package is not installed: exit 2, one line at the plugin's block
    naming the pip extra (simulated absent, so this runs whether or not the extra is installed)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    cfg = write_config(
        f"""
        base_model: {tiny_model}
        datasets: [{{path: {toy_data / "train.jsonl"}, type: completion}}]
        output_dir: out
        {block}
        """
    )
    done = run_command("validate", cfg)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [
        "(1 of the errors below is a machine check: this machine's GPU, packages or files, not the "
        "config; --skip-machine-checks checks the config alone)",
        "1 config error:",
        f"  {cfg}:4  {message}",
    ]


def test_a_plugin_generic_over_its_options_is_validated_with_them() -> None:
    """`Adapter[MyOptions]`: MyOptions validates the block and types `self.options`; a subclass of a
    plugin generic over a subclass of its options takes those; a third-party backend gets defaults
    that are right for one process on one machine."""
    from trainer.api import Adapter, Distributed, Options, Sharding

    class MyOptions(Options):
        r: int = 4

    class My(Adapter[MyOptions]):
        name = "my"

    class MoreOptions(MyOptions):
        extra: bool = False

    class More(My):  # an explicit Options still works (and wins)
        Options = MoreOptions

    assert My.Options is MyOptions and My().options.r == 4 and My(MyOptions(r=8)).options.r == 8
    assert More.Options is MoreOptions and More().options == MoreOptions()

    class Theirs(Distributed):
        name = "theirs"

    backend = Theirs()
    assert backend.processes_per_node() == 1 and backend.world_size() == 1
    assert backend.sharding() == Sharding() and backend.sharding().stage == 0
    assert backend.apply_environment({"NNODES": "4"}, given=set()) == []
