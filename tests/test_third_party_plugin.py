"""The example third-party package (examples/plugin-package) works end to end as a stranger's would:
built and installed by pip (real entry-point metadata), listed, validated, and used in a real run.

The package is installed with `pip install --target` into a temporary directory that only this
module's subprocesses (PYTHONPATH) and in-process checks (sys.path) see: the shared environment is
never changed, so other tests — and other test runs going on at the same time — keep seeing only
the plugins they expect, and nothing is left behind if this module is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from trainer.config.schema import TrainConfig
from trainer.resolve.registry import Entry, Registry

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "examples" / "plugin-package"
DIST = "trainer-plugin-example"
WriteConfig = Callable[..., Path]  # the conftest fixture `write_config`


@pytest.fixture(scope="module")
def plugin_site(example_plugin_site: Path) -> Path:
    """A directory holding the installed package (its code and its .dist-info metadata)."""
    assert (example_plugin_site / "trainer_plugin_example-0.1.0.dist-info" / "entry_points.txt").is_file()
    return example_plugin_site


def cli(site: Path, command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m trainer.cli.<command>` with the installed package importable."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", f"trainer.cli.{command}", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def qa_data(toy_data: Path, tmp_path: Path) -> Path:
    """The toy task as question/answer rows; every third row has a context."""
    rows = []
    with open(toy_data / "train.jsonl", encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i == 64:
                break
            word = json.loads(line)["generation"][::-1]
            row = {"question": f"Reverse {word}", "answer": word[::-1]}
            if i % 3 == 0:
                row["context"] = f"{len(word)} letters"
            rows.append(row)
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_config(write_config: WriteConfig, model: Path, data: Path, out: Path) -> Path:
    return write_config(
        f"""
        base_model: {model}
        datasets:
          - path: {data}
            type: qa_pairs
            question_field: question
            template: "{{context}}Q: {{question}}\\nA: "
            context_template: "[{{context}}] "
        sequence_len: 48
        micro_batch_size: 4
        learning_rate: 1.0e-3
        max_steps: 10
        logging_steps: 2
        save_strategy: "no"
        output_dir: {out}
        callbacks:
          - type: loss_log
        """
    )


def test_plugins_cli_lists_both(plugin_site: Path) -> None:
    result = cli(plugin_site, "plugins")
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:2]): line.split() for line in result.stdout.splitlines()[1:]}
    for kind, name in (("formatters", "qa_pairs"), ("callbacks", "loss_log")):
        assert rows[(kind, name)][2:] == [DIST, "0.1.0", "ok"], result.stdout


def test_plugin_modules_import_without_torch(plugin_site: Path) -> None:
    code = (
        "import sys, trainer_plugin_example.qa_pairs, trainer_plugin_example.loss_log\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_validate_shows_distribution(
    plugin_site: Path, write_config: WriteConfig, tiny_model: Path, qa_data: Path, tmp_path: Path
) -> None:
    config = qa_config(write_config, tiny_model, qa_data, tmp_path / "run")
    result = cli(plugin_site, "validate", str(config))
    assert result.returncode == 0, result.stderr
    assert f"qa_pairs [{DIST} 0.1.0]" in result.stdout
    assert f"loss_log [{DIST} 0.1.0]" in result.stdout


def test_shipped_example_config_validates(plugin_site: Path, tiny_model: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "example"
    shutil.copytree(PACKAGE, workdir, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = cli(plugin_site, "validate", "example.yml", f"base_model={tiny_model}", cwd=workdir)
    assert result.returncode == 0, result.stderr


def test_schema_covers_third_party_options(plugin_site: Path) -> None:
    result = cli(plugin_site, "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    formatters = {
        c["properties"]["type"]["const"]: c for c in schema["properties"]["datasets"]["items"]["anyOf"]
    }
    assert {"question_field", "context_template", "path"} <= set(formatters["qa_pairs"]["properties"])
    callbacks = [c for c in schema["properties"]["callbacks"]["items"]["anyOf"] if "properties" in c]
    loss_log = next(c for c in callbacks if c["properties"]["type"]["const"] == "loss_log")
    assert set(loss_log["properties"]) == {"type", "path", "stop_below"}
    assert loss_log["additionalProperties"] is False


def test_option_errors_have_path_and_line(
    plugin_site: Path, write_config: WriteConfig, tiny_model: Path, qa_data: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "taken.jsonl"
    existing.write_text("", encoding="utf-8")
    config = write_config(
        f"""
        base_model: {tiny_model}
        datasets:
          - path: {qa_data}
            type: qa_pairs
            questoin_field: q
            template: "Q: {{query}}"
        output_dir: {tmp_path / "run"}
        callbacks:
          - type: loss_log
            stop_belwo: 0.1
          - type: loss_log
            path: {existing}
        """
    )
    result = cli(plugin_site, "validate", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "4 config errors:"
    assert lines[1:] == [
        f"  {config}:5  datasets[0].questoin_field: unknown key 'questoin_field' "
        "(did you mean 'question_field'?)",
        f"  {config}:6  datasets[0].template: value error, must contain {{question}} (got 'Q: {{query}}')",
        f"  {config}:10  callbacks[0].stop_belwo: unknown key 'stop_belwo' (did you mean 'stop_below'?)",
        f"  {config}:12  callbacks[1].path: '{existing}' already exists; remove it or choose another file",
    ]


def test_formatter_and_callback_in_process(
    plugin_site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The plugin-author way: a fresh Registry with explicit entries, no CLI."""
    from transformers import TrainerControl, TrainerState

    from trainer.api import Segment

    monkeypatch.syspath_prepend(str(plugin_site))
    registry = Registry()
    registry.add(Entry("formatters", "qa_pairs", "trainer_plugin_example.qa_pairs:QaPairs", DIST, "0.1.0"))
    registry.add(Entry("callbacks", "loss_log", "trainer_plugin_example.loss_log:LossLog", DIST, "0.1.0"))

    formatter_cls = registry.get("formatters", "qa_pairs")
    formatter = formatter_cls(formatter_cls.Options(question_field="q", answer_field="a"))
    assert formatter.format({"q": "2+2?", "a": "4", "context": " sums "}) == [
        Segment("Context: sums\nQuestion: 2+2?\nAnswer: ", train=False),
        Segment("4", train=True),
    ]
    assert formatter.format({"q": "2+2?", "a": "4"})[0].text == "Question: 2+2?\nAnswer: "

    callback_cls = registry.get("callbacks", "loss_log")
    config = TrainConfig(
        base_model="m", datasets=[{"path": "d.jsonl", "type": "qa_pairs"}], output_dir=str(tmp_path)
    )
    (callback,) = callback_cls(callback_cls.Options(stop_below=1.0)).contribute(config).callbacks
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control)
    for step, loss in ((1, 2.5), (2, 1.5), (3, 0.5)):
        state.global_step = step
        callback.on_log(None, state, control, logs={"loss": loss})
        assert control.should_training_stop is (loss < 1.0)
    callback.on_log(None, state, control, logs={"train_loss": 1.5})  # summaries are not losses
    log = tmp_path / "loss_log.jsonl"  # the default: inside output_dir
    assert [json.loads(line)["loss"] for line in log.read_text().splitlines()] == [2.5, 1.5, 0.5]
    state.global_step = 2  # resumed from a step-2 checkpoint: the lines after it are dropped
    callback.on_train_begin(None, state, control)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_training_run_writes_loss_log(
    plugin_site: Path, write_config: WriteConfig, tiny_model: Path, qa_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = qa_config(write_config, tiny_model, qa_data, out)
    result = cli(plugin_site, "train", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    logged = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    expected = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert [(row["step"], row["loss"]) for row in logged] == expected
    assert [step for step, _ in expected] == [1, 2, 4, 6, 8, 10]  # logging_first_step + every 2 steps
