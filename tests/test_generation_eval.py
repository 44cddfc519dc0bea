"""The `generation_eval` callback (the quickstart's before/after numbers): its answer loss is the mean
over answer tokens + EOS only, padding-independent; exact match compares greedy generations; a real
run reports both before and after training, logs them and writes generation_eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_api, run_command, toy_config, write_yaml

torch = pytest.importorskip("torch")

PAIRS = [("Reverse the word: abc\nAnswer: ", "cba"), ("Reverse the word: hello\nAnswer: ", "olleh")]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def test_answer_loss_counts_answer_and_eos_tokens_only(model_and_tokenizer) -> None:
    """Batched (right-padded) loss == the token-weighted mean of each pair scored by hand alone."""
    from plugins.callbacks.generation_eval import score

    model, tokenizer = model_and_tokenizer
    total, tokens = 0.0, 0
    for prompt, answer in PAIRS:
        prompt_ids = tokenizer(prompt).input_ids
        answer_ids = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0]
        predicted = logits[len(prompt_ids) - 1 : -1]  # the positions that predict the answer tokens
        total += float(
            torch.nn.functional.cross_entropy(predicted, torch.tensor(answer_ids), reduction="sum")
        )
        tokens += len(answer_ids)
    batched = score(model, tokenizer, PAIRS, max_new_tokens=4, batch_size=2)
    assert batched["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert batched["total"] == 2 and len(batched["samples"]) == 2


def test_exact_match_compares_the_greedy_generation(model_and_tokenizer) -> None:
    from plugins.callbacks.generation_eval import score

    model, tokenizer = model_and_tokenizer
    first = score(model, tokenizer, PAIRS, max_new_tokens=6, batch_size=2)
    generated = [sample["generated"] for sample in first["samples"]]
    assert first["exact_match"] == sum(g == a for g, (_, a) in zip(generated, PAIRS, strict=True)) / 2
    # the model's own generations as the answers: all match, in a batch (left-padded prompts) or alone
    own = [(prompt, text) for (prompt, _), text in zip(PAIRS, generated, strict=True)]
    assert score(model, tokenizer, own, max_new_tokens=6, batch_size=2)["exact_match"] == 1.0
    assert score(model, tokenizer, own[1:], max_new_tokens=6, batch_size=1)["exact_match"] == 1.0
    wrong = [(prompt, text + "x") for prompt, text in own]
    assert score(model, tokenizer, wrong, max_new_tokens=6, batch_size=2)["correct"] == 0


def test_run_reports_before_and_after_logs_and_writes_them(
    tiny_model: Path, toy_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = {
        "type": "generation_eval",
        "path": str(toy_data / "eval.jsonl"),
        "answer_field": "generation",
        "max_new_tokens": 8,
        "limit": 16,
        "show": 2,
    }
    out = tmp_path / "out"
    config = toy_config(tiny_model, toy_data / "train.jsonl", out, max_steps=20, callbacks=[callback])
    built = run_api(tmp_path, config)

    printed = capsys.readouterr().out
    assert f"held-out [before] {toy_data / 'eval.jsonl'}: answer loss " in printed
    assert "held-out before -> after: answer loss " in printed
    written = json.loads((out / "generation_eval.json").read_text(encoding="utf-8"))
    before, after = written["before"], written["after"]
    assert before["total"] == after["total"] == 16
    assert after["loss"] < before["loss"] - 0.5, (before["loss"], after["loss"])  # 20 steps: it learned
    assert 0.0 <= after["exact_match"] <= 1.0 and len(after["samples"]) == 16
    logged = {key: h[key] for h in built.trainer.state.log_history for key in h if key.startswith("heldout_")}
    assert logged["heldout_before_loss"] == pytest.approx(before["loss"])
    assert logged["heldout_after_loss"] == pytest.approx(after["loss"])
    assert logged["heldout_after_exact_match"] == after["exact_match"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "prompt,generation\nabc,cba\n",
            "{path}:1  not a JSON line (Expecting value): generation_eval reads",
        ),
        ('{"prompt": "abc", "generation": "cba"}\n{"prompt": "x"}\n', "{path}:2  needs fields 'prompt' and"),
    ],
    ids=["csv", "missing-field"],
)
def test_a_file_it_cannot_read_is_a_validate_error(
    text: str, problem: str, tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """A CSV (or a row without the fields) fails `validate` with the file and line, before any training,
    instead of a JSONDecodeError traceback when training starts."""
    path = tmp_path / "heldout.csv"
    path.write_text(text, encoding="utf-8")
    callback = {"type": "generation_eval", "path": str(path), "answer_field": "generation"}
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", callbacks=[callback])
    done = run_command("validate", write_yaml(tmp_path / "cfg.yml", config))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"callbacks[0].path: {problem.format(path=path)}" in done.stderr, done.stderr
