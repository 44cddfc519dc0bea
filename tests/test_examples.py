"""Every preset config in examples/ validates, and the committed JSON Schema is current and accepts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, toy_data: Path) -> Path:
    """A folder laid out like the repo after the quickstart: models/, data/ and examples/."""
    root = tmp_path_factory.mktemp("examples")
    (root / "models").mkdir()
    (root / "models" / "tiny-llama").symlink_to(tiny_model)
    (root / "data").mkdir()
    (root / "data" / "toy").symlink_to(toy_data)
    shutil.copy(toy_data / "train.jsonl", root / "data" / "train.jsonl")  # the pythia recipe's file
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("plugin-package"))
    return root


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(example: Path, workdir: Path) -> None:
    # validate never touches the network; hub ids in recipes are accepted as they are
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli.validate", f"examples/{example.name}"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ": OK" in result.stdout


def test_committed_schema_is_current() -> None:
    from trainer.cli.schema import render

    committed = (REPO / "schemas" / "trainer.schema.json").read_text(encoding="utf-8")
    assert committed == render(builtin=True), (
        "schemas/trainer.schema.json is stale: run python -m trainer.cli.schema --builtin "
        "-o schemas/trainer.schema.json"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_example(example: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "trainer.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(yaml.safe_load(example.read_text(encoding="utf-8")), schema)


def test_schema_rejects_typos() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "trainer.schema.json").read_text(encoding="utf-8"))
    good = yaml.safe_load((REPO / "examples" / "quickstart.yml").read_text(encoding="utf-8"))
    for bad in (
        {**good, "learning_rat": 1e-4},
        {**good, "adapter": {"type": "lora", "rr": 8}},
        {**good, "datasets": [{**good["datasets"][0], "completion_feld": "x"}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
