"""The example package's adapter plugin (`ia3`, examples/plugin-package) as its users meet it: installed
by pip (real entry-point metadata), listed, validated with a memory estimate that counts IA3's vectors
only, refusing a misspelt target module, trained on the tiny Llama (only the vectors move, the loss
falls), reloaded with `peft.PeftModel.from_pretrained` to the same logits, and merged.

The package is installed with `pip install --target` into a temporary directory put on sys.path for
this module only, and the process-wide plugin registry is swapped for one discovered with it there
(restored afterwards): the commands run in this process (`run_command`) see the plugin through its
entry point, as a user's would, and the shared environment is never changed. One training run,
shared by the tests (a module-scoped fixture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")

from tests.conftest import logits_of, run_api, run_command, toy_config, write_yaml  # noqa: E402
from trainer.resolve import registry as registry_module  # noqa: E402
from trainer.resolve.memory import count, estimate  # noqa: E402
from trainer.resolve.registry import Registry  # noqa: E402
from trainer.resolve.validate import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "examples" / "plugin-package"
DIST = "trainer-plugin-example"
MODULE = "trainer_plugin_example"
TARGETS = ("k_proj", "v_proj", "down_proj")  # the plugin's defaults
FEEDFORWARD = ("down_proj",)
IGNORE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs")


def _forget_package() -> None:
    """Drop the package's modules (another test module may have imported its own installed copy)."""
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def plugin_site(example_plugin_site: Path) -> Iterator[Path]:
    """The package pip-installed into a temporary directory, importable and registered (through its
    real entry-point metadata) in this process while this module runs."""
    site = example_plugin_site
    _forget_package()
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        registry = Registry.discover()  # reads the installed metadata, now on sys.path
        entry = registry.entry("adapters", "ia3")
        assert (entry.target, entry.distribution) == (f"{MODULE}.ia3:Ia3", DIST)
        patch.setattr(registry_module, "_DEFAULT", registry)
        yield site
    _forget_package()


def ia3_vector_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """What PEFT's IA3 trains on the real model, from its nn.Linear layers (not from the plugin's
    shape reading): module -> (1, in_features) for a feedforward layer, (out_features, 1) otherwise."""
    base = load_base(model_dir)
    return {
        name: (1, m.in_features) if name.endswith(FEEDFORWARD) else (m.out_features, 1)
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS
    }


def load_base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@dataclass
class Run:
    config: Path
    out: Path
    model: Any  # the trained PeftModel, in memory
    tokenizer: Any
    losses: list[float]


@pytest.fixture(scope="module")
def ia3_run(
    plugin_site: Path, tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """One short IA3 run on the toy task (8 steps of 8 rows), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ia3-run")
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp / "run",
        adapter={"type": "ia3"}, max_train_samples=32, max_steps=8, learning_rate=3.0e-2,
    )  # fmt: skip
    built = run_api(tmp, config)
    losses = [h["loss"] for h in built.trainer.state.log_history if "loss" in h]
    return Run(tmp / "cfg.yml", tmp / "run", built.trainer.model, built.tokenizer, losses)


def test_plugins_cli_lists_the_adapter(plugin_site: Path) -> None:
    result = run_command("plugins")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["adapters", "ia3", DIST, "0.1.0", "ok"] in rows, result.stdout


def test_adapter_module_imports_without_torch(plugin_site: Path) -> None:
    code = (
        f"import sys, {MODULE}.ia3\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_training_moves_only_the_ia3_vectors(ia3_run: Run, tiny_model: Path) -> None:
    expected = ia3_vector_shapes(tiny_model)
    assert len(expected) == 6  # k_proj, v_proj, down_proj in each of 2 layers
    params = dict(ia3_run.model.named_parameters())
    trained = {k: v for k, v in params.items() if v.requires_grad}
    prefix, suffix = "base_model.model.", ".ia3_l.default"
    assert {
        k.removeprefix(prefix).removesuffix(suffix): tuple(v.shape) for k, v in trained.items()
    } == expected
    assert sum(v.numel() for v in trained.values()) == 2560  # 2 x (256 + 256 + 768)
    for name, vector in trained.items():  # PEFT starts every vector at 1 (the base's own outputs)
        assert vector.dtype == torch.float32
        assert not torch.equal(vector, torch.ones_like(vector)), f"{name} did not train"

    base = dict(load_base(tiny_model).named_parameters())
    frozen = {
        k.removeprefix(prefix).replace(".base_layer", ""): v for k, v in params.items() if k not in trained
    }
    assert frozen.keys() == base.keys()
    changed = [k for k, v in frozen.items() if not torch.equal(v, base[k])]
    assert not changed, f"base weights changed: {changed}"

    losses = ia3_run.losses
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.1, losses  # 5.62 -> 5.20 when written


def test_output_is_a_peft_adapter_that_reloads(ia3_run: Run, tiny_model: Path) -> None:
    from peft import PeftModel
    from safetensors import safe_open

    out = ia3_run.out
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "IA3"
    assert set(adapter_config["target_modules"]) == set(TARGETS)
    assert set(adapter_config["feedforward_modules"]) == set(FEEDFORWARD)
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as saved:
        shapes = {k: tuple(saved.get_slice(k).get_shape()) for k in saved.keys()}  # noqa: SIM118
    expected = ia3_vector_shapes(tiny_model)
    assert shapes == {f"base_model.model.{module}.ia3_l": shape for module, shape in expected.items()}

    reloaded = PeftModel.from_pretrained(load_base(tiny_model), str(out))
    trained_logits = logits_of(ia3_run.model, ia3_run.tokenizer)
    torch.testing.assert_close(logits_of(reloaded, ia3_run.tokenizer), trained_logits, rtol=0, atol=1e-5)
    base_logits = logits_of(load_base(tiny_model), ia3_run.tokenizer)
    assert (base_logits - trained_logits).abs().max() > 1e-3  # the adapter does change the model


def test_validate_estimate_counts_the_ia3_vectors(ia3_run: Run, tiny_model: Path) -> None:
    real = sum(p.numel() for p in ia3_run.model.parameters() if p.requires_grad)
    base_params = sum(p.numel() for p in load_base(tiny_model).parameters())
    assert real == 2560 and base_params == 1_771_520

    found = estimate(load_config(str(ia3_run.config)))
    assert (found.trainable, found.total_params) == (real, base_params + real)

    result = run_command("validate", ia3_run.config)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"adapter +ia3 \[{DIST} 0\.1\.0\]", result.stdout)
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("memory per device (estimate):")]
    share = 100 * real / (base_params + real)
    assert line.endswith(
        f"; trainable {count(real)} of {count(base_params + real)} parameters ({share:.2f}%)"
    )
    assert f"ia3: 6 scaling vectors, {real} values" in result.stdout
    # 2560 fp32 values: 10 KiB of gradients and 20 KiB of AdamW state, not the whole model's
    assert "gradients 10.0 KiB, optimizer 20.0 KiB" in line


def test_misspelt_target_module_fails_validate(ia3_run: Run, tmp_path: Path) -> None:
    config = yaml.safe_load(ia3_run.config.read_text())
    config["adapter"] = {"type": "ia3", "target_modules": ["k_proj", "vproj"], "feedforward_modules": []}
    path = write_yaml(tmp_path / "cfg.yml", config)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "target_modules" in text)
    result = run_command("validate", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "1 config error:",
        f"  {path}:{line}  adapter.target_modules: 'vproj' matches no module; {config['base_model']}'s "
        "linear layers are named down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
    ]


def test_check_refuses_a_norm_and_a_feedforward_module_not_targeted(ia3_run: Run) -> None:
    config = load_config(str(ia3_run.config)).config
    adapter_cls = registry_module.default_registry().get("adapters", "ia3")
    options = adapter_cls.Options.model_validate(
        {"target_modules": ["k_proj", "input_layernorm"], "feedforward_modules": ["down_proj"]}
    )
    problems = adapter_cls(options).check(config)
    assert [p[0] for p in problems] == ["feedforward_modules", "target_modules"]
    assert "'down_proj' is not in target_modules" in problems[0][1]
    assert "'input_layernorm' is not a linear layer" in problems[1][1]
    assert adapter_cls().check(config.model_copy(update={"base_model": "not/on-this-machine"})) == []


def test_merge_folds_the_vectors_into_the_base(ia3_run: Run, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged"
    result = run_command("merge", ia3_run.out, "--out", merged)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "adapter:  IA3" in result.stdout
    assert "merged:   1,771,520 parameters, float32" in result.stdout  # the base's size: nothing left over
    assert "smoke test (reloaded with AutoModelForCausalLM" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert not any("ia3" in name for name in model.state_dict())
    torch.testing.assert_close(
        logits_of(model, ia3_run.tokenizer), logits_of(ia3_run.model, ia3_run.tokenizer), rtol=0, atol=1e-4
    )


def test_shipped_ia3_example_validates(plugin_site: Path, tiny_model: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "example"
    shutil.copytree(PACKAGE, workdir, ignore=IGNORE)
    result = run_command("validate", "example-ia3.yml", f"base_model={tiny_model}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert re.search(r"adapter +ia3 \[trainer-plugin-example 0\.1\.0\]", result.stdout)
    assert "ia3: 6 scaling vectors, 2560 values" in result.stdout
