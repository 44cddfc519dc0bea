"""Every preset config in examples/ validates (a GPU recipe on a machine that cannot run it: refused with
exactly its known error), and the committed JSON Schema is current and accepts them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, examples_layout, run_command

EXAMPLES = sorted((REPO / "examples").glob("*.yml"))

GPU_ONLY = {
    "fsdp-full-llama.yml": [r"attention: flash_attention_2 (is unavailable: |needs a )"],
    "gpu-liger-lora.yml": [
        r"kernels\[0\]: liger (is unavailable: needs the 'liger_kernel' package: "
        r"pip install 'trainer\[liger\]'|needs a CUDA GPU; none is visible)",
        r"tf32: tf32 needs an NVIDIA GPU",
    ],
    "fsdp-qlora.yml": [r"distributed\.cpu_offload: moves GPU weights to CPU RAM; this machine has no GPU"],
    "prompt-generation-pythia.yml": [r"fp16: fp16 mixed precision needs a GPU"],
}
"""GPU recipes: where the machine cannot run them, validate must refuse them with machine checks from
exactly these (each a regex of one error line) and nothing else, and `--skip-machine-checks` must
pass them, printing each as a note."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, toy_data: Path) -> Path:
    """A folder laid out like the repo after the quickstart: models/, data/ and examples/."""
    return examples_layout(tmp_path_factory.mktemp("examples"), tiny_model, toy_data)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


def machine_errors(stderr: str, expected: list[str]) -> list[str]:
    """The error lines of a refusal made of machine checks only, each matching one of `expected`."""
    lines = stderr.strip().splitlines()
    count_line = next(i for i, line in enumerate(lines) if re.fullmatch(r"\d+ config errors?:", line))
    errors = [line.strip() for line in lines[count_line + 1 :]]
    count = len(errors)
    machine_note = "is a machine check" if count == 1 else "are machine checks"
    assert lines[:count_line] == [
        f"({count} of the errors below {machine_note}: this machine's GPU, packages or files, not the "
        "config; --skip-machine-checks checks the config alone)"
    ], stderr
    for error in errors:
        assert any(re.search(pattern, error) for pattern in expected), stderr
    return errors


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(example: Path, workdir: Path) -> None:
    # validate never touches the network; hub ids in recipes are accepted as they are
    result = run_command("validate", f"examples/{example.name}", cwd=workdir, env={"HF_HUB_OFFLINE": None})
    if example.name in GPU_ONLY and result.returncode != 0:
        # refused on a machine without a CUDA GPU or the kernel package: those reasons and no other
        assert result.returncode == 2, result.stderr
        errors = machine_errors(result.stderr, GPU_ONLY[example.name])
        # checking the config alone (written here for a GPU machine): it passes, each reason a note
        skip = run_command(
            "validate",
            "--skip-machine-checks",
            f"examples/{example.name}",
            cwd=workdir,
            env={"HF_HUB_OFFLINE": None},
        )
        assert skip.returncode == 0, skip.stderr
        assert ": OK" in skip.stdout
        notes = skip.stdout.split("skipped on this machine (", 1)[1].splitlines()
        assert notes[0].startswith(f"{len(errors)} machine check"), skip.stdout
        assert [line.strip() for line in notes[1:]] == errors, skip.stdout
        return
    assert result.returncode == 0, result.stderr
    assert ": OK" in result.stdout


def test_committed_schema_is_current(tmp_path: Path) -> None:
    """The command the message names writes exactly the committed file (and prints nothing)."""
    done = run_command("schema", "--builtin", "-o", tmp_path / "schema.json")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    committed = (REPO / "schemas" / "trainer.schema.json").read_text(encoding="utf-8")
    assert committed == (tmp_path / "schema.json").read_text(encoding="utf-8"), (
        "schemas/trainer.schema.json is stale: run python -m trainer.cli.schema --builtin "
        "-o schemas/trainer.schema.json"
    )


@pytest.fixture(scope="module")
def schema_validator() -> Any:
    """A validator for the committed schema, which is checked against its metaschema once (that
    check, repeated by each jsonschema.validate call, is most of a second)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "trainer.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_example(example: Path, schema_validator: Any) -> None:
    schema_validator.validate(yaml.safe_load(example.read_text(encoding="utf-8")))


def test_schema_rejects_typos(schema_validator: Any) -> None:
    import jsonschema

    good = yaml.safe_load((REPO / "examples" / "quickstart.yml").read_text(encoding="utf-8"))
    for bad in (
        {**good, "learning_rat": 1e-4},
        {**good, "adapter": {"type": "lora", "rr": 8}},
        {**good, "datasets": [{**good["datasets"][0], "completion_feld": "x"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            schema_validator.validate(bad)


def test_every_adapter_option_and_model_key_is_shown_in_an_example() -> None:
    """Each option a built-in adapter defines (beyond what it inherits from another adapter) is set
    in at least one example config of that adapter type; so are the model-level keys."""
    from plugins.adapters.full import Full
    from plugins.adapters.galore import GaLore
    from plugins.adapters.lora import Lora
    from plugins.adapters.qlora import QLora

    configs = [yaml.safe_load(example.read_text(encoding="utf-8")) for example in EXAMPLES]
    used: dict[str, set[str]] = {}
    for config in configs:
        block = config.get("adapter", "full")
        block = {"type": block} if isinstance(block, str) else block
        used.setdefault(block["type"], set()).update(block)
    missing = []
    for plugin in (Full, Lora, QLora, GaLore):
        inherited = {
            name for base in plugin.Options.__mro__[1:] for name in getattr(base, "model_fields", {})
        }
        own = set(plugin.Options.model_fields) - inherited
        missing += [f"{plugin.name}.{name}" for name in sorted(own - used.get(plugin.name, set()))]
    top = set().union(*configs)
    missing += [key for key in ("neftune_noise_alpha", "special_tokens", "tokens") if key not in top]
    assert not missing, f"options in no example config: {missing}"
