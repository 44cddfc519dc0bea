"""The `chat_template` and `sharegpt` formatters: exact token-level loss masks for every built-in
template, the tokenizer's own template and a Jinja string; options; bad rows; validate-time checks.

Rows go through the real path: `prepare(tokenizer)`, `format(row)`, then the core's SegmentEncoder.
The tokenizer is the repo's byte-level tiny one (one token per byte), with the templates' markers
added as special tokens, or not (then a marker is several byte tokens and masking must still be exact).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

from plugins.formatters.chat_template import ChatTemplate, ShareGPT, jinja_syntax_error
from plugins.formatters.chat_templates import BUILTIN_TEMPLATES, CHATML
from trainer.api import RowError
from trainer.config.errors import ConfigErrors
from trainer.data.encode import IGNORE, Encoded, SegmentEncoder
from trainer.resolve.validate import load_config

MARKERS = [
    "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<start_of_turn>", "<end_of_turn>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|eot|>",
]  # fmt: skip

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Germany?"},
    {"role": "assistant", "content": "Berlin."},
]

# Zephyr's template: the tokenizer's eos_token ends every turn (so auto-detection finds "</s>").
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
# A custom template given as a string: BOS, `<|role|>content<|eot|>` with no separators.
CUSTOM = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
# TRL-style ChatML with {% generation %} around the answer and its <|im_end|>.
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
)

EXPECTED = {  # the trained text of CONVERSATION, turn by turn, written out per template
    "chatml": ["Paris.<|im_end|>", "Berlin.<|im_end|>"],
    "qwen": ["Paris.<|im_end|>", "Berlin.<|im_end|>"],
    "llama3": ["Paris.<|eot_id|>", "Berlin.<|eot_id|>"],
    "mistral": ["Paris.</s>", "Berlin.</s>"],
    "gemma": ["Paris.<end_of_turn>", "Berlin.<end_of_turn>"],
    "phi3": ["Paris.<|end|>", "Berlin.<|end|>"],
    "tokenizer_default": ["Paris.</s>", "Berlin.</s>"],
    "jinja": ["Paris.<|eot|>", "Berlin.<|eot|>"],
}


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def tokenizer_for(base: Any, special: bool = True, template: str | None = None) -> Any:
    tokenizer = copy.deepcopy(base)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def sentencepiece_like(special: bool = True) -> Any:
    """A SentencePiece-style tokenizer (Metaspace, a prefix space before every call's text, as in
    Llama 2 / Mistral): one token per character, plus "▁Paris"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(33, 127)] + ["\n", "▁"]
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁Paris", -0.5)] + [(c, -1.0) for c in chars]
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    return tokenizer


def options_for(kind: str, **extra: Any) -> dict[str, Any]:
    """Formatter options selecting template `kind` (a built-in, tokenizer_default or jinja)."""
    if kind == "jinja":
        return {"chat_template": "jinja", "chat_template_jinja": CUSTOM, **extra}
    return {"chat_template": kind, **extra}


def run(formatter: ChatTemplate, tokenizer: Any, row: dict[str, Any]) -> Encoded:
    return SegmentEncoder(tokenizer, 4096).encode(formatter, formatter.format(row))


def make(tokenizer: Any, cls: type[ChatTemplate] = ChatTemplate, **options: Any) -> ChatTemplate:
    formatter = cls(cls.Options(**options))
    formatter.prepare(tokenizer)
    return formatter


def trained_turns(tokenizer: Any, encoded: Encoded) -> list[str]:
    """Decode the trained tokens, one string per run of consecutive trained tokens."""
    groups: list[list[int]] = []
    previous = IGNORE
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE:
            assert label == token
            if previous == IGNORE:
                groups.append([])
            groups[-1].append(token)
        previous = label
    return [tokenizer.decode(group) for group in groups]


def full_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """What the tokenizer itself gives for the whole conversation."""
    return list(
        tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids
    )


# ---- every template: multi-turn masks, exact ids ---------------------------------------------------


@pytest.mark.parametrize("special", [True, False], ids=["markers-special", "markers-as-bytes"])
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_multi_turn_trains_exactly_the_answers(base_tokenizer: Any, kind: str, special: bool) -> None:
    tokenizer = tokenizer_for(base_tokenizer, special, ZEPHYR if kind == "tokenizer_default" else None)
    extra = {"eot_tokens": ["<|eot|>"]} if kind == "jinja" and not special else {}
    formatter = make(tokenizer, **options_for(kind, **extra))
    encoded = run(formatter, tokenizer, {"messages": CONVERSATION})
    assert trained_turns(tokenizer, encoded) == EXPECTED[kind]
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)
    assert formatter.add_bos is False and formatter.add_eos is False
    if special:  # markers are single tokens: nothing of the system or user turns is trained
        trained_ids = {
            t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE
        }
        assert not trained_ids & set(tokenizer("You are terse. Capital And of Germany?").input_ids) - set(
            tokenizer("Paris. Berlin.").input_ids
        )


def test_builtin_renders_are_the_published_formats(base_tokenizer: Any) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    two = CONVERSATION[1:3]
    renders = {
        name: tokenizer.apply_chat_template(two, chat_template=t.source, tokenize=False)
        for name, t in BUILTIN_TEMPLATES.items()
        if name in ("chatml", "qwen", "llama3", "mistral", "gemma", "phi3")  # (Axolotl's: their own test)
    }
    assert renders == {
        "chatml": "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
        "qwen": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n",
        "llama3": "<s><|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>",
        "mistral": "<s> [INST] Capital of France? [/INST] Paris.</s>",
        "gemma": "<s><start_of_turn>user\nCapital of France?<end_of_turn>\n"
        "<start_of_turn>model\nParis.<end_of_turn>\n",
        "phi3": "<|user|>\nCapital of France?<|end|>\n<|assistant|>\nParis.<|end|>\n</s>",
    }
    # system folding: gemma and mistral put the system message into the first user turn
    folded = {
        name: tokenizer.apply_chat_template(
            CONVERSATION[:3], chat_template=BUILTIN_TEMPLATES[name].source, tokenize=False
        )
        for name in ("gemma", "mistral")
    }
    assert folded["gemma"].startswith(
        "<s><start_of_turn>user\nYou are terse.\n\nCapital of France?<end_of_turn>"
    )
    assert folded["mistral"].startswith("<s> [INST] You are terse.\n\nCapital of France? [/INST] Paris.</s>")


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_one_render_at_a_time_gives_the_same_result(base_tokenizer: Any, kind: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The single-render fast path and the per-message sentinel renders agree everywhere."""
    tokenizer = tokenizer_for(base_tokenizer, template=ZEPHYR if kind == "tokenizer_default" else None)
    formatter = make(tokenizer, **options_for(kind, train_on_eos="all", roles_to_train=["user", "assistant"]))
    rows = [
        {"messages": CONVERSATION},
        {"messages": [*CONVERSATION[1:4], {"role": "assistant", "content": "  "}]},
    ]
    fast = [run(formatter, tokenizer, row) for row in rows]
    monkeypatch.setattr(ChatTemplate, "_locate_all", lambda *args: None)
    slow = [run(formatter, tokenizer, row) for row in rows]
    assert fast == slow


def test_template_that_depends_on_the_content(base_tokenizer: Any) -> None:
    """A template that writes something after the content depending on it: the one-shot sentinel
    render does not match, the per-message renders locate the content; no marker follows it, so
    only the content trains on that turn."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m['content'].endswith('?') %} (a question){% endif %}<|im_end|>\n{% endfor %}"
    )
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template="jinja", chat_template_jinja=template)
    assert formatter.eot_tokens == ["<|im_end|>"]
    messages = [
        *CONVERSATION[1:3],
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes?"},
    ]
    encoded = run(formatter, tokenizer, {"messages": messages})
    assert trained_turns(tokenizer, encoded) == ["Paris.<|im_end|>", "Yes?"]
    assert encoded.input_ids == full_ids(tokenizer, messages)


@pytest.mark.parametrize("template", ["mistral", "chatml", "gemma"])
def test_sentencepiece_style_tokenizer_gets_the_whole_texts_tokens(template: str) -> None:
    """A tokenizer that puts a prefix space before every call's text would tokenize each segment
    differently from the whole render (an extra "▁" at every cut); the core's encoder notices that
    and tokenizes the whole render, splitting it by the loss mask."""
    tokenizer = sentencepiece_like()
    formatter = make(tokenizer, chat_template=template)
    segments = formatter.format({"messages": CONVERSATION})
    assert all(segment.ids is None for segment in segments)
    assert "".join(segment.text for segment in segments) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    encoded = SegmentEncoder(tokenizer, 4096).encode(formatter, segments)
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)
    assert [turn.strip() for turn in trained_turns(tokenizer, encoded)] == EXPECTED[template]
    if template == "mistral":  # "[/INST] Paris." -> "▁Paris" is one token, trained (like TRL's masks)
        pairs = zip(encoded.input_ids, encoded.labels, strict=True)
        trained = [tokenizer.convert_ids_to_tokens(t) for t, label in pairs if label != IGNORE]
        assert trained[:3] == ["▁Paris", ".", "</s>"]
    # cut into text segments, the same render would not give the render's tokens
    pieces = [tokenizer(s.text, add_special_tokens=False).input_ids for s in segments]
    assert [t for piece in pieces for t in piece] != encoded.input_ids


def test_byte_level_tokenizer_gets_text_segments(base_tokenizer: Any) -> None:
    """Where pieces tokenize like the whole (byte-level BPE), segments are text: the core tokenizes
    a batch of rows in one call."""
    formatter = make(tokenizer_for(base_tokenizer), chat_template="chatml")
    segments = formatter.format({"messages": CONVERSATION})
    assert all(segment.ids is None for segment in segments)
    assert [(segment.text, segment.train) for segment in segments] == [
        (
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
            "<|im_start|>assistant\n",
            False,
        ),
        ("Paris.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd of Germany?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Berlin.<|im_end|>", True),
        ("\n", False),
    ]


# ---- options ----------------------------------------------------------------------------------------


def test_roles_to_train_user_and_assistant(base_tokenizer: Any) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template="chatml", roles_to_train=["user", "assistant"])
    assert trained_turns(tokenizer, run(formatter, tokenizer, {"messages": CONVERSATION})) == [
        "Capital of France?<|im_end|>",
        "Paris.<|im_end|>",
        "And of Germany?<|im_end|>",
        "Berlin.<|im_end|>",
    ]


@pytest.mark.parametrize(
    ("template", "train_on_eos", "expected"),
    [
        ("chatml", "none", ["Paris.", "Berlin."]),
        ("chatml", "last", ["Paris.", "Berlin.<|im_end|>"]),
        ("chatml", "turn", ["Paris.<|im_end|>", "Berlin.<|im_end|>"]),
        (
            "chatml",
            "all",
            ["<|im_end|>", "<|im_end|>", "Paris.<|im_end|>", "<|im_end|>", "Berlin.<|im_end|>"],
        ),
        # gemma folds the system message into the first user turn: no end of turn after it
        ("gemma", "all", ["<end_of_turn>", "Paris.<end_of_turn>", "<end_of_turn>", "Berlin.<end_of_turn>"]),
        ("mistral", "none", ["Paris.", "Berlin."]),
        ("mistral", "last", ["Paris.", "Berlin.</s>"]),
        ("phi3", "all", ["<|end|>", "<|end|>", "Paris.<|end|>", "<|end|>", "Berlin.<|end|>"]),
    ],
)
def test_train_on_eos(base_tokenizer: Any, template: str, train_on_eos: str, expected: list[str]) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template=template, train_on_eos=train_on_eos)
    encoded = run(formatter, tokenizer, {"messages": CONVERSATION})
    assert trained_turns(tokenizer, encoded) == expected
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)


def test_message_field_training_overrides_roles(base_tokenizer: Any) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template="chatml", message_field_training="train")
    messages: list[dict[str, Any]] = [dict(m) for m in CONVERSATION]
    messages[2]["train"] = False  # assistant, not trained
    messages[3]["train"] = True  # user, trained
    messages[4]["train"] = None  # unset: roles_to_train decides
    assert trained_turns(tokenizer, run(formatter, tokenizer, {"messages": messages})) == [
        "And of Germany?<|im_end|>",
        "Berlin.<|im_end|>",
    ]
    messages[2]["train"] = "no"
    with pytest.raises(RowError) as caught:
        formatter.format({"messages": messages})
    assert caught.value.field == "messages[2].train"


@pytest.mark.parametrize("template", ["chatml", "qwen", "gemma"])
def test_system_prompt_inserted_when_there_is_none(base_tokenizer: Any, template: str) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template=template, system_prompt="Be kind.")
    without = CONVERSATION[1:]
    encoded = run(formatter, tokenizer, {"messages": without})
    assert encoded.input_ids == full_ids(tokenizer, [{"role": "system", "content": "Be kind."}, *without])
    assert "Be kind." in tokenizer.decode(encoded.input_ids)
    assert trained_turns(tokenizer, encoded) == EXPECTED[template]
    # a conversation with its own system message keeps it
    encoded = run(formatter, tokenizer, {"messages": CONVERSATION})
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)
    assert "Be kind." not in tokenizer.decode(encoded.input_ids)


@pytest.mark.parametrize(("template", "eot"), [("gemma", "<end_of_turn>"), ("llama3", "<|eot_id|>")])
def test_templates_that_trim_the_content(base_tokenizer: Any, template: str, eot: str) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template=template)
    messages = [
        {"role": "user", "content": " Capital of France? "},
        {"role": "assistant", "content": "\n  Paris.  \n"},
        {"role": "user", "content": "And of Germany?"},
        {"role": "assistant", "content": "  Berlin."},
    ]
    encoded = run(formatter, tokenizer, {"messages": messages})
    assert trained_turns(tokenizer, encoded) == [f"Paris.{eot}", f"Berlin.{eot}"]
    assert encoded.input_ids == full_ids(tokenizer, messages)
    none = make(tokenizer, chat_template=template, train_on_eos="none")
    assert trained_turns(tokenizer, run(none, tokenizer, {"messages": messages})) == ["Paris.", "Berlin."]


@pytest.mark.parametrize("special", [True, False])
def test_phi3_final_eos_is_in_the_ids_and_not_trained(base_tokenizer: Any, special: bool) -> None:
    """phi3 ends a render without a generation prompt with eos_token: the render of a conversation
    is not a prefix of the render of a longer one; masks stay exact and that EOS is not trained."""
    tokenizer = tokenizer_for(base_tokenizer, special)
    formatter = make(tokenizer, chat_template="phi3")
    encoded = run(formatter, tokenizer, {"messages": CONVERSATION})
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)
    assert encoded.input_ids[-1] == tokenizer.eos_token_id and encoded.labels[-1] == IGNORE
    assert tokenizer.decode(encoded.input_ids).endswith("Berlin.<|end|>\n</s>")
    assert trained_turns(tokenizer, encoded) == ["Paris.<|end|>", "Berlin.<|end|>"]
    # the turn that is last here is followed by the final EOS only in this render
    short = run(formatter, tokenizer, {"messages": CONVERSATION[:3]})
    assert trained_turns(tokenizer, short) == ["Paris.<|end|>"]
    assert short.input_ids[-1] == tokenizer.eos_token_id and short.labels[-1] == IGNORE


def test_roles_mapping_and_property_mappings(base_tokenizer: Any) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(
        tokenizer,
        chat_template="chatml",
        field_messages="dialog",
        message_property_mappings={"role": "speaker", "content": "text"},
        roles={"user": ["human"], "assistant": ["bot"]},
    )
    names = {"system": "system", "user": "human", "assistant": "bot"}
    row = {"dialog": [{"speaker": names[m["role"]], "text": m["content"]} for m in CONVERSATION]}
    encoded = run(formatter, tokenizer, row)
    assert encoded.input_ids == full_ids(tokenizer, CONVERSATION)
    assert trained_turns(tokenizer, encoded) == EXPECTED["chatml"]


@pytest.mark.parametrize("template", ["chatml", "mistral", "gemma"])
def test_sharegpt_rows_equal_messages_rows(base_tokenizer: Any, template: str) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt_row = {
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in CONVERSATION]
    }
    sharegpt = run(make(tokenizer, ShareGPT, chat_template=template), tokenizer, sharegpt_row)
    messages = run(make(tokenizer, chat_template=template), tokenizer, {"messages": CONVERSATION})
    assert sharegpt == messages
    assert trained_turns(tokenizer, sharegpt) == EXPECTED[template]
    assert ShareGPT.name == "sharegpt" and ChatTemplate.name == "chat_template"


# ---- cross-check with transformers' {% generation %} masks ----------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        CONVERSATION,
        CONVERSATION[1:3],
        [*CONVERSATION[1:4], {"role": "assistant", "content": " multi\nline  answer \n"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
        [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Ok."}],
        [{"role": "user", "content": "Only a question."}],
    ],
    ids=["multi-turn", "one-turn", "whitespace", "empty-answer", "assistant-first", "no-answer"],
)
@pytest.mark.parametrize("which", ["bytes-special", "bytes", "sentencepiece"])
def test_masks_equal_transformers_assistant_masks(base_tokenizer: Any, messages: Any, which: str) -> None:
    """With a template that marks the answer (+ <|im_end|>) with {% generation %}, transformers'
    return_assistant_tokens_mask is the ground truth for train_on_eos: turn."""
    if which == "sentencepiece":
        tokenizer = sentencepiece_like()
    else:
        tokenizer = tokenizer_for(base_tokenizer, special=which == "bytes-special")
    formatter = make(
        tokenizer, chat_template="jinja", chat_template_jinja=CHATML_GENERATION, eot_tokens=["<|im_end|>"]
    )
    encoded = run(formatter, tokenizer, {"messages": messages})
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert encoded.input_ids == list(reference["input_ids"])
    assert [int(label != IGNORE) for label in encoded.labels] == list(reference["assistant_masks"])


# ---- bad rows and bad templates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"text": "no messages"}, "messages"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["Hello"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}, "messages[1].content"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]},
            "messages[1].content",
        ),
        ({"messages": [{"content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": 1, "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ["Hi"]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ],
)
def test_bad_rows_name_the_field(base_tokenizer: Any, row: dict[str, Any], field: str) -> None:
    formatter = make(tokenizer_for(base_tokenizer), chat_template="chatml")
    with pytest.raises(RowError) as caught:
        formatter.format(row)
    assert caught.value.field == field
    assert field.split(".")[-1].split("[")[0] in str(caught.value)


def test_sharegpt_bad_row_names_its_own_keys(base_tokenizer: Any) -> None:
    formatter = make(tokenizer_for(base_tokenizer), ShareGPT, chat_template="chatml")
    with pytest.raises(RowError) as caught:
        formatter.format({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "text": "Yo"}]})
    assert caught.value.field == "conversations[1].value"


def test_template_exception_is_a_row_error(base_tokenizer: Any) -> None:
    formatter = make(tokenizer_for(base_tokenizer), chat_template="mistral")
    two_users = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}]
    with pytest.raises(RowError, match="roles must alternate") as caught:
        formatter.format({"messages": two_users})
    assert caught.value.field == "messages"


def test_template_that_changes_the_content_is_a_row_error(base_tokenizer: Any) -> None:
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}<|eot|>{% endfor %}"
    with pytest.raises(ValueError, match="eot_tokens"):  # the probe answer is not found either
        make(tokenizer_for(base_tokenizer), chat_template="jinja", chat_template_jinja=template)
    formatter = make(
        tokenizer_for(base_tokenizer),
        chat_template="jinja",
        chat_template_jinja=template,
        eot_tokens=["<|eot|>"],
    )
    with pytest.raises(RowError, match="verbatim") as caught:
        formatter.format({"messages": CONVERSATION[1:3]})
    assert caught.value.field == "messages[1].content"
    # an untrained message may be changed: only the trained ones must be located
    ok = make(
        tokenizer_for(base_tokenizer),
        chat_template="jinja",
        chat_template_jinja=template.replace(
            "m['content'] | upper", "(m['content'] | upper if m['role'] == 'user' else m['content'])"
        ),
    )
    assert ok.format({"messages": CONVERSATION[1:3]})


def test_prepare_errors(base_tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="no chat template"):
        make(tokenizer_for(base_tokenizer))  # tokenizer_default, and the tiny tokenizer has none
    # markers that are not special tokens cannot be auto-detected as the end of turn
    with pytest.raises(ValueError, match="eot_tokens"):
        make(tokenizer_for(base_tokenizer, special=False), chat_template="jinja", chat_template_jinja=CUSTOM)
    formatter = make(
        tokenizer_for(base_tokenizer, special=False),
        chat_template="jinja",
        chat_template_jinja=CUSTOM,
        train_on_eos="none",
    )
    assert formatter.eot_tokens == []


def test_eot_tokens_detected_and_defaulted(base_tokenizer: Any) -> None:
    tokenizer = tokenizer_for(base_tokenizer)
    assert make(tokenizer, chat_template="jinja", chat_template_jinja=CUSTOM).eot_tokens == ["<|eot|>"]
    assert make(tokenizer_for(base_tokenizer, template=CHATML)).eot_tokens == ["<|im_end|>"]
    assert make(tokenizer_for(base_tokenizer, template=ZEPHYR)).eot_tokens == ["</s>"]
    assert make(tokenizer, chat_template="mistral").eot_tokens == ["</s>"]  # the tokenizer's eos_token
    assert make(tokenizer, chat_template="gemma").eot_tokens == ["<end_of_turn>"]
    assert make(tokenizer, chat_template="chatml", eot_tokens=["<|x|>"]).eot_tokens == ["<|x|>"]


# ---- the template travels with the tokenizer; pickling -------------------------------------------


@pytest.mark.parametrize("kind", ["gemma", "jinja"])
def test_template_is_saved_with_the_tokenizer(base_tokenizer: Any, kind: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = tokenizer_for(base_tokenizer)
    assert not tokenizer.chat_template
    make(tokenizer, **options_for(kind))
    expected = BUILTIN_TEMPLATES["gemma"].source if kind == "gemma" else CUSTOM
    assert tokenizer.chat_template == expected
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == expected
    assert reloaded.apply_chat_template(CONVERSATION[1:], tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION[1:], tokenize=False
    )


def test_prepared_formatter_pickles(base_tokenizer: Any) -> None:
    """Worker processes (dataset_num_proc) get a pickled copy of the prepared formatter."""
    tokenizer = tokenizer_for(base_tokenizer)
    formatter = make(tokenizer, chat_template="llama3")
    copied = pickle.loads(pickle.dumps(formatter))
    assert copied.format({"messages": CONVERSATION}) == formatter.format({"messages": CONVERSATION})


# ---- validate time ----------------------------------------------------------------------------------


@pytest.fixture
def config_with(write_config, tiny_model: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n', encoding="utf-8")

    def write(options: str, type_: str = "chat_template") -> str:
        lines = "".join(f"    {line}\n" for line in options.strip().splitlines())
        text = (
            f"base_model: {tiny_model}\ndatasets:\n  - path: {data}\n    type: {type_}\n{lines}"
            f"output_dir: {tmp_path / 'out'}\n"
        )
        return str(write_config(text))

    return write


def problems_of(path: str) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    return [f"{p.where.rsplit(':', 1)[-1]} {p.render().split('  ', 1)[-1]}" for p in caught.value.problems]


def test_validate_unknown_template_name(config_with) -> None:  # type: ignore[no-untyped-def]
    [problem] = problems_of(config_with("chat_template: chatlm"))
    assert problem.startswith(
        "5 datasets[0].chat_template: unknown chat template 'chatlm' (did you mean 'chatml'?)"
    )
    assert "known: tokenizer_default, jinja, chatml, llama3, mistral, gemma, phi3, qwen" in problem


def test_validate_jinja_required_and_only_with_jinja(config_with) -> None:  # type: ignore[no-untyped-def]
    assert problems_of(config_with("chat_template: jinja")) == [
        "3 datasets[0].chat_template_jinja: required when chat_template is 'jinja'"
    ]
    [problem] = problems_of(config_with("chat_template: chatml\nchat_template_jinja: '{{ x }}'"))
    assert problem.startswith("6 datasets[0].chat_template_jinja: only used with chat_template: jinja")


def test_validate_jinja_syntax_error_names_the_line(config_with) -> None:  # type: ignore[no-untyped-def]
    template = "{% for m in messages %}\\n{{ m['content'] }\\n{% endfor %}"
    broken = f'chat_template: jinja\nchat_template_jinja: "{template}"'
    [problem] = problems_of(config_with(broken))
    assert problem.startswith(
        "6 datasets[0].chat_template_jinja: Jinja syntax error on line 2 of the template"
    )
    assert "{{ m['content'] }" in problem
    assert jinja_syntax_error(CHATML_GENERATION) is None  # {% generation %} is valid
    assert jinja_syntax_error(BUILTIN_TEMPLATES["qwen"].source) is None


def test_validate_tokenizer_without_template(config_with) -> None:  # type: ignore[no-untyped-def]
    [problem] = problems_of(config_with("roles_to_train: [assistant]", type_="sharegpt"))
    assert problem.startswith("3 datasets[0].chat_template: the tokenizer in ")
    assert "has no chat template" in problem


def test_validate_accepts_good_configs(config_with) -> None:  # type: ignore[no-untyped-def]
    resolved = load_config(config_with("chat_template: gemma\ntrain_on_eos: last"))
    formatter = resolved.formatters[0].plugin
    assert isinstance(formatter, ChatTemplate) and formatter.options.train_on_eos == "last"  # type: ignore[attr-defined]
    resolved = load_config(
        config_with(f"chat_template: jinja\nchat_template_jinja: {CUSTOM!r}", type_="sharegpt")
    )
    assert resolved.formatters[0].plugin.options.field_messages == "conversations"  # type: ignore[attr-defined]
