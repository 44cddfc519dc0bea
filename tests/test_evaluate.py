"""`python -m trainer.cli.evaluate` and a config's `evals:`: perplexity is exp of the eval loss that
training logged on the same data; loss counts trained tokens only (checked by hand); generation
metrics equal a hand count over the generated answers, with a third-party metric from its own
package; `evals:` runs before and after training; mistakes exit 2 at their line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import run_api, run_command, toy_config, write_yaml  # noqa: E402

pytestmark = pytest.mark.xdist_group("inference")


def evaluated(*args: Any, cwd: Path | None = None) -> dict[str, float]:
    out = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"evaluate-{os.getpid()}.json"
    done = run_command("evaluate", *args, "--json", out, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, float] = json.loads(out.read_text())["results"]
    out.unlink()
    return results


def test_perplexity_is_exp_of_the_eval_loss_training_logged(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """One eval batch holds the whole split, so training's eval_loss is the token mean too."""
    out = tmp_path / "run"
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        out,
        max_steps=6,
        val_set_size=24,
        eval_batch_size=64,
        eval_strategy="steps",
        eval_steps=6,
    )
    run_api(tmp_path, config)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h][-1]
    results = evaluated(out)
    assert results["loss/loss"] == pytest.approx(logged, rel=1e-5)
    assert results["loss/perplexity"] == pytest.approx(math.exp(logged), rel=1e-5)


def hand_loss(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> tuple[float, int]:
    """Mean cross-entropy of the answer tokens (+ EOS) given the prompt, one row at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"]).input_ids
            answer = [
                *tokenizer(row["generation"], add_special_tokens=False).input_ids,
                tokenizer.eos_token_id,
            ]
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
            total -= float(logprobs[torch.arange(len(answer)), torch.tensor(answer)].sum())
            count += len(answer)
    return total / count, count


@pytest.fixture(scope="module")
def eval_rows(toy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    rows = [json.loads(line) for line in (toy_data / "eval.jsonl").read_text().splitlines()[:40]]
    data = tmp_path_factory.mktemp("eval-rows") / "eval40.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, rows


def test_loss_on_other_data_counts_the_trained_tokens_only(
    tiny_model: Path, eval_rows: tuple[Path, list[dict[str, str]]]
) -> None:
    """--data/--type on a plain model folder: the answer tokens (+ EOS) given the prompt, as a
    hand computation with the plain libraries gives it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, rows = eval_rows
    completion = "test_datasets[0].completion_field=generation"
    results = evaluated(tiny_model, "--data", data, "--type", "prompt_completion", completion)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    loss, count = hand_loss(model, AutoTokenizer.from_pretrained(tiny_model), rows)
    assert results["loss/tokens"] == count
    assert results["loss/loss"] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_adapter_runs_are_evaluated_as_they_load(
    kind: str, trained_runs: dict[str, Path], eval_rows: tuple[Path, list[dict[str, str]]]
) -> None:
    """A LoRA run (unmerged) and a QLoRA run (its 4-bit base): loss and generation metrics equal a
    hand computation on the model as `load` gives it (which tests/test_generate.py holds equal to
    PEFT's own loading)."""
    if kind == "qlora":
        pytest.importorskip("bitsandbytes")
    from trainer.inference.generation import Sampling, generate, prompt_ids
    from trainer.inference.load import load

    data, rows = eval_rows
    completion = "test_datasets[0].completion_field=generation"
    loss = evaluated(
        trained_runs[kind], "--data", data, "--type", "prompt_completion", completion, "val_set_size=0"
    )
    loaded = load(str(trained_runs[kind]))
    assert (kind == "qlora") == any(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    expected, count = hand_loss(loaded.model, loaded.tokenizer, rows)
    assert loss["loss/tokens"] == count and loss["loss/loss"] == pytest.approx(expected, rel=1e-5)

    scored = evaluated(
        trained_runs[kind],
        "--prompts",
        data,
        "--answer-field",
        "generation",
        "--metrics",
        "contains",
        "--max-new-tokens",
        "8",
    )
    answers = generate(loaded, [prompt_ids(loaded, r["prompt"]) for r in rows], Sampling(max_new_tokens=8))
    contained = sum(r["generation"] in a[0].text for r, a in zip(rows, answers, strict=True)) / len(rows)
    assert scored["generation/contains"] == pytest.approx(contained)


def test_generation_metrics_with_a_third_party_metric(
    trained_runs: dict[str, Path], toy_data: Path, example_plugin_site: Path, tmp_path: Path
) -> None:
    from trainer.inference.generation import Sampling, generate, prompt_ids
    from trainer.inference.load import load

    run = trained_runs["full"]
    rows = [json.loads(line) for line in (toy_data / "eval.jsonl").read_text().splitlines()[:24]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(example_plugin_site), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "-m",
        "trainer.cli.evaluate",
        str(run),
        "--prompts",
        str(prompts),
        "--answer-field",
        "generation",
        "--metrics",
        "exact_match,contains,char_accuracy",
        "--max-new-tokens",
        "12",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]

    loaded = load(str(run))
    answers = [
        c[0].text
        for c in generate(
            loaded, [prompt_ids(loaded, r["prompt"]) for r in rows], Sampling(max_new_tokens=12)
        )
    ]
    expected = [r["generation"] for r in rows]
    exact = sum(a.strip() == e for a, e in zip(answers, expected, strict=True)) / len(rows)
    contained = sum(e in a for a, e in zip(answers, expected, strict=True)) / len(rows)
    chars = sum(
        sum(x == y for x, y in zip(a.strip(), e, strict=False)) / max(len(e), len(a.strip()), 1)
        for a, e in zip(answers, expected, strict=True)
    ) / len(rows)
    assert results["generation/exact_match"] == pytest.approx(exact)
    assert results["generation/contains"] == pytest.approx(contained)
    assert results["generation/char_accuracy"] == pytest.approx(chars)
    assert 0 < chars < 1  # the partial credit is really partial on this run
    assert "generation/exact_match" in done.stdout and "generation/char_accuracy" in done.stdout


def test_evals_run_before_and_after_training(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    evals = [
        {"type": "loss", "batch_size": 32},
        {
            "type": "generation",
            "path": str(toy_data / "eval.jsonl"),
            "answer_field": "generation",
            "metrics": ["exact_match", "contains"],
            "max_new_tokens": 10,
            "limit": 32,
        },
    ]
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        out,
        max_steps=40,
        max_train_samples=320,
        val_set_size=32,
        evals=evals,
    )
    done = run_command("train", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evals before training:" in done.stdout and "evals (before -> after training):" in done.stdout
    saved = json.loads((out / "evals.json").read_text())
    before, after = saved["before"], saved["after"]
    assert (
        set(before)
        == set(after)
        == {"loss/loss", "loss/perplexity", "loss/tokens", "generation/exact_match", "generation/contains"}
    )
    assert after["loss/loss"] < 0.6 * before["loss/loss"]
    assert after["loss/tokens"] == before["loss/tokens"] > 0
    assert after["generation/contains"] >= before["generation/contains"]
    # the "after" numbers are the saved model's: evaluate gives them again
    again = evaluated(out)
    assert again["loss/loss"] == pytest.approx(after["loss/loss"], rel=1e-5)
    assert again["generation/exact_match"] == pytest.approx(after["generation/exact_match"])


def test_user_mistakes_exit_2_at_their_line(
    trained_runs: dict[str, Path], toy_data: Path, tmp_path: Path
) -> None:
    run = trained_runs["full"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x", "answer": "y"}\n{"prompt": "x"}\n')
    cases = {
        (
            "--prompts",
            toy_data / "eval.jsonl",
            "--metrics",
            "exact_matsh",
        ): "unknown metric 'exact_matsh' (did you mean 'exact_match'?)",
        ("--prompts", prompts): f"{prompts}:2  needs a text 'answer' field",
        ("--prompts", tmp_path / "none.jsonl"): "does not exist",
        ("--data", toy_data / "eval.jsonl"): "--data and --type go together",
        (
            "--data",
            toy_data / "eval.jsonl",
            "--type",
            "alpacca",
        ): "unknown formatter 'alpacca' (did you mean 'alpaca'?)",
    }
    for args, message in cases.items():
        done = run_command("evaluate", run, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    plain = run_command("evaluate", trained_runs["full"].parent / "nothing")
    assert plain.returncode == 2 and "no such file or directory" in plain.stderr


def test_loss_eval_is_refused_for_a_preference_method(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    config = toy_config(
        tiny_model,
        toy_data / "pref_train.jsonl",
        tmp_path / "o",
        method="dpo",
        datasets=[{"path": str(toy_data / "pref_train.jsonl"), "type": "preference"}],
        val_set_size=8,
        evals=[{"type": "loss"}],
    )
    done = run_command("validate", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 2
    assert (
        "evals[0]: measures next-token loss on prompt/answer rows; method 'dpo' trains on 'preference' rows"
        in done.stderr
    )


def test_evals_are_refused_where_the_weights_are_sharded(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    config = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        tmp_path / "o",
        val_set_size=8,
        evals=[{"type": "loss"}],
        distributed={"type": "fsdp", "num_processes": 2},
    )
    done = run_command("validate", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 2
    assert (
        "evals: evals run on the main process with the whole model, but distributed 'fsdp' shards"
        in done.stderr
    )


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_evals_under_ddp_run_once_and_match_one_process(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """Two DDP processes: the main one evaluates while the other waits; the numbers before training
    equal one process's (the same starting model), and the run finishes."""
    evals = [
        {"type": "loss"},
        {
            "type": "generation",
            "path": str(toy_data / "eval.jsonl"),
            "answer_field": "generation",
            "max_new_tokens": 6,
            "limit": 8,
        },
    ]
    common = {"max_steps": 4, "val_set_size": 16, "evals": evals, "micro_batch_size": 4}
    one = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "one", **common)
    two = toy_config(
        tiny_model,
        toy_data / "train.jsonl",
        tmp_path / "two",
        **common,
        distributed={"type": "ddp", "num_processes": 2},
    )
    for name, config in (("one", one), ("two", two)):
        done = run_command("train", write_yaml(tmp_path / f"{name}.yml", config))
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("evals (before -> after training):") == 1
    first = json.loads((tmp_path / "one" / "evals.json").read_text())
    second = json.loads((tmp_path / "two" / "evals.json").read_text())
    assert second["before"] == pytest.approx(first["before"], rel=1e-6)
    assert set(second["after"]) == set(first["after"])
