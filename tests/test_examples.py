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
    "fsdp-full-llama.yml": r"attention: flash_attention_2 is unavailable: ",
    "gpu-liger-lora.yml": r"kernels\[0\]: liger (is unavailable: needs the 'liger_kernel' package: "
    r"pip install 'trainer\[liger\]'|needs a CUDA GPU; none is visible)",
}
"""GPU recipes: where the machine cannot run them, validate must refuse them with exactly this error."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, toy_data: Path) -> Path:
    """A folder laid out like the repo after the quickstart: models/, data/ and examples/."""
    return examples_layout(tmp_path_factory.mktemp("examples"), tiny_model, toy_data)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(example: Path, workdir: Path) -> None:
    # validate never touches the network; hub ids in recipes are accepted as they are
    result = run_command("validate", f"examples/{example.name}", cwd=workdir, env={"HF_HUB_OFFLINE": None})
    if example.name in GPU_ONLY and result.returncode != 0:
        # refused on a machine without a CUDA GPU or the kernel package: that one error and no other
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("1 config error:\n"), result.stderr
        assert re.search(GPU_ONLY[example.name], result.stderr), result.stderr
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
