"""Shared fixtures: a tiny Llama + tokenizer and the toy task, built once per session by the repo's
own deterministic scripts; everything offline."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """In-process training uses one torch thread: two OpenMP threads on a shared 2-core machine
    spin and run 10-30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a char-level tokenizer; pad token unset (EOS is used as pad)."""
    import make_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_tiny_model.main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy instruction task: train.jsonl and eval.jsonl with prompt/generation fields."""
    import make_toy_data

    out = tmp_path_factory.mktemp("data") / "toy"
    make_toy_data.main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/plugin-package pip-installed (its code and its .dist-info entry-point metadata) into a
    directory of its own, once per session; put it on sys.path or PYTHONPATH to use the plugins."""
    import shutil

    root = tmp_path_factory.mktemp("plugin-package")
    source = root / "src"  # a copy, so that build/ and *.egg-info never land in the repository
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs")
    shutil.copytree(REPO / "examples" / "plugin-package", source, ignore=ignore)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return site


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config (dedented) to tmp_path and return its path."""

    def write(text: str, name: str = "cfg.yml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


def toy_config(model: Path, data: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A short run on the toy task (`data` is its train.jsonl): full fine-tuning, constant lr,
    no checkpoints, a log every step; `overrides` replace or add keys."""
    config: dict[str, Any] = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "prompt_completion", "completion_field": "generation"}],
        "sequence_len": 48,
        "max_train_samples": 96,
        "micro_batch_size": 8,
        "max_steps": 12,
        "learning_rate": 3.0e-3,
        "lr_scheduler": "constant",
        "save_strategy": "no",
        "logging_steps": 1,
        "training_curves": False,  # drawn by the tests that look at it (0.5 s a run otherwise)
        "output_dir": str(output_dir),
    }
    config.update(overrides)
    return config


def examples_layout(root: Path, model: Path, data: Path) -> Path:
    """`root` laid out like the repo after the quickstart: models/, data/ and examples/, so the
    example configs' relative paths resolve."""
    import shutil

    (root / "models").mkdir()
    (root / "models" / "tiny-llama").symlink_to(model)
    (root / "data").mkdir()
    (root / "data" / "toy").symlink_to(data)
    shutil.copy(data / "train.jsonl", root / "data" / "train.jsonl")  # the pythia recipe's file
    shutil.copy(data / "pref_train.jsonl", root / "data" / "prefs.jsonl")  # the chat DPO recipe's file
    (root / "runs").mkdir()
    (root / "runs" / "quickstart").symlink_to(model)  # what examples/quickstart.yml trains
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("plugin-package"))
    return root


def run_command(
    name: str, *args: object, cwd: Path | None = None, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m trainer.cli.NAME ARGS`, run inside this process: the command's main() through the
    same error handling (messages, exit status 2), from `cwd`, with `env` set in the environment (a
    None value unsets; both restored after). Returns a CompletedProcess with the exit status and
    everything written to stdout and stderr, by this process or by the processes the command starts.
    A fresh interpreter costs ~8 s of imports, so tests start one only where the process itself is
    under test (signals, a torch-free import, launchers, entry points)."""
    from trainer.cli.common import run

    main = importlib.import_module(f"trainer.cli.{name}").main
    argv = [str(arg) for arg in args]
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if cwd is not None:
        os.chdir(cwd)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with _fds_to(out, err):
            try:
                run(main, argv)
                code: Any = 0
            except SystemExit as stop:
                code = stop.code
            finally:
                os.chdir(saved_cwd)
                os.environ.clear()
                os.environ.update(saved_env)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    return subprocess.CompletedProcess([name, *argv], code, stdout, stderr)


@contextlib.contextmanager
def _fds_to(out: Any, err: Any) -> Iterator[None]:
    """Point file descriptors 1 and 2 (which started processes inherit) and sys.stdout/sys.stderr
    (line-buffered, so lines keep their order) at two files, and back after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    # Not closed afterwards: a logging handler created meanwhile may keep one; it then writes to
    # whatever fd 1/2 are again (pytest's capture), never to a closed file.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def run_script(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script (`python bench/x.py ...`, `bash bench/x.sh ...`) with one torch thread;
    asserts it exits 0 and shows the end of its output if not."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    """Write a config dict as YAML (creating the folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_api(
    tmp: Path, config: dict[str, Any], overrides: list[str] | None = None, name: str = "cfg.yml"
) -> Any:
    """Write `config` to tmp/name, validate and train it through the Python API without the
    start/end report; returns the `Built` run."""
    from trainer.resolve.validate import load_config
    from trainer.runtime.run import train

    return train(load_config(str(write_yaml(tmp / name, config)), overrides), log=lambda *_: None)


def logits_of(model: Any, tokenizer: Any, text: str = "Reverse the word: hello\nAnswer: ") -> Any:
    """The model's fp32 logits for `text`, in eval mode (its train/eval mode is restored)."""
    import torch

    was_training = model.training
    model.eval()
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits.float()
    model.train(was_training)
    return out


@pytest.fixture(scope="session")
def trained_runs(
    tiny_model: Path, toy_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Three finished runs of our own `train`, for the commands that use a trained model:
    - `full`: a full fine-tune on raw prompt/completion rows (raw prompts at inference);
    - `lora`: LoRA on ChatML conversations (prompts go through the run's chat template, answers end
      at `<|im_end|>`, spelled in characters in this vocabulary);
    - `qlora`: LoRA on the base loaded in 4 bits (bitsandbytes nf4), raw prompts.
    Test modules that use it share the xdist group "inference", so one worker trains them once."""
    tmp = tmp_path_factory.mktemp("inference-runs")
    train = toy_data / "train.jsonl"
    chat = [
        {
            "path": str(toy_data / "chat_train.jsonl"),
            "type": "chat_template",
            "chat_template": "chatml",
            "roles_to_train": ["assistant"],
            "train_on_eos": "turn",
        }
    ]
    lora = {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}
    configs = {
        "full": toy_config(
            tiny_model, train, tmp / "full", max_steps=60, max_train_samples=480, warmup_steps=5
        ),
        "lora": toy_config(
            tiny_model,
            train,
            tmp / "lora",
            datasets=chat,
            sequence_len=256,
            max_steps=30,
            max_train_samples=240,
            learning_rate=1.0e-2,
            adapter=lora,
        ),
        "qlora": toy_config(
            tiny_model,
            train,
            tmp / "qlora",
            max_steps=12,
            learning_rate=1.0e-2,
            adapter={**lora, "type": "qlora"},
        ),
    }
    for name, config in configs.items():
        run_api(tmp, config, name=f"{name}.yml")
    return {name: tmp / name for name in configs}
