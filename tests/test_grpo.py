"""`method: grpo`: GRPO raises a rule reward on the tiny random model, the model completes exactly the
prompt tokens the pipeline encoded, the built-in and a third-party reward (the example package's, from
its entry point) are called with the rows' columns, and what GRPO cannot run is refused at validate
time at its line."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_api, toy_config, write_yaml
from trainer.config.errors import ConfigErrors, dotted
from trainer.resolve.registry import Entry, default_registry
from trainer.resolve.validate import load_config

PACKAGE = REPO / "examples" / "plugin-package"


def lowercase_share(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """The share of a completion's characters that are a-z: ~10% of the tiny random model's
    byte-level samples, so each group of completions differs, and a policy can reach 1.0."""
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


@pytest.fixture
def test_reward(monkeypatch: pytest.MonkeyPatch) -> str:
    """`lowercase_share` registered as a `trainer.rewards` entry point of the process-wide registry
    for this test (what an installed distribution's metadata would add; removed afterwards)."""
    entry = Entry("rewards", "lowercase_share", f"{__name__}:lowercase_share", "tests", "0")
    monkeypatch.setitem(default_registry().entries["rewards"], "lowercase_share", [entry])
    return "lowercase_share"


def grpo_config(model: Path, data: Path, out: Path, rewards: list[Any], **overrides: Any) -> dict[str, Any]:
    """A short GRPO run on the toy prompts (`data` is the toy folder): 2 prompts x 8 completions a step."""
    method = {"type": "grpo", "rewards": rewards, "num_generations": 8, "max_completion_length": 8}
    method.update(overrides.pop("method", {}))
    config = toy_config(
        model,
        data / "prompts_train.jsonl",
        out,
        method=method,
        datasets=[{"path": str(data / "prompts_train.jsonl"), "type": "prompt"}],
        max_train_samples=320,
        micro_batch_size=16,
        max_steps=20,
    )
    config.update(overrides)
    return config


def logged(built: Any, key: str) -> list[float]:
    return [h[key] for h in built.trainer.state.log_history if key in h]


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_raises_the_mean_reward(tiny_model, toy_data, tmp_path, test_reward, seed) -> None:  # type: ignore[no-untyped-def]
    config = grpo_config(tiny_model, toy_data, tmp_path / "o", [test_reward], seed=seed)
    built = run_api(tmp_path, config)
    rewards = logged(built, "reward")
    assert len(rewards) == 20
    assert logged(built, "rewards/lowercase_share/mean") == rewards  # one reward, weight 1
    first, last = statistics.mean(rewards[:5]), statistics.mean(rewards[-5:])
    assert first < 0.4, rewards  # the random model samples bytes near-uniformly: few are letters
    assert last > 0.8 and last > first + 0.4, rewards
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "o")  # a full run saves a plain model


def test_the_model_completes_the_pipelines_prompt_ids(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A chat template that starts with the BOS token: TRL re-tokenizing the rendered text would put
    a second BOS before it; the model is given the pipeline's ids (one BOS) instead."""
    from trainer.runtime.build import build_trainer

    prompts = toy_data / "prompts_train.jsonl"
    config = grpo_config(
        tiny_model,
        toy_data,
        tmp_path / "o",
        ["answer_similarity"],
        method={"num_generations": 4},
        datasets=[{"path": str(prompts), "type": "prompt", "chat_template": "mistral"}],
        sequence_len=96,
        max_train_samples=16,
        micro_batch_size=8,
        max_steps=1,
    )
    built = build_trainer(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    trainer, tokenizer = built.trainer, built.tokenizer
    row = trainer.train_dataset[0]
    assert row["prompt"].startswith("<s> [INST]")  # the text the reward functions see
    assert row["prompt_ids"][:2] != [tokenizer.bos_token_id] * 2
    assert tokenizer(text=row["prompt"])["input_ids"][:2] == [tokenizer.bos_token_id] * 2
    given: list[list[int]] = []
    generate = trainer.model.generate

    def recording(*args: Any, **kwargs: Any) -> Any:  # what the model is asked to complete
        for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
            given.append(ids[mask.bool()].tolist())
        return generate(*args, **kwargs)

    trainer.model.generate = recording
    trainer.train()
    assert len(given) == 8  # 2 prompts x 4 completions
    rows = {tuple(ids) for ids in trainer.train_dataset["prompt_ids"]}
    assert all(tuple(ids) in rows for ids in given)


def test_beta_under_lora_measures_the_kl_to_the_adapter_switched_off(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = grpo_config(
        tiny_model,
        toy_data,
        tmp_path / "o",
        ["answer_similarity", {"name": "answer_match", "weight": 2.0}],
        method={"beta": 0.1},
        adapter="lora",
        learning_rate=1e-2,
        max_steps=4,
    )
    built = run_api(tmp_path, config)
    assert built.trainer.ref_model is None  # TRL's reference under PEFT: the adapter switched off
    kl = logged(built, "kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # the policy moved from the reference
    assert set(built.trainer.reward_func_names) == {"answer_similarity", "answer_match"}
    history = built.trainer.state.log_history[0]
    weighted = history["rewards/answer_similarity/mean"] + 2.0 * history["rewards/answer_match/mean"]
    assert history["reward"] == pytest.approx(weighted, abs=1e-5)


def test_full_training_with_beta_and_added_tokens_is_refused_before_the_reference_loads(  # type: ignore[no-untyped-def]
    tiny_model, toy_data, tmp_path
) -> None:
    """TRL reloads a full run's reference from base_model, without the rows of tokens the config adds
    (which crashes on the first added id): refused with the reason instead."""
    from trainer.runtime.build import build_trainer

    config = grpo_config(
        tiny_model,
        toy_data,
        tmp_path / "o",
        ["answer_similarity"],
        method={"beta": 0.1},
        special_tokens={"pad_token": "<pad>"},
    )
    resolved = load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
    with pytest.raises(ConfigErrors) as err:
        build_trainer(resolved)
    (problem,) = err.value.problems
    assert problem.path == ("method", "beta")
    assert "do not cover the 1 tokens this config adds" in problem.message


# ---- rewards ----------------------------------------------------------------------------------


def test_answer_match_and_answer_similarity() -> None:
    from plugins.rewards.rules import answer_match, answer_similarity

    completions = ["enalp", " enalp\n", "enal", "xyz", [{"role": "assistant", "content": "enalp"}], "a"]
    answers: list[Any] = ["enalp"] * 5 + [None]
    assert answer_match([""] * 6, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    scores = answer_similarity([""] * 6, completions, answer=answers, trainer_state=None)
    assert scores[:2] == [1.0, 1.0] and scores[4] == 1.0 and scores[5] is None
    assert scores[2] == pytest.approx(2 * 4 / 9) and scores[3] == 0.0
    with pytest.raises(ValueError, match="'answer' column, which the dataset does not have"):
        answer_match(["p"], ["c"])


def example_reward() -> Any:
    """The example package's reward function, from its source file (it imports nothing)."""
    spec = importlib.util.spec_from_file_location(
        "answer_prefix", PACKAGE / "trainer_plugin_example" / "answer_prefix.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.answer_prefix


def test_the_example_reward_gives_partial_credit_for_the_start() -> None:
    answer_prefix = example_reward()
    completions = ["Paris is", "Pa", "Paris.", "paris", " Paris.  and more"]
    assert answer_prefix([""] * 5, completions, answer=["Paris."] * 5) == [5 / 6, 2 / 6, 1.0, 0.0, 1.0]
    assert answer_prefix(["q"], ["x"], answer=[None]) == [None]


def cli(site: Path, command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", f"trainer.cli.{command}", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_third_party_reward_is_listed_and_used_by_a_grpo_run(
    example_plugin_site: Path, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    listed = cli(example_plugin_site, "plugins")
    assert listed.returncode == 0, listed.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in listed.stdout.splitlines()[1:]}
    assert rows[("rewards", "answer_prefix")] == ["trainer-plugin-example", "0.1.0", "ok"]
    assert rows[("rewards", "answer_match")] == ["trainer", "0.1.0", "ok"]
    config = grpo_config(
        tiny_model,
        toy_data,
        tmp_path / "o",
        ["answer_prefix", {"name": "answer_match", "weight": 0.5}],
        method={"num_generations": 4},
        micro_batch_size=8,
        max_steps=3,
    )
    run = cli(example_plugin_site, "train", str(write_yaml(tmp_path / "cfg.yml", config)))
    assert run.returncode == 0, run.stderr[-3000:]
    state = json.loads((tmp_path / "o" / "trainer_state.json").read_text(encoding="utf-8"))
    steps = [h for h in state["log_history"] if "reward" in h]
    assert len(steps) == 3
    assert all({"rewards/answer_prefix/mean", "rewards/answer_match/mean"} <= set(h) for h in steps)
    misspelt = cli(
        example_plugin_site, "validate", str(tmp_path / "cfg.yml"), "method.rewards=[answer_prefx]"
    )
    assert misspelt.returncode == 2
    assert "unknown reward 'answer_prefx' (did you mean 'answer_prefix'?)" in misspelt.stderr


def test_the_example_packages_grpo_config_validates(
    example_plugin_site: Path, tiny_model: Path, tmp_path: Path
) -> None:
    import shutil

    workdir = tmp_path / "example"  # a copy: nothing is written into the repository
    shutil.copytree(PACKAGE, workdir, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = cli(example_plugin_site, "validate", "example-grpo.yml", f"base_model={tiny_model}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "grpo [trainer 0.1.0]" in result.stdout


# ---- refusals at validate time ----------------------------------------------------------------


def problems_of(write_config, text: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each problem's `path: message` by its line."""
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(write_config(text)))
    lines: dict[str, str] = {}
    for problem in caught.value.problems:
        line = problem.where.rsplit(":", 1)[-1]
        lines[line] = lines.get(line, "") + problem.render() + "\n"
    return lines


def test_what_grpo_cannot_run_is_refused_at_its_line(write_config, tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prompts, sft_rows = toy_data / "prompts_train.jsonl", toy_data / "train.jsonl"
    lines = problems_of(
        write_config,
        f"""
        base_model: {tiny_model}
        method:
          type: grpo
          rewards:
            - answer_match
            - {{name: answer_mtach, weight: 2}}
            - name: answr_similarity
          num_generations: 3
        datasets:
          - path: {prompts}
            type: prompt
          - path: {sft_rows}
            type: prompt_completion
        micro_batch_size: 8
        output_dir: {tmp_path / "out"}
        """,
    )
    assert lines.keys() == {"6", "7", "8", "13"}, lines
    assert (
        "method.rewards[1]: unknown reward 'answer_mtach' (did you mean 'answer_match'?); known:"
        in lines["6"]
    )
    assert (
        "method.rewards[2]: unknown reward 'answr_similarity' (did you mean 'answer_similarity'?)"
        in lines["7"]
    )
    assert (
        "method.num_generations: each generation batch must hold whole groups of 3 completions, but it "
        "holds 8 (micro_batch_size 8 x 1 process(es) x 1 step(s) per generation)" in lines["8"]
    )
    assert (
        "formatter 'prompt_completion' gives sft rows, but method 'grpo' trains on prompt rows" in lines["13"]
    )
    assert "use type: prompt" in lines["13"]


ONE = "{type: grpo, rewards: [answer_match]"
SETTINGS = [
    ("{type: grpo}", "", "method.rewards", "required key is missing"),
    ("{type: grpo, rewards: []}", "", "method.rewards", "at least 1 item"),
    (
        "{type: grpo, rewards: [5]}",
        "",
        "method.rewards[0]",
        "must be a reward name or a {name, weight} block",
    ),
    (
        "{type: grpo, rewards: [{name: answer_match, wieght: 2}]}",
        "",
        "method.rewards[0].wieght",
        "unknown key",
    ),
    (ONE + ", num_generations: 1}", "micro_batch_size: 4", "method.num_generations", "needs at least 2"),
    (ONE + "}", "", "method.num_generations", "holds 1 (micro_batch_size 1 x 1 process(es) x 1 step(s) per"),
    (
        ONE + ", num_generations: 4}",
        "gradient_accumulation_steps: 3\nmicro_batch_size: 2",
        "method.num_generations",
        "holds 6 (micro_batch_size 2 x 1 process(es) x 3 step(s) per generation)",
    ),
    (
        ONE + ", num_generations: 4}",
        "micro_batch_size: 4\nval_set_size: 8\neval_batch_size: 6",
        "method.num_generations",
        "evaluation batches must hold whole groups of 4 completions, but they hold 6",
    ),
    (
        ONE + ", num_generations: 8}",
        "micro_batch_size: 4\ndistributed: {type: ddp, num_processes: 3}",
        "method.num_generations",
        "holds 12 (micro_batch_size 4 x 3 process(es)",
    ),
    (ONE + ", num_generations: 4}", "micro_batch_size: 2\ntrainer_args: {steps_per_generation: 2}", None, ""),
    (ONE + ", loss_type: grp}", "", "method.loss_type", "unknown GRPO loss 'grp'; TRL's: grpo, dapo"),
    (ONE + ", loss_type: luspo}", "", "method.loss_type", "importance_sampling_level: sequence"),
    (ONE + ", beta: 0.1}", "tokens: ['<x>']\nmicro_batch_size: 8", "method.beta", "TRL loads the reference"),
    (ONE + ", beta: 0.1}", "tokens: ['<x>']\nadapter: lora\nmicro_batch_size: 8", None, ""),
    (ONE + "}", "trainer_args: {beta: 0.1}", "trainer_args.beta", "set this in the method block"),
    (ONE + "}", "sample_packing: true", "sample_packing", "runs padded batches only"),
]
"""(method block, other keys, the path refused or None for a valid config, what its message says)."""


@pytest.mark.parametrize("method,extra,path,expected", SETTINGS)
def test_grpo_settings_are_checked(  # type: ignore[no-untyped-def]
    write_config, tiny_model, toy_data, tmp_path, method, extra, path, expected
) -> None:
    text = (
        f"base_model: {tiny_model}\nmethod: {method}\n"
        f"datasets: [{{path: {toy_data / 'prompts_train.jsonl'}, type: prompt}}]\n"
        f"output_dir: {tmp_path / 'out'}\n{extra}\n"
    )
    if path is None:
        load_config(str(write_config(text)))  # valid
        return
    with pytest.raises(ConfigErrors) as caught:
        load_config(str(write_config(text)))
    rendered = [f"{dotted(p.path)}: {p.message}" for p in caught.value.problems]
    assert any(r.startswith(f"{path}: ") and expected in r for r in rendered), rendered


def test_use_vllm_needs_vllm(write_config, tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    lines = problems_of(
        write_config,
        f"""
        base_model: {tiny_model}
        method: {{type: grpo, rewards: [answer_match], use_vllm: true}}
        datasets: [{{path: {toy_data / "prompts_train.jsonl"}, type: prompt}}]
        output_dir: {tmp_path / "out"}
        """,
    )
    assert lines.keys() == {"2"}
    assert "method.use_vllm: needs the 'vllm' package" in lines["2"]


def test_resumed_grpo_equals_uninterrupted(tiny_model, toy_data, tmp_path, test_reward) -> None:  # type: ignore[no-untyped-def]
    """Sampling restarts from the checkpoint's RNG states: a run stopped after step 3 and resumed
    samples the same completions, so its rewards, losses and final weights are the uninterrupted run's."""
    from tests.test_long_runs import final_weights, max_difference, stopped_at, train_logged

    config = grpo_config(
        tiny_model, toy_data, tmp_path / "ref", [test_reward], max_steps=6, save_strategy="steps",
        save_steps=3, adapter={"type": "lora", "r": 4},
    )  # fmt: skip
    reference = run_api(tmp_path, config, name="ref.yml")
    stopped_at(tmp_path / "ref", 3, tmp_path / "resumed")
    resumed, lines = train_logged(
        write_yaml(tmp_path / "resumed.yml", dict(config, output_dir=str(tmp_path / "resumed"))),
        ["resume=auto"],
    )
    assert f"resuming from {tmp_path / 'resumed' / 'checkpoint-3'}" in lines
    for key in ("reward", "loss"):
        assert logged(resumed, key) == pytest.approx(logged(reference, key), abs=1e-6)
    assert max_difference(final_weights(tmp_path / "ref"), final_weights(tmp_path / "resumed")) <= 1e-6
