"""An Axolotl config given to `train` or `validate`: the first line of its errors says it looks like
one and how to convert it, then the usual errors. The rule scores Axolotl-only keys by family (at
least two families; no single key decides); none of our own examples trigger it."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_command
from trainer.config.axolotl_signs import THRESHOLD, axolotl_signs, convert_hint, looks_like_axolotl
from trainer.config.schema import TrainConfig

AXOLOTL = Path(os.environ.get("AXOLOTL_CONFIGS", REPO.parent / "shared" / "axolotl-configs" / "examples"))
REAL = ["llama-3/lora-1b.yml", "llama-3/qlora-1b.yml", "llama-3/fft-8b-liger-fsdp.yaml"]
"""A LoRA, a QLoRA and a full-weights FSDP (+ Liger) config from Axolotl's own examples."""
OWN = TrainConfig.model_fields


def needs_axolotl_configs() -> None:
    if not AXOLOTL.is_dir():
        pytest.skip(f"Axolotl's example configs are not at {AXOLOTL} (set AXOLOTL_CONFIGS)")


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("name", REAL)
def test_real_axolotl_configs_open_with_the_convert_command(name: str, command: str, tmp_path: Path) -> None:
    needs_axolotl_configs()
    path = AXOLOTL / name
    done = run_command(command, path, cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    first, *rest = done.stderr.strip().splitlines()
    if rest[0].startswith("("):  # a header counting machine checks (a hub model not cached offline)
        rest = rest[1:]
    count, *errors = rest
    stem = path.stem
    assert first.startswith(f"{path} looks like an Axolotl config (Axolotl-only keys: "), done.stderr
    assert first.endswith(
        f"; convert it with: python -m trainer.cli.convert {shlex.quote(str(path))} -o {stem}.trainer.yml"
    ), done.stderr
    # then the usual errors, each at its line
    assert count == f"{len(errors)} config errors:", done.stderr
    assert all(line.startswith(f"  {path}:") for line in errors), done.stderr
    assert any("unknown key 'lora_r'" in line or "unknown key 'wandb_project'" in line for line in errors)
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_every_axolotl_example_config_scores() -> None:
    needs_axolotl_configs()
    configs = sorted(AXOLOTL.rglob("*.y*ml"))
    assert len(configs) >= 3
    for path in configs:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert looks_like_axolotl(data, OWN), (path, axolotl_signs(data, OWN))


@pytest.mark.parametrize(
    "example", sorted(REPO.glob("examples/**/*.yml")), ids=lambda p: str(p.relative_to(REPO / "examples"))
)
def test_none_of_our_examples_trigger_it(example: Path) -> None:
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    assert axolotl_signs(data, OWN) == {}
    assert convert_hint(data, OWN, str(example)) is None


def test_no_single_key_or_family_decides(
    write_config, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """One family, however many keys (lora_r, lora_alpha, wandb_*...), is told about its keys only;
    keys of ours (adapter: lora, dataset_prepared_path, datasets[].type: alpaca) never count."""
    ours = {
        "base_model": str(tiny_model),
        "adapter": "lora",
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "datasets": [{"path": str(toy_data / "train.jsonl"), "type": "alpaca"}],
        "output_dir": str(tmp_path / "out"),
    }
    one_family = {**ours, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    assert not looks_like_axolotl(one_family, OWN) and THRESHOLD == 2
    assert not looks_like_axolotl({**ours, "wandb_project": "x", "wandb_entity": "y"}, OWN)
    assert looks_like_axolotl({**one_family, "wandb_project": "x"}, OWN)

    cfg = write_config(yaml.safe_dump({**ours, "wandb_project": "x"}, sort_keys=False))
    done = run_command("validate", cfg)
    assert done.returncode == 2
    assert done.stderr.startswith("1 config error:\n"), done.stderr
    assert "Axolotl" not in done.stderr

    cfg = write_config(
        yaml.safe_dump({**one_family, "wandb_project": "x", "load_in_4bit": True}, sort_keys=False), "ax.yml"
    )
    done = run_command("validate", cfg)
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"{cfg} looks like an Axolotl config (Axolotl-only keys: lora_r, wandb_project, ")
    assert first.endswith(f"python -m trainer.cli.convert {cfg} -o ax.trainer.yml")
    assert done.stderr.splitlines()[1] == "5 config errors:"
