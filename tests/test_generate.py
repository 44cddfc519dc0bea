"""`python -m trainer.cli.generate`: a full, a LoRA (chat) and a QLoRA run load as they were trained
and generate what the plain libraries generate for the same prompt: greedy output equals
`model.generate` on the merged model (or, for QLoRA, on PEFT's adapter over the 4-bit base);
left-padded batches equal one prompt at a time; rows keep their fields; mistakes exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import run_command, toy_config  # noqa: E402

pytestmark = pytest.mark.xdist_group("inference")

PROMPTS = [
    "Reverse the word: plane\nAnswer: ",
    "Reverse the word: a\nAnswer: ",
    "Reverse the word: crocodile\n",
]


def reference(
    model: Any, tokenizer: Any, text: str, chat: bool, max_new_tokens: int, stop: str | None
) -> str:
    """What a user of the plain libraries gets: one prompt, greedy `model.generate`, decoded up to
    EOS (and the end-of-turn string)."""
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).input_ids
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answer.split(stop)[0] if stop else answer


def generated(run: Path, tmp: Path, *flags: str, rows: list[Any] | None = None) -> list[dict[str, Any]]:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in (rows or PROMPTS)), encoding="utf-8")
    out = tmp / f"out-{len(list(tmp.iterdir()))}.jsonl"
    done = run_command("generate", run, "--file", prompts, "--out", out, "--max-new-tokens", 12, *flags)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def merged_lora(trained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "lora-merged"
    done = run_command("merge", trained_runs["lora"], "--out", out, "--no-smoke-test")
    assert done.returncode == 0, done.stderr
    return out


def test_full_run_greedy_equals_model_generate(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained_runs["full"]
    rows = generated(run, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    expected = [reference(model, tokenizer, p, False, 12, None) for p in PROMPTS]
    assert [r["generation"] for r in rows] == expected
    assert [r["prompt"] for r in rows] == PROMPTS
    assert any(text for text in expected)  # the trained model answers something


def test_lora_chat_run_equals_the_merged_model(
    trained_runs: dict[str, Path], merged_lora: Path, tmp_path: Path
) -> None:
    """The adapter is applied unmerged; its greedy output is the merged model's, prompts rendered
    with the run's ChatML template and cut at its end-of-turn marker."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = generated(trained_runs["lora"], tmp_path)
    model = AutoModelForCausalLM.from_pretrained(merged_lora).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_lora)
    expected = [reference(model, tokenizer, p, True, 12, "<|im_end|>") for p in PROMPTS]
    assert [r["generation"] for r in rows] == expected


def test_qlora_run_uses_the_4bit_base(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    """By default the base loads in 4 bits as it was trained (equal to PEFT over a hand-loaded nf4
    base); --no-quantize loads it dequantized (equal to the dequantized merge)."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from trainer.inference.load import load

    run = trained_runs["qlora"]
    loaded = load(str(run))
    assert "QLoRA" in loaded.description
    assert any(type(m).__name__ == "Linear4bit" for m in loaded.model.modules())
    base = json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    tokenizer = AutoTokenizer.from_pretrained(run)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, quantization_config=quantization), run
    ).eval()
    rows = generated(run, tmp_path)
    assert [r["generation"] for r in rows] == [
        reference(model, tokenizer, p, False, 12, None) for p in PROMPTS
    ]

    merged = tmp_path / "merged"
    assert run_command("merge", run, "--out", merged, "--no-smoke-test").returncode == 0
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    rows = generated(run, tmp_path, "--no-quantize")
    assert [r["generation"] for r in rows] == [
        reference(plain, tokenizer, p, False, 12, None) for p in PROMPTS
    ]


def test_batches_equal_one_prompt_at_a_time(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    words = ["a", "plane", "crocodile", "xy", "elephants", "go"]
    prompts = [f"Reverse the word: {w}\nAnswer: " for w in words]
    together = generated(trained_runs["full"], tmp_path, "--batch-size", "6", rows=prompts)
    alone = generated(trained_runs["full"], tmp_path, "--batch-size", "1", rows=prompts)
    assert [r["generation"] for r in together] == [r["generation"] for r in alone]


def test_rows_keep_their_fields_and_sampling_options(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    rows = [
        {"id": 7, "prompt": PROMPTS[0], "meta": {"k": [1, 2]}},
        PROMPTS[1],
        {"id": 8, "question": "ignored", "prompt": PROMPTS[2]},
    ]
    out = generated(trained_runs["full"], tmp_path, "--output-field", "answer", rows=rows)
    assert out[0]["id"] == 7 and out[0]["meta"] == {"k": [1, 2]} and out[0]["prompt"] == PROMPTS[0]
    assert out[1] == {"prompt": PROMPTS[1], "answer": out[1]["answer"]}
    assert set(out[2]) == {"id", "question", "prompt", "answer"}

    sampled = ["--temperature", "1.5", "--top-k", "50", "--seed", "3", "--num-return-sequences", "3"]
    first = generated(trained_runs["full"], tmp_path, *sampled)
    again = generated(trained_runs["full"], tmp_path, *sampled)
    assert first == again  # the seed makes sampling reproducible
    assert all(isinstance(r["generation"], list) and len(r["generation"]) == 3 for r in first)
    other = generated(
        trained_runs["full"], tmp_path, *sampled[:-4], "--seed", "4", "--num-return-sequences", "3"
    )
    assert other != first


def test_chat_messages_rows_and_raw_mode(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from trainer.inference.generation import prompt_text
    from trainer.inference.load import load

    chat = load(str(trained_runs["lora"]))
    assert chat.chat and chat.stop_strings == ["<|im_end|>"]
    messages = [{"role": "system", "content": "Reverse each word."}, {"role": "user", "content": "plane"}]
    assert prompt_text(chat, messages) == (
        "<|im_start|>system\nReverse each word.<|im_end|>\n"
        "<|im_start|>user\nplane<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt_text(chat, "plane", system="S") == prompt_text(
        chat, [{"role": "system", "content": "S"}, {"role": "user", "content": "plane"}]
    )
    rows = generated(trained_runs["lora"], tmp_path, rows=[messages, {"messages": messages, "id": 1}])
    assert rows[0]["messages"] == messages and rows[0]["generation"] == rows[1]["generation"]

    raw = load(str(trained_runs["lora"]), chat=False)
    assert prompt_text(raw, "plane") == "plane"
    full = load(str(trained_runs["full"]))
    assert not full.chat and full.stop_strings == []


def test_stop_strings_cut_the_text(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    from trainer.inference.generation import Sampling, generate, prompt_ids
    from trainer.inference.load import load

    loaded = load(str(trained_runs["lora"]))
    ids = prompt_ids(loaded, "plane")
    (whole,) = generate(loaded, [ids], Sampling(max_new_tokens=12))[0]
    assert len(whole.text) >= 3, whole
    stop = whole.text[2]
    (cut,) = generate(loaded, [ids], Sampling(max_new_tokens=12, stop=[stop]))[0]
    assert cut.text == whole.text.split(stop)[0] and cut.finish_reason == "stop"
    assert whole.finish_reason in ("stop", "length")


def test_a_checkpoint_and_a_plain_model_folder_load(tiny_model: Path, toy_data: Path, tmp_path: Path) -> None:
    from tests.conftest import run_api

    out = tmp_path / "run"
    run_api(
        tmp_path,
        toy_config(
            tiny_model, toy_data / "train.jsonl", out, max_steps=2, save_strategy="steps", save_steps=2
        ),
    )
    checkpoint = out / "checkpoint-2"
    assert checkpoint.is_dir()
    from_checkpoint = generated(checkpoint, tmp_path)
    from_run = generated(out, tmp_path)
    assert from_checkpoint == from_run  # the last checkpoint holds the final weights
    plain = run_command("generate", tiny_model, "--prompt", "abc", "--max-new-tokens", 4)
    assert plain.returncode == 0 and "model: tiny-llama" in plain.stderr


def test_user_mistakes_exit_2_without_traceback(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{"prompt": 3}\n', encoding="utf-8")
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps([{"role": "user", "content": "hi"}]) + "\n", encoding="utf-8")
    existing = tmp_path / "exists.jsonl"
    existing.write_text("keep me\n", encoding="utf-8")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.resolved.yml").write_text("base_model: x\n", encoding="utf-8")
    (unfinished / "checkpoint-4").mkdir()
    cases = {
        (tmp_path / "nope", "--prompt", "x"): "no such directory",
        (unfinished, "--prompt", "x"): "did not finish; its checkpoints: checkpoint-4",
        (trained_runs["full"], "--file", bad): f"{bad}:2  needs a 'prompt' field",
        (trained_runs["full"], "--file", messages): f"{messages}:1  chat messages need a chat template",
        (trained_runs["full"], "--prompt", "x", "--out", existing): "exists; refusing to overwrite",
        (trained_runs["full"], "--prompt", "x" * 5000): "this model's context is",
        (trained_runs["full"], "--prompt", "x", "--top-p", "0"): "top_p must be in (0, 1]",
    }
    for args, message in cases.items():
        done = run_command("generate", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert existing.read_text() == "keep me\n"
