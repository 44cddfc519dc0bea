"""The `lm_eval` eval plugin on runs of our own `train`, with the local tasks in examples/lm-eval:
its scores equal a hand computation on the tasks' rows (greedy answers of the prompts tokenized as
lm_eval's HFLM tokenizes them, the log-likelihood of each answer), on a full fine-tune (raw text)
and on a LoRA run (a PeftModel, prompts through its chat template); the model, its tokenizer and
the global random state are as they were. Offline: the tasks read a local JSON Lines file."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.xdist_group("inference")
pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")

from plugins.evals.lm_eval import LmEval, LmEvalOptions, _unknown_message, flat_metrics  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from trainer.config.schema import TrainConfig  # noqa: E402

TASKS = REPO / "examples" / "lm-eval"
ROWS = [
    json.loads(line) for line in (TASKS / "reverse_words" / "reverse_words.jsonl").read_text().splitlines()
]
ALL = ["reverse_words", "reverse_words_choice", "reverse_words_perplexity"]
MAX_GEN_TOKS = 8  # reverse_words.yaml's generation_kwargs


class Context:
    """The least the plugin reads: the model, its tokenizer, the run's config and its prompt format."""

    def __init__(self, run: Path):
        from trainer.inference.load import load

        loaded = load(str(run))
        self.model, self.tokenizer, self.source = loaded.model, loaded.tokenizer, loaded.source
        resolved = yaml.safe_load((run / "config.resolved.yml").read_text(encoding="utf-8"))
        self.config = TrainConfig.model_validate(resolved)
        self.chat, self.stop_strings = self.prompt_format()

    def prompt_format(self, chat: bool | None = None) -> tuple[bool, list[str]]:
        """(chat template or not: as the run was trained unless `chat` says; the texts besides EOS
        that end an answer: the end-of-turn markers, as the trainer's own generation stops)."""
        from trainer.inference.load import chat_by_default, end_of_turn

        if chat is None:
            chat = chat_by_default(self.source, self.tokenizer)[0]
        ids, strings = end_of_turn(self.source, self.tokenizer, chat)
        eos = self.tokenizer.eos_token_id
        return chat, [self.tokenizer.convert_ids_to_tokens(i) for i in ids if i != eos] + strings


@pytest.fixture(scope="module")
def full(trained_runs: dict[str, Path]) -> Context:
    return Context(trained_runs["full"])


@pytest.fixture(scope="module")
def lora(trained_runs: dict[str, Path]) -> Context:
    return Context(trained_runs["lora"])


def evaluate(context: Context, **options: Any) -> dict[str, float]:
    plugin = LmEval(LmEvalOptions.model_validate({"include_path": str(TASKS), "tasks": ALL, **options}))
    return plugin.run(context)  # type: ignore[arg-type]


# --- the hand computation ---------------------------------------------------------------------


def rendered(context: Context, prompt: str) -> str:
    """The prompt as lm_eval renders it: raw, or a user turn through the chat template."""
    if not context.chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    text: str = context.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def encode(context: Context, text: str) -> list[int]:
    """HFLM's tokenization: the tokenizer's special tokens (its BOS) for raw text; none for a
    rendered chat template (the plugin's add_bos_token=False: the template writes its own)."""
    ids: list[int] = context.tokenizer(text, add_special_tokens=not context.chat).input_ids
    return ids


@torch.no_grad()
def greedy(context: Context, prompt: str) -> str:
    """One prompt alone, greedy, at most MAX_GEN_TOKS tokens, decoded without special tokens and
    cut at the task's `until` ("\\n"), the EOS text and (chat) the run's end-of-turn marker."""
    ids = torch.tensor([encode(context, rendered(context, prompt))])
    out = context.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=MAX_GEN_TOKS,
        do_sample=False,
        pad_token_id=context.tokenizer.pad_token_id,
    )
    text: str = context.tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    for stop in ["\n", context.tokenizer.eos_token, *context.stop_strings]:
        text = text.split(stop)[0]
    return text


@torch.no_grad()
def loglikelihood(context: Context, prompt: str, answer: str) -> tuple[float, bool]:
    """(log p(answer | prompt), whether greedy decoding gives the answer) as HFLM computes it: the
    prompt's trailing whitespace moves to the continuation, the continuation's tokens are those of
    the whole text after the prompt's."""
    text = rendered(context, prompt)
    spaces = len(text) - len(text.rstrip())
    if spaces:
        text, answer = text[:-spaces], text[-spaces:] + answer
    whole, start = encode(context, text + answer), len(encode(context, text))
    logits = context.model(input_ids=torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = range(start, len(whole))
    picked = sum(float(logprobs[i - 1, whole[i]]) for i in positions)
    greedy_ok = all(int(logprobs[i - 1].argmax()) == whole[i] for i in positions)
    return picked, greedy_ok


def by_hand(context: Context, rows: list[dict[str, Any]]) -> dict[str, float]:
    context.model.eval()
    exact = [greedy(context, row["prompt"]) == row["answer"] for row in rows]
    choice, choice_norm = [], []
    for row in rows:
        scores = [loglikelihood(context, row["prompt"], c)[0] for c in row["choices"]]
        gold = row["choices"].index(row["answer"])
        choice.append(scores.index(max(scores)) == gold)
        normed = [score / len(c) for score, c in zip(scores, row["choices"], strict=True)]  # per character
        choice_norm.append(normed.index(max(normed)) == gold)
    answer = [loglikelihood(context, row["prompt"], row["answer"]) for row in rows]
    return {
        "reverse_words/exact_match": sum(exact) / len(rows),
        "reverse_words_choice/acc": sum(choice) / len(rows),
        "reverse_words_choice/acc_norm": sum(choice_norm) / len(rows),
        "reverse_words_perplexity/perplexity": math.exp(-sum(ll for ll, _ in answer) / len(rows)),
        "reverse_words_perplexity/acc": sum(ok for _, ok in answer) / len(rows),
    }


def assert_scores(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected), got
    for name, value in expected.items():
        if name.endswith("perplexity"):
            assert got[name] == pytest.approx(value, rel=1e-4), name
        else:
            assert got[name] == value, (name, got[name], value)


# --- tests --------------------------------------------------------------------------------------


def test_full_run_scores_equal_the_hand_computation(full: Context) -> None:
    model, tokenizer = full.model, full.tokenizer
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pad, vocab, side = tokenizer.pad_token, len(tokenizer), tokenizer.padding_side
    model.train()
    torch.manual_seed(7)
    got = evaluate(full, batch_size=5)  # batches of unequal prompts: left padding
    after_rng = torch.rand(3)
    assert model.training  # restored
    torch.manual_seed(7)
    assert torch.equal(after_rng, torch.rand(3))  # lm_eval's seeding undone

    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():  # not moved, cast or changed
        assert after[name].dtype == tensor.dtype and after[name].device == tensor.device, name
        assert torch.equal(after[name], tensor), name
    assert (tokenizer.pad_token, len(tokenizer), tokenizer.padding_side) == (pad, vocab, side)

    expected = by_hand(full, ROWS)
    assert_scores(got, expected)
    # The untrained answers are all wrong; the log-likelihoods still rank some right answers first,
    # so the choice accuracy checks lm_eval's scoring row by row.
    assert 0 < got["reverse_words_choice/acc"] < 1, got


def test_lora_run_through_its_chat_template_from_another_folder(
    lora: Context, full: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PeftModel; the run trained on ChatML conversations, so the prompts go through its
    template and an answer ends at the run's end-of-turn marker. This model never writes the whole
    `<|im_end|>` (spelled in characters in this vocabulary) within a few tokens, so a marker it does
    write, `_end`, stands in for it. The task folder is a copy whose answers are, on every other
    row, the model's own greedy answer cut there: the exact match is then at least one half, and
    only if lm_eval generated and cut what the hand did."""
    from peft import PeftModel

    assert isinstance(lora.model, PeftModel)
    assert lora.prompt_format() == (True, ["<|im_end|>"])
    assert full.prompt_format() == (False, [])
    monkeypatch.setattr(lora, "prompt_format", lambda chat=None: (True, ["_end"]))
    monkeypatch.setattr(lora, "stop_strings", ["_end"])
    lora.model.eval()
    answers = [greedy(lora, row["prompt"]) for row in ROWS]
    assert "d|im" in answers and "d|im_end" not in answers, answers  # cut at the marker
    rows = [
        {**row, "answer": answer, "choices": [answer if c == row["answer"] else c for c in row["choices"]]}
        if i % 2 == 0 and answer and answer not in row["choices"]
        else row
        for i, (row, answer) in enumerate(zip(ROWS, answers, strict=True))
    ]
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    data = tasks / "reverse_words" / "reverse_words.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the tasks' data file resolves against their own folder

    got = evaluate(lora, include_path=str(tasks), batch_size=4)
    expected = by_hand(lora, rows)
    assert_scores(got, expected)
    assert got["reverse_words/exact_match"] >= 0.5, got
    assert not lora.model.training


def test_raw_prompts_on_request(lora: Context) -> None:
    """apply_chat_template: false overrides the run's format: the prompts go in as raw text."""
    got = evaluate(lora, tasks=["reverse_words_perplexity"], apply_chat_template=False, limit=4)
    raw = Context.__new__(Context)
    raw.__dict__.update(lora.__dict__, chat=False, stop_strings=[])
    lls = [loglikelihood(raw, row["prompt"], row["answer"])[0] for row in ROWS[:4]]
    assert got["reverse_words_perplexity/perplexity"] == pytest.approx(math.exp(-sum(lls) / 4), rel=1e-4)


def test_check_reports_a_missing_or_empty_include_path(tmp_path: Path) -> None:
    config = TrainConfig.model_validate(
        {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "completion"}], "output_dir": "out"}
    )

    def check(include: str | None) -> list[Any]:
        return LmEval(
            LmEvalOptions.model_validate({"tasks": ["reverse_words"], "include_path": include})
        ).check(config)

    assert check(str(TASKS)) == []
    assert check(None) == []
    [(key, message)] = check("no/such/folder")
    assert key == "include_path"
    assert "'no/such/folder' does not exist" in message and os.getcwd() in message
    (tmp_path / "task.yml").write_text("task: x\n", encoding="utf-8")
    [(key, message)] = check(str(tmp_path))
    assert key == "include_path" and "no task YAML files" in message and "*.yaml only" in message
    [(key, message)] = check(str(tmp_path / "task.yml"))
    assert "is not a folder" in message

    from plugins.methods.preference import Reward

    config.bind_plugins({"method": Reward()})
    assert any("causal language model" in str(problem) for problem in check(str(TASKS)))


def test_options() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LmEvalOptions.model_validate({"tasks": []})
    with pytest.raises(ValidationError):
        LmEvalOptions.model_validate({"tasks": ["x"], "num_fewshots": 1})
    assert LmEval.requires == {"lm_eval": "eval"}


def test_unknown_task_names_close_matches() -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    assert sorted(manager.all_subtasks) == sorted(ALL)
    message = _unknown_message(manager, "reverse_word", str(TASKS))
    assert "unknown lm_eval task 'reverse_word'" in message and "did you mean 'reverse_words'" in message


def test_flat_metrics() -> None:
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": "N/A",
                "exact_match,flexible-extract": 0.5,
                "sample_len": 4,
            },
            "mmlu": {"acc,none": 0.3, "acc_stderr,none": 0.01, "flag,none": True},
        }
    }
    assert flat_metrics(results) == {
        "gsm8k/exact_match,strict-match": 0.25,
        "gsm8k/exact_match,flexible-extract": 0.5,
        "mmlu/acc": 0.3,
    }
    assert flat_metrics(None) == {}


def test_module_import_is_light() -> None:
    code = (
        "import sys, plugins.evals.lm_eval; "
        "heavy = [m for m in ('torch', 'lm_eval', 'transformers', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
