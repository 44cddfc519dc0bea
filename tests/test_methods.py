"""Preference methods (`method:`): the DPO loss equals the paper's formula from hand-computed
policy and reference log-probs, the reference is the base model bit for bit, each method learns the
toy preference (the capitalised answer), and a reward model ranks held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tests.conftest import run_api, toy_config, write_yaml  # noqa: E402
from trainer.training.methods import preference_accuracy  # noqa: E402


def pref_config(model: Path, data: Path, out: Path, method: Any, **overrides: Any) -> dict[str, Any]:
    """A short preference run on the toy pairs (`data` is the toy folder), evaluated on held-out pairs."""
    config = toy_config(
        model,
        data / "pref_train.jsonl",
        out,
        method=method,
        datasets=[{"path": str(data / "pref_train.jsonl"), "type": "preference"}],
        test_datasets=[{"path": str(data / "pref_eval.jsonl"), "type": "preference"}],
        max_eval_samples=64,
        max_train_samples=160,
        micro_batch_size=8,
        max_steps=20,
        learning_rate=5e-3,
        eval_strategy="no",
    )
    config.update(overrides)
    return config


def built_trainer(tmp_path: Path, config: dict[str, Any]) -> Any:
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer

    return build_trainer(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))


def completion_logps(model: Any, batch: dict[str, Any]) -> Any:
    """Summed log-probabilities of each sequence's completion tokens, by hand from the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    taken = logps.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (taken * batch["completion_mask"][:, 1:]).sum(-1)


def paper_loss(loss_type: str, beta: float, policy: Any, reference: Any, lengths: Any) -> Any:
    """DPO (Rafailov et al. 2023, eq. 7), IPO (Azar et al. 2023, eq. 17, per-token averaged log
    ratios as TRL documents) and the hinge loss (SLiC, Zhao et al. 2023)."""
    chosen, rejected = (policy - reference).chunk(2)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * (chosen - rejected)).mean()
    if loss_type == "hinge":
        return torch.relu(1 - beta * (chosen - rejected)).mean()
    chosen_len, rejected_len = lengths.chunk(2)
    return ((chosen / chosen_len - rejected / rejected_len - 1 / (2 * beta)) ** 2).mean()


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_is_the_papers_formula(tiny_model, toy_data, tmp_path, loss_type) -> None:  # type: ignore[no-untyped-def]
    beta = 0.5
    method = {"type": "dpo", "beta": beta, "loss_type": loss_type}
    config = pref_config(tiny_model, toy_data, tmp_path / "o", method, adapter={"type": "lora", "r": 4})
    trainer = built_trainer(tmp_path, config).trainer
    model = trainer.model
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so policy and reference differ
            parameter.data.normal_(0, 0.1)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        policy = completion_logps(model, batch)
        with model.disable_adapter():
            reference = completion_logps(model, batch)
    assert (policy - reference).abs().max() > 0.1  # the adapter moved the log-probs
    expected = paper_loss(loss_type, beta, policy, reference, batch["completion_mask"].sum(-1).float())
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_reference_log_probs_are_the_base_models_bit_for_bit(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under LoRA the reference is the model with its adapter switched off; under full training a
    frozen copy. Both give the untrained base model's log-probs exactly, even once the adapter moved."""
    lora = pref_config(tiny_model, toy_data, tmp_path / "a", "dpo", adapter={"type": "lora", "r": 4})
    lora_trainer = built_trainer(tmp_path, lora).trainer
    for name, parameter in lora_trainer.model.named_parameters():
        if "lora_B" in name:
            parameter.data.fill_(0.05)
    full = pref_config(tiny_model, toy_data, tmp_path / "b", "dpo")
    full_trainer = built_trainer(tmp_path, full).trainer
    assert full_trainer.ref_model is not None and lora_trainer.ref_model is None
    batch = next(iter(lora_trainer.get_train_dataloader()))
    via_adapter_off = torch.cat(lora_trainer.compute_ref_log_probs(lora_trainer.model, dict(batch)))
    via_frozen_copy = torch.cat(full_trainer.compute_ref_log_probs(full_trainer.ref_model, dict(batch)))
    assert torch.equal(via_adapter_off, via_frozen_copy)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        by_hand = completion_logps(base, batch)
    torch.testing.assert_close(via_adapter_off, by_hand, rtol=1e-5, atol=1e-5)


def accuracies(built: Any) -> list[float]:
    return [h["preference_accuracy"] for h in built.trainer.state.log_history if "preference_accuracy" in h]


def test_dpo_with_lora_learns_the_held_out_preference(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = pref_config(tiny_model, toy_data, tmp_path / "o", {"type": "dpo", "beta": 0.1}, adapter="lora")
    built = run_api(tmp_path, config)
    before, after = accuracies(built)
    assert 0.3 <= before <= 0.7  # the untrained model has no preference between the cases
    assert after >= 0.9
    assert built.trainer.state.log_history[-3]["rewards/accuracies"] >= 0.9  # TRL's, on the last steps
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "o")  # the output is a plain PEFT adapter
    assert loaded.peft_config["default"].r == 16  # lora's default rank


@pytest.mark.parametrize(
    "method,dataset",
    [
        ({"type": "kto"}, "kto"),
        ({"type": "kto"}, "preference"),
        ({"type": "orpo"}, "preference"),
        ({"type": "simpo"}, "preference"),
    ],
)
def test_kto_orpo_simpo_raise_the_held_out_preference(  # type: ignore[no-untyped-def]
    tiny_model, toy_data, tmp_path, method, dataset
) -> None:
    config = pref_config(tiny_model, toy_data, tmp_path / "o", method, adapter="lora")
    if method["type"] != "kto":
        before, after = accuracies(run_api(tmp_path, config))
    else:  # KTO evaluates on unpaired rows: measure on the held-out pairs here
        if dataset == "kto":
            config["datasets"] = [{"path": str(toy_data / "kto_train.jsonl"), "type": "kto"}]
        built = run_api(tmp_path, config)
        pairs = held_out_pairs(tiny_model, toy_data, tmp_path)
        pad = built.tokenizer.pad_token_id
        with built.trainer.model.disable_adapter():
            before = preference_accuracy(built.trainer.model, pairs, pad, "causal_lm")
        after = preference_accuracy(built.trainer.model, pairs, pad, "causal_lm")
    assert after >= before + 0.2, (before, after)


def held_out_pairs(model: Path, data: Path, tmp_path: Path) -> Any:
    """The toy task's held-out pairs, prepared as a DPO run prepares them."""
    from trainer.data.pipeline import build_datasets
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import load_tokenizer

    config = pref_config(model, data, tmp_path / "pairs", "dpo")
    resolved = load_config(str(write_yaml(tmp_path / "pairs.yml", config)))
    return build_datasets(resolved, load_tokenizer(resolved.config)).eval


def test_reward_model_ranks_held_out_pairs(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = pref_config(tiny_model, toy_data, tmp_path / "o", "reward", learning_rate=1e-3)
    built = run_api(tmp_path, config)
    before, after = accuracies(built)
    assert after >= 0.9, (before, after)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "o")  # loads as a reward model
    assert model.config.num_labels == 1


RESUMED = {
    "dpo-full-frozen-copy": ("dpo", "full", False, "rewards/margins"),
    "dpo-lora-packed": ("dpo", "lora", True, "rewards/margins"),
    "kto-lora": ("kto", "lora", False, "rewards/margins"),
    "orpo-full": ("orpo", "full", False, "rewards/margins"),
    "simpo-lora-packed": ("simpo", "lora", True, "rewards/margins"),
    "reward-lora": ("reward", "lora", False, "margin"),
}


@pytest.mark.parametrize("case", RESUMED)
def test_resumed_run_equals_uninterrupted(tiny_model, toy_data, tmp_path, case) -> None:  # type: ignore[no-untyped-def]
    """A run stopped after step 3 (its checkpoint alone in a fresh output_dir) and resumed gives the
    uninterrupted run's per-step losses, its method's logged metric and final weights, to 1e-6."""
    from tests.test_long_runs import final_weights, max_difference, stopped_at, train_logged

    method, adapter, packing, metric = RESUMED[case]
    config = pref_config(
        tiny_model, toy_data, tmp_path / "ref", method, adapter=adapter, sample_packing=packing,
        max_steps=8, save_strategy="steps", save_steps=3, max_train_samples=40, lr_scheduler="cosine",
        warmup_steps=2, test_datasets=[],
    )  # fmt: skip
    reference = run_api(tmp_path, config, name="ref.yml")
    stopped_at(tmp_path / "ref", 3, tmp_path / "resumed")
    resumed, lines = train_logged(
        write_yaml(tmp_path / "resumed.yml", dict(config, output_dir=str(tmp_path / "resumed"))),
        ["resume=auto"],
    )
    assert f"resuming from {tmp_path / 'resumed' / 'checkpoint-3'}" in lines

    def logged(run: Any, key: str) -> list[float]:
        return [h[key] for h in run.trainer.state.log_history if "loss" in h]

    assert [h["step"] for h in resumed.trainer.state.log_history if "loss" in h] == list(range(1, 9))
    for key in ("loss", metric):
        assert logged(resumed, key) == pytest.approx(logged(reference, key), abs=1e-6)
    assert max_difference(final_weights(tmp_path / "ref"), final_weights(tmp_path / "resumed")) <= 1e-6


def test_quickstart_dpo_preset_after_sft(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """examples/quickstart-dpo.yml, as the README runs it after the SFT quickstart (here on a short SFT
    run in a repo-like folder): DPO teaches the preference SFT never showed, and the run prints the
    held-out preference accuracy before and after."""
    from tests.conftest import examples_layout, run_command

    (tmp_path / "repo").mkdir()
    root = examples_layout(tmp_path / "repo", tiny_model, toy_data)
    (root / "runs" / "quickstart").unlink()  # the layout's stand-in: train the real SFT step instead
    sft = toy_config(tiny_model, toy_data / "train.jsonl", root / "runs" / "quickstart", max_steps=40)
    sft["max_train_samples"] = 320
    run_api(tmp_path, sft, name="sft.yml")
    short = ["max_train_samples=256", "max_eval_samples=64", "eval_steps=8"]
    done = run_command("train", "examples/quickstart-dpo.yml", *short, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("preference accuracy (held-out pairs"))
    before, after = (float(x.rstrip("%")) / 100 for x in line.split(": before ")[1].split(" -> after "))
    assert before <= 0.3 and after >= 0.9, line


def test_precomputed_reference_log_probs_are_stored_with_the_prepared_data(
    tiny_model, toy_data, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """precompute_ref_log_probs: the same losses as scoring the reference every step; the scores go
    beside the prepared dataset (dataset_prepared_path), so a second run does not recompute them."""
    from tests.conftest import run_command

    def losses(out: Path, **extra: Any) -> tuple[list[float], str]:
        config = pref_config(tiny_model, toy_data, out, {"type": "dpo", **extra}, adapter="lora", max_steps=6)
        config["dataset_prepared_path"] = str(tmp_path / "prepared")
        done = run_command("train", write_yaml(tmp_path / f"{out.name}.yml", config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        state = json.loads((out / "trainer_state.json").read_text())
        return [h["loss"] for h in state["log_history"] if "loss" in h], done.stderr

    every_step, _ = losses(tmp_path / "live")
    first, first_log = losses(tmp_path / "first", precompute_ref_log_probs=True)
    second, second_log = losses(tmp_path / "second", precompute_ref_log_probs=True)
    assert first == pytest.approx(every_step, abs=1e-6)
    assert second == pytest.approx(first, abs=1e-6)
    assert "Computing reference log probs for train dataset" in first_log
    assert "Computing reference log probs" not in second_log  # read from the prepared dataset's folder
    assert list((tmp_path / "prepared").glob("prepared-*/train/cache-*.arrow"))


def test_lora_reward_model_saves_its_score_head_and_merges(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under LoRA the reward model's score head trains in full and is saved with the adapter; the
    adapter loads as a sequence-classification PEFT model and `merge` writes a reward model that gives
    the same scores."""
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.conftest import run_command

    config = pref_config(tiny_model, toy_data, tmp_path / "o", "reward", adapter="lora", max_steps=6)
    run_api(tmp_path, config)
    adapter = json.loads((tmp_path / "o" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    done = run_command("merge", tmp_path / "o", "--out", tmp_path / "merged", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reloaded with AutoModelForSequenceClassification" in done.stdout
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "o")
    texts = ["Reverse the word: abc\nAnswer: CBA", "Reverse the word: abc\nAnswer: cba"]
    batch = tokenizer(texts, return_tensors="pt")
    with torch.no_grad():
        peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
            tmp_path / "o", num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
        peft_scores = peft_model.eval()(**batch).logits
        merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        merged_scores = merged(**batch).logits
    torch.testing.assert_close(merged_scores, peft_scores, rtol=1e-4, atol=1e-5)


def test_sigterm_stops_a_dpo_run_with_a_checkpoint_that_resumes(tiny_model, toy_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A safe stop works for preference methods as for SFT: SIGTERM -> a checkpoint at the end of the
    step, exit 143 with the resume command; resuming completes the run with the unstopped losses."""
    import re
    import signal
    import subprocess
    import sys

    from tests.test_long_runs import cli_env, train_logged

    out = tmp_path / "out"
    config = pref_config(
        tiny_model, toy_data, out, "dpo", adapter="lora", max_steps=12, max_train_samples=48,
        save_strategy="steps", save_steps=1000, test_datasets=[],
    )  # fmt: skip
    path = write_yaml(tmp_path / "cfg.yml", config)
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli.train", str(path)],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if "'loss'" in line:
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    found = re.search(r"stopped by SIGTERM at step (\d+) of 12: checkpoint saved to (\S+)\.", stderr)
    assert found, stderr[-3000:]
    _, lines = train_logged(out / "config.resolved.yml", ["resume=auto"])
    assert f"resuming from {found.group(2)}" in lines
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    reference = run_api(tmp_path, dict(config, output_dir=str(tmp_path / "ref")), name="ref.yml")
    expected = [h["loss"] for h in reference.trainer.state.log_history if "loss" in h]
    assert [h["loss"] for h in history if "loss" in h] == pytest.approx(expected, abs=1e-6)
