"""Every built-in chat template (ours and the ones shipped under Axolotl's names) renders a 3-turn
conversation and the `chat_template` formatter trains exactly the answers and their end-of-turn
markers; reasoning fields reach the template and train with their answer (Axolotl's
`field_thinking` / `template_thinking_key`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from plugins.formatters.chat_template import ChatTemplate
from plugins.formatters.chat_templates import BUILTIN_TEMPLATES, DETECT, TEMPLATE_DIR
from trainer.api import RowError
from trainer.data.encode import IGNORE, Encoded, SegmentEncoder

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]
ANSWERS = ["Paris.", "Berlin.", "Madrid."]
NO_SYSTEM = {"gemma"}  # Axolotl's gemma rejects a system message; ours folds it (so it is not here)
# Axolotl's template names (its ChatTemplate enum, less jinja and tokenizer_default, and phi_4, a file
# it ships outside the enum): all built-ins.
AXOLOTL_NAMES = [
    "alpaca", "chatml", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "gemma",
    "cohere", "llama3", "llama3_2_vision", "llama4", "phi_3", "phi_35", "deepseek_v2", "deepseek_v3", "jamba",
    "qwen_25", "qwen3", "qwen3_5", "falcon_h1", "nemotron_h", "exaone", "exaone4", "metharme", "pixtral",
    "llava", "qwen2_vl", "gemma3", "gemma3n", "gemma4", "gemma4_unified", "command_a", "command_a_tool_use",
    "command_a_rag", "aya", "phi_4",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    """The byte-level tiny tokenizer: every marker is plain text (one token per byte)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def make(tokenizer: Any, **options: Any) -> ChatTemplate:
    formatter = ChatTemplate(ChatTemplate.Options(**options))
    formatter.prepare(tokenizer)
    return formatter


def encode(formatter: ChatTemplate, tokenizer: Any, row: dict[str, Any]) -> Encoded:
    return SegmentEncoder(tokenizer, 8192).encode(formatter, formatter.format(row))


def trained_runs(tokenizer: Any, encoded: Encoded) -> list[str]:
    """The decoded trained tokens, one string per run of consecutive trained tokens."""
    runs: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE:
            assert label == token
            if previous == IGNORE:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def expected_runs(name: str, eos: str) -> list[str]:
    """Each answer followed by the template's own end-of-turn marker, written out per template."""
    marker = BUILTIN_TEMPLATES[name].eot
    marker = eos if marker is None else marker
    if name == "metharme":  # the turns run on (<|user|> follows); eos_token ends the conversation only
        return ["Paris.", "Berlin.", "Madrid." + eos]
    return [answer + marker for answer in ANSWERS]


def test_every_axolotl_template_name_is_a_builtin_and_each_file_is_listed() -> None:
    assert set(AXOLOTL_NAMES) <= set(BUILTIN_TEMPLATES)
    assert all(t.eot != DETECT for t in BUILTIN_TEMPLATES.values())  # every shipped file has its marker
    files = {path.stem for path in TEMPLATE_DIR.glob("*.jinja")}
    assert files == set(AXOLOTL_NAMES) - {"chatml", "llama3", "gemma"}
    assert (TEMPLATE_DIR / "NOTICE").read_text().count("Apache License, Version 2.0") == 1


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_three_turns_train_exactly_the_answers(tokenizer: Any, name: str) -> None:
    tok = copy.deepcopy(tokenizer)
    messages = TURNS if name in NO_SYSTEM else [SYSTEM, *TURNS]
    formatter = make(tok, chat_template=name)
    encoded = encode(formatter, tok, {"messages": messages})
    # the ids are the tokenizer's own render of the template, which is set on the tokenizer
    assert tok.chat_template == BUILTIN_TEMPLATES[name].source
    text = tok.apply_chat_template(messages, tokenize=False)
    assert encoded.input_ids == list(tok(text, add_special_tokens=False).input_ids)
    assert all(answer in text for answer in ANSWERS)
    assert trained_runs(tok, encoded) == expected_runs(name, tok.eos_token)
    # train_on_eos: none trains the answers alone
    plain = make(tok, chat_template=name, train_on_eos="none")
    assert trained_runs(tok, encode(plain, tok, {"messages": messages})) == ANSWERS


@pytest.mark.parametrize("name", ["chatml", "llama3", "qwen_25", "qwen"])
def test_axolotl_names_ours_already_had_render_the_same(tokenizer: Any, name: str) -> None:
    """chatml and llama3 stay ours (Axolotl's texts render string contents alike); qwen_25 is qwen."""
    assert BUILTIN_TEMPLATES["qwen_25"].source.rstrip("\n") == BUILTIN_TEMPLATES["qwen"].source.rstrip("\n")
    expected = {
        "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nCapital of France?"
        "<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
        "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>",
    }
    qwen = expected["chatml"]
    expected["qwen"] = expected["qwen_25"] = qwen
    render = tokenizer.apply_chat_template(
        [SYSTEM, *TURNS[:2]], chat_template=BUILTIN_TEMPLATES[name].source, tokenize=False
    )
    assert render == expected[name]


def test_detect_marker_uses_the_probe(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in whose marker is DETECT gets the special token the probe render finds."""
    monkeypatch.setitem(BUILTIN_TEMPLATES, "qwen3", BUILTIN_TEMPLATES["qwen3"]._replace(eot=DETECT))
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    formatter = make(tok, chat_template="qwen3")
    assert formatter.eot_tokens == ["<|im_end|>"]
    encoded = encode(formatter, tok, {"messages": [SYSTEM, *TURNS]})
    assert trained_runs(tok, encoded) == [a + "<|im_end|>" for a in ANSWERS]
    with pytest.raises(ValueError, match="end-of-turn marker"):
        make(copy.deepcopy(tokenizer), chat_template="qwen3")  # no special token follows the answer


# ---- reasoning ------------------------------------------------------------------------------------

REASONED = [
    SYSTEM,
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris.", "thinking": "France: Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin.", "thinking": "Germany's capital is Berlin."},
]
# gpt-oss's layout: the reasoning in an analysis channel before the final answer.
GPT_OSS_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|start|>assistant"
    "{% if m.thinking %}<|channel|>analysis<|message|>{{ m.thinking }}<|end|><|start|>assistant{% endif %}"
    "<|channel|>final<|message|>{{ m['content'] }}<|return|>"
    "{% else %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
)


def test_qwen3_reasoning_content_trains_with_the_answer(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    formatter = make(tok, chat_template="qwen3", field_thinking="thinking")
    encoded = encode(formatter, tok, {"messages": REASONED})
    text = tok.decode(encoded.input_ids)
    assert "<think>\nGermany's capital is Berlin.\n</think>\n\nBerlin.<|im_end|>" in text
    assert "France: Paris." not in text  # qwen3 drops the reasoning of turns before the last question
    # the reasoning, the template's text up to the answer, the answer and <|im_end|>: after <think>\n,
    # which qwen3 writes with or without reasoning
    assert trained_runs(tok, encoded) == [
        "Paris.<|im_end|>",
        "Germany's capital is Berlin.\n</think>\n\nBerlin.<|im_end|>",
    ]
    # the same rows with the reasoning under the template's own key need no option
    renamed = [{("reasoning_content" if k == "thinking" else k): v for k, v in m.items()} for m in REASONED]
    default = make(tok, chat_template="qwen3")
    assert encode(default, tok, {"messages": renamed}) == encoded


def test_gpt_oss_style_thinking_key(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    formatter = make(
        tok,
        chat_template="jinja",
        chat_template_jinja=GPT_OSS_STYLE,
        field_thinking="thinking",
        template_thinking_key="thinking",
        eot_tokens=["<|return|>"],
    )
    encoded = encode(formatter, tok, {"messages": REASONED})
    runs = trained_runs(tok, encoded)
    # from where the render parts from one without the reasoning ("analysis" vs "final")
    assert runs == [
        "analysis<|message|>France: Paris.<|end|><|start|>assistant<|channel|>final<|message|>"
        "Paris.<|return|>",
        "analysis<|message|>Germany's capital is Berlin.<|end|><|start|>assistant<|channel|>final<|message|>"
        "Berlin.<|return|>",
    ]
    assert not any("Capital" in run or "terse" in run for run in runs)
    # field_thinking defaults to template_thinking_key: the same rows, the same tokens and labels
    same = make(tok, chat_template="jinja", chat_template_jinja=GPT_OSS_STYLE,
                template_thinking_key="thinking", eot_tokens=["<|return|>"])  # fmt: skip
    assert encode(same, tok, {"messages": REASONED}) == encoded
    # reasoning of an untrained role stays masked
    user_thinks = copy.deepcopy(REASONED)
    user_thinks[1]["thinking"] = "The user wonders."
    masked = trained_runs(tok, encode(formatter, tok, {"messages": user_thinks}))
    assert masked == runs


def test_template_without_reasoning_trains_the_answer_only(tokenizer: Any) -> None:
    tok = copy.deepcopy(tokenizer)
    formatter = make(tok, chat_template="chatml", field_thinking="thinking")
    encoded = encode(formatter, tok, {"messages": REASONED})
    assert trained_runs(tok, encoded) == ["Paris.<|im_end|>", "Berlin.<|im_end|>"]


def test_reasoning_must_be_a_string(tokenizer: Any) -> None:
    formatter = make(copy.deepcopy(tokenizer), chat_template="qwen3", field_thinking="thinking")
    rows: list[dict[str, Any]] = copy.deepcopy(REASONED)
    rows[2]["thinking"] = ["France", "Paris"]
    with pytest.raises(RowError, match=r"messages\[2\]\.thinking must be a string"):
        formatter.format({"messages": rows})


def test_reasoning_rows_train_with_a_shipped_template(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    """A real run: qwen3 (an Axolotl template file) with each answer's reasoning in a "thinking" key;
    the reasoning and the answers train, the prompts do not, eval loss falls, qwen3 is saved."""
    import json
    import re

    import yaml
    from transformers import AutoTokenizer

    from tests.conftest import REPO, run_api

    def with_thinking(source: Path, target: Path) -> Path:
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        for row in rows:
            for ask, answer in zip(row["messages"][1::2], row["messages"][2::2], strict=True):
                answer["thinking"] = "-".join(ask["content"])  # the letters in order, reversed below
        target.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return target

    config: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart-chat.yml").read_text())
    config.update(
        base_model=str(tiny_model), output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"), max_steps=40, max_train_samples=640,
        max_eval_samples=32, learning_rate=3.0e-3, warmup_steps=5, eval_strategy="steps", eval_steps=40,
    )  # fmt: skip
    for key, name in (("datasets", "chat_train.jsonl"), ("test_datasets", "chat_eval.jsonl")):
        entry = config[key][0]
        entry.update(chat_template="qwen3", field_thinking="thinking")
        entry["path"] = str(with_thinking(toy_data / name, tmp_path / name))
    built = run_api(tmp_path, config)

    row = built.train_dataset[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    text = built.tokenizer.decode(trained)
    # the first answer alone (qwen3 drops earlier turns' reasoning), then the last one's reasoning,
    # qwen3's text up to the answer, the answer and <|im_end|>
    match = re.fullmatch(r"([a-z]+)<\|im_end\|>([a-z-]+)\n</think>\n\n([a-z]+)<\|im_end\|>", text)
    assert match is not None, text
    assert "".join(reversed(match[2].split("-"))) == match[3]
    whole = built.tokenizer.decode(row["input_ids"])
    assert (
        "Reverse each word." in whole and f"<|im_start|>user\n{match[2].replace('-', '')}<|im_end|>" in whole
    )

    evals = [h["eval_loss"] for h in built.trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and evals[-1] < 0.6 * evals[0], evals
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert saved.chat_template == BUILTIN_TEMPLATES["qwen3"].source
