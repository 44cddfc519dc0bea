"""Security defaults (README "Security defaults"): a model's own code runs only with the config's
`trust_remote_code: true`, which is then said at validate and train time; the repo's own source has no
unpickling, no non-weights-only torch.load, no unsafe YAML loading and no eval/exec (an AST scan);
`!!python/...` YAML tags and import paths as plugin types are refused with exit status 2 without
running or importing anything; `trainer_args` cannot turn off safetensors or trust remote code."""

from __future__ import annotations

import ast
import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_command
from trainer.config.schema import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("trainer", "plugins", "scripts", "bench", "examples")
"""The repo's own code: what ships and what users run (tests only round-trip their own pickles)."""


def validate(*argv: str) -> tuple[int, str]:
    """`python -m trainer.cli.validate ARGV` in this process: (exit status, stdout + stderr)."""
    done = run_command("validate", *argv)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def base_text(tmp_path: Path) -> str:
    """A config that validates: an (empty) model folder, one data file, an output_dir."""
    (tmp_path / "model").mkdir()
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    return textwrap.dedent(
        f"""\
        base_model: {tmp_path / "model"}
        datasets: [{{path: {tmp_path / "train.jsonl"}, type: prompt_completion}}]
        output_dir: {tmp_path / "out"}
        """
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_of(base_model: Path, **keys: object) -> TrainConfig:
    data = {"base_model": str(base_model), "datasets": [{"path": "x.jsonl", "type": "completion"}]}
    return TrainConfig.model_validate({**data, "output_dir": "out", **keys})


# ---- trust_remote_code ----------------------------------------------------------------------------


def test_trust_remote_code_is_off_by_default() -> None:
    assert config_of(Path("m")).trust_remote_code is False


def test_validate_warns_when_trust_remote_code_is_on(tmp_path: Path, base_text: str) -> None:
    warning = (
        "warning: trust_remote_code is on: the model's own Python code from "
        f"{tmp_path / 'model'} will run on this machine"
    )
    code, out = validate(write(tmp_path, base_text + "trust_remote_code: true\n"))
    assert code == 0 and warning in out.splitlines(), out
    code, out = validate(write(tmp_path, base_text), "trust_remote_code=true")
    assert code == 0 and warning in out.splitlines(), out
    code, out = validate(write(tmp_path, base_text))
    assert code == 0 and "trust_remote_code" not in out, out


def test_trust_remote_code_is_set_only_by_its_own_key(tmp_path: Path, base_text: str) -> None:
    code, out = validate(write(tmp_path, base_text + "trainer_args: {trust_remote_code: true}\n"))
    assert code == 2, out
    assert "trainer_args.trust_remote_code: set this with the top-level key 'trust_remote_code'" in out


def test_a_plugin_cannot_turn_trust_remote_code_on() -> None:
    from trainer.api import Contribution
    from trainer.config.errors import ConfigErrors
    from trainer.runtime.build import check_remote_code, merge

    owner = "adapter plugin 'sneaky' (sneaky-dist)"
    merged = merge([(owner, Contribution(model_kwargs={"trust_remote_code": True}))])
    with pytest.raises(ConfigErrors) as err:
        check_remote_code(config_of(Path("m")), merged)
    assert f"{owner} sets trust_remote_code=True, which the config sets to False" in str(err.value)
    check_remote_code(config_of(Path("m"), trust_remote_code=True), merged)  # the same value: fine


def test_the_train_time_warning_is_printed_once_and_on_the_main_process_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.runtime import build
    from trainer.runtime.launcher import CHECKED_ENV

    on = config_of(tmp_path / "m", trust_remote_code=True, tokenizer=str(tmp_path / "t"))
    text = build.remote_code_warning(on)
    assert text == (
        f"warning: trust_remote_code is on: the model's own Python code from {tmp_path / 'm'} and "
        f"{tmp_path / 't'} will run on this machine"
    )
    assert build.remote_code_warning(config_of(tmp_path / "m")) is None
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv(CHECKED_ENV, raising=False)
    for env, printed in [({}, True), ({"RANK": "1"}, False), ({CHECKED_ENV: "1"}, False)]:
        monkeypatch.setattr(build, "_warned", set())
        with monkeypatch.context() as scoped:
            for key, value in env.items():
                scoped.setenv(key, value)
            build.warn_remote_code(on)
            build.warn_remote_code(on)
            build.warn_remote_code(config_of(tmp_path / "m"))
        assert capsys.readouterr().err == (text + "\n" if printed else ""), env


def test_the_model_and_tokenizer_loaders_warn_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.runtime import build

    monkeypatch.delenv("RANK", raising=False)
    (tmp_path / "empty").mkdir()  # no model here: loading fails right after the warning
    on = config_of(tmp_path / "empty", trust_remote_code=True)
    for load in (build.load_tokenizer, lambda c: build.load_model(c, build.Merged(), None)):  # type: ignore[arg-type]
        monkeypatch.setattr(build, "_warned", set())
        with pytest.raises((OSError, ValueError)):
            load(on)
        assert capsys.readouterr().err.startswith(str(build.remote_code_warning(on))), load


def test_a_checkpoint_with_its_own_code_is_refused_without_trust_remote_code(tmp_path: Path) -> None:
    """transformers refuses (rather than asks, or runs it) because `trust_remote_code=False` is passed."""
    from trainer.runtime import build

    model = tmp_path / "custom"
    model.mkdir()
    marker = tmp_path / "RAN"
    (model / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n", encoding="utf-8"
    )
    auto_map = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "configuration_custom.CustomModel",
        "AutoTokenizer": ["configuration_custom.CustomTokenizer", None],
    }
    (model / "config.json").write_text(json.dumps({"model_type": "custom_remote", "auto_map": auto_map}))
    tokenizer_map = {"AutoTokenizer": auto_map["AutoTokenizer"]}
    (model / "tokenizer_config.json").write_text(json.dumps({"auto_map": tokenizer_map}))
    config = config_of(model)
    for load in (build.load_tokenizer, lambda c: build.load_model(c, build.Merged(), None)):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="contains custom code"):
            load(config)
    assert not marker.exists()


# ---- YAML ---------------------------------------------------------------------------------------


def test_the_config_loader_is_a_safe_loader_without_python_constructors() -> None:
    from trainer.config.yaml_lines import Loader

    assert issubclass(Loader, yaml.SafeLoader)
    tags = [*Loader.yaml_constructors, *Loader.yaml_multi_constructors]
    assert not [tag for tag in tags if tag and "python" in tag], tags


@pytest.mark.parametrize(
    "payload",
    [
        'seed: !!python/object/apply:os.system ["echo pwned > {marker}"]',
        'seed: !!python/object/new:os.system ["echo pwned > {marker}"]',
        "seed: !!python/object/apply:subprocess.call [[touch, {marker}]]",
        "learning_rate: !!python/name:os.system",
        "trainer_args: {{x: !!python/object/apply:os.system ['echo pwned > {marker}']}}",
        '!!python/object/apply:os.system ["echo pwned > {marker}"]',  # the whole document
    ],
)
def test_a_python_yaml_tag_is_refused_and_never_run(tmp_path: Path, base_text: str, payload: str) -> None:
    marker = tmp_path / "PWNED"
    line = payload.format(marker=marker)
    text = line + "\n" if line.startswith("!!") else base_text + line + "\n"
    code, out = validate(write(tmp_path, text))
    assert code == 2, out
    assert "is refused: a config is plain data (no Python objects)" in out, out
    assert not marker.exists()


def test_a_python_yaml_tag_in_an_override_is_refused_and_never_run(tmp_path: Path, base_text: str) -> None:
    marker = tmp_path / "PWNED"
    override = f'seed=!!python/object/apply:os.system ["echo pwned > {marker}"]'
    code, out = validate(write(tmp_path, base_text), override)
    assert code == 2 and "is refused: a config is plain data" in out, out
    assert not marker.exists()


# ---- plugins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ("adapter: plugins.adapters.lora:Lora", "adapter.type"),
        ('adapter: {type: "os.system"}', "adapter.type"),
        ("adapter: {type: evilplug.Evil}", "adapter.type"),
        ("attention: evilplug:Evil", "attention.type"),
        ("distributed: {type: 'evilplug:Evil'}", "distributed.type"),
        ("callbacks: [evilplug:Evil]", "callbacks[0].type"),
        ("callbacks: [mypkg.module:Cls]", "callbacks[0].type"),
        ("kernels: [{type: evilplug.Evil}]", "kernels[0].type"),
        ("test_datasets: [{path: x.jsonl, type: evilplug:Evil}]", "test_datasets[0].type"),
    ],
)
def test_an_import_path_as_plugin_type_is_refused_and_never_imported(
    tmp_path: Path,
    base_text: str,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    where: str,
) -> None:
    marker = tmp_path / "IMPORTED"
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "evilplug.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\nclass Evil: ...\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(package))
    code, out = validate(write(tmp_path, base_text + line + "\n"))
    assert code == 2, out
    problem = next((row for row in out.splitlines() if f"  {where}: unknown " in row), out)
    assert "never an import path" in problem and "`python -m trainer.cli.plugins` lists" in problem, out
    assert "entry point" in problem, out
    assert not marker.exists() and "evilplug" not in sys.modules


# ---- safetensors -----------------------------------------------------------------------------------


def test_trainer_args_cannot_turn_safetensors_off(tmp_path: Path, base_text: str) -> None:
    """transformers 5 always saves weights as safetensors: `save_safetensors` is no SFTConfig field,
    so trainer_args naming it is an error like any other unknown field."""
    from trainer.resolve.validate import sft_config_fields

    assert "save_safetensors" not in sft_config_fields()
    code, out = validate(write(tmp_path, base_text + "trainer_args: {save_safetensors: false}\n"))
    assert code == 2, out
    assert "trainer_args.save_safetensors: not a trl.SFTConfig field" in out, out


# ---- the repo's own source --------------------------------------------------------------------------

UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {
    "eval", "exec", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
}  # fmt: skip
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
SAFE_YAML_LOADERS = {
    "yaml.SafeLoader",
    "yaml.CSafeLoader",
    "yaml.BaseLoader",
    "trainer.config.yaml_lines.Loader",
}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str) -> list[str]:
    """'line: what' for every unsafe deserialization or code execution in a module's AST."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> what it is, from the module's imports (any scope)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                if alias.name.split(".")[0] in UNPICKLING_MODULES:
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in UNPICKLING_MODULES:
                found.append(f"{node.lineno}: from {node.module} import")

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and dotted(node) in {f"yaml.{n}" for n in UNSAFE_YAML_LOADERS}:
            found.append(f"{node.lineno}: {dotted(node)}")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and _is_true(value):
                    found.append(f"{node.lineno}: {{'trust_remote_code': True}}")
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in UNSAFE_CALLS:
            found.append(f"{node.lineno}: {name}()")
        if name in ("torch.load", "torch.serialization.load") and not _is_true(keywords.get("weights_only")):
            found.append(f"{node.lineno}: torch.load() without weights_only=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or dotted(loader) not in SAFE_YAML_LOADERS:
                found.append(f"{node.lineno}: {name}() without a safe Loader")
        if name in ("numpy.load", "np.load") and _is_true(keywords.get("allow_pickle")):
            found.append(f"{node.lineno}: numpy.load(allow_pickle=True)")
        if _is_true(keywords.get("trust_remote_code")):
            found.append(f"{node.lineno}: {name}(trust_remote_code=True)")
    return found


def source_files() -> list[Path]:
    files = [path for folder in SOURCE_DIRS for path in sorted((REPO / folder).rglob("*.py"))]
    return [path for path in files if not any(part.startswith(".") for part in path.relative_to(REPO).parts)]


def test_the_scan_finds_what_it_forbids() -> None:
    bad = textwrap.dedent(
        """
        import pickle
        import numpy as np
        import yaml
        from torch import load
        import torch as t

        t.load("x.pt")
        load("x.pt", weights_only=False)
        yaml.load(text)
        yaml.load(text, Loader=yaml.Loader)
        yaml.unsafe_load(text)
        np.load("x.npy", allow_pickle=True)
        eval(text)
        exec(text)
        AutoModel.from_pretrained("m", trust_remote_code=True)
        kwargs = {"trust_remote_code": True}
        """
    )
    assert len(unsafe_uses(bad)) == 12, unsafe_uses(bad)
    good = textwrap.dedent(
        """
        import torch, yaml
        torch.load("x.pt", weights_only=True)
        yaml.safe_load(text)
        yaml.load(text, Loader=yaml.SafeLoader)
        model.eval()
        AutoModel.from_pretrained("m", trust_remote_code=config.trust_remote_code)
        """
    )
    assert unsafe_uses(good) == []


def test_the_repo_source_has_no_unsafe_loading_or_code_execution() -> None:
    files = source_files()
    assert len(files) > 50 and REPO / "trainer" / "runtime" / "build.py" in files
    found = {
        str(path.relative_to(REPO)): hits
        for path in files
        if (hits := unsafe_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_every_model_tokenizer_and_config_load_passes_the_configs_trust_remote_code() -> None:
    """In trainer/ and plugins/, each `Auto*.from_pretrained` names `trust_remote_code` (from the config
    or the run's own, never a literal: the scan above refuses `True`)."""
    missing, seen = [], 0
    for path in source_files():
        if path.relative_to(REPO).parts[0] not in ("trainer", "plugins"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if not (isinstance(func, ast.Attribute) and func.attr == "from_pretrained"):
                continue
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
            if not owner.startswith("Auto"):
                continue  # PeftModel / GenerationConfig: JSON and tensors, no code of the model's
            seen += 1
            if "trust_remote_code" not in {k.arg for k in node.keywords}:
                missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert seen >= 6 and missing == []
