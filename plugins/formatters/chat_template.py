"""`chat_template` and `sharegpt`: conversations rendered with a chat template, loss on chosen turns.

    datasets:
      - path: data/chats.jsonl            # {"messages": [{"role": "user", "content": "..."}, ...]}
        type: chat_template
        chat_template: chatml             # tokenizer_default (the default), a built-in, or jinja
        roles_to_train: [assistant]
        train_on_eos: turn                # turn | all | last | none
      - path: data/sharegpt.jsonl         # {"conversations": [{"from": "human", "value": "..."}, ...]}
        type: sharegpt                    # the same, with ShareGPT's keys and role names as defaults
        chat_template: jinja
        chat_template_jinja: "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        eot_tokens: ["<|end|>"]           # default: found in a probe render (tokenizer_default, jinja)
      - path: data/reasoning.jsonl        # assistant messages with {"thinking": "..."} beside content
        type: chat_template
        chat_template: qwen3
        field_thinking: thinking          # passed to the template as reasoning_content

Built-in templates: chatml, llama3, mistral, gemma, phi3, qwen, and every template Axolotl ships,
under Axolotl's name (gemma3, gemma4, llama4, qwen3, qwen3_5, qwen_25, mistral_v7_tekken, phi_4,
deepseek_v3, command_a, ...; see chat_templates.py). The template used (built-in or jinja) is set on
the tokenizer, so it is saved with the trained model.

Reasoning: a message's `field_thinking` value (default: its `template_thinking_key`, i.e.
`reasoning_content`) reaches the template as `template_thinking_key`. It is part of the turn, as in
Axolotl: a trained message trains from where its reasoning's rendering starts (e.g. after `<think>`
when the template writes that tag anyway) to the end of its content, the text between included;
templates that drop the reasoning of earlier turns (qwen3) train only those turns' contents.

A row is rendered once with the template (exactly what `tokenizer.apply_chat_template` gives),
then the content of each trained message is located in that text: the conversation is rendered
again with the contents replaced by sentinels, and the text between the sentinels must be the
template's own (else, for a template that depends on the contents, one message at a time: the
content starts where the render with only its content replaced parts from the real one). The
content of trained messages and, per `train_on_eos`, the end-of-turn marker after it (e.g.
`<|im_end|>`) get a loss; everything else (system and user turns, headers, BOS, separators) is
masked. This is exact for templates without `{% generation %}` markers, templates that trim the
content, and templates whose render of a conversation is not a prefix of a longer one's. A content
the template changes (other than trimming it) is a row error when its message is trained.

Segments are text; the core tokenizes them (the whole render at once for a tokenizer that
tokenizes cut text differently from the whole, such as SentencePiece-style prefix spaces).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal, TypeVar

from pydantic import Field

from plugins.formatters.chat_templates import BUILTIN_TEMPLATES, DETECT
from trainer.api import Formatter, Options, RowError, Segment, did_you_mean

TOKENIZER_DEFAULT = "tokenizer_default"
JINJA = "jinja"
_SENTINEL = re.compile("\ue000([0-9]+)\ue001")


class ChatTemplateOptions(Options):
    field_messages: str = Field("messages", description="Row field holding the list of messages")
    message_property_mappings: dict[str, str] = Field(
        {"role": "role", "content": "content"},
        description="Message key -> the key used in the data (role and content; other keys are passed "
        "to the template as they are named here)",
    )
    roles: dict[str, list[str]] | None = Field(
        None,
        description="Role -> the names the data uses for it, e.g. {user: [human], assistant: [gpt]}; "
        "names not listed are used as they are",
    )
    roles_to_train: list[str] = Field(["assistant"], description="Roles whose messages get a loss")
    train_on_eos: Literal["turn", "all", "last", "none"] = Field(
        "turn",
        description="End-of-turn markers with a loss: after each trained turn (turn), after every turn "
        "(all), only after the last trained turn (last), or none",
    )
    message_field_training: str | None = Field(
        None, description="Message key holding a bool that overrides roles_to_train for that message"
    )
    chat_template: str = Field(
        TOKENIZER_DEFAULT,
        description="tokenizer_default (the tokenizer's own), a built-in (chatml, llama3, mistral, gemma, "
        "phi3, qwen, or any of Axolotl's template names: gemma3, llama4, qwen3, ...), or jinja (with "
        "chat_template_jinja)",
    )
    chat_template_jinja: str | None = Field(
        None, description="The Jinja template source, when chat_template is jinja"
    )
    eot_tokens: list[str] | None = Field(
        None,
        description="End-of-turn markers (default: the built-in template's, or the special token found "
        "after an answer in a probe render)",
    )
    system_prompt: str | None = Field(
        None, description="Inserted as the first message (role system) of conversations that have none"
    )
    field_thinking: str | None = Field(
        None,
        description="Message key holding the reasoning text (default: template_thinking_key); it is "
        "passed to the template as template_thinking_key and trained with its message",
    )
    template_thinking_key: str = Field(
        "reasoning_content",
        description="The message key the chat template reads the reasoning from (reasoning_content for "
        "Qwen3 and DeepSeek, thinking for gpt-oss)",
    )


ChatTemplateOptionsT = TypeVar("ChatTemplateOptionsT", bound=ChatTemplateOptions)


class ChatTemplate(Formatter[ChatTemplateOptionsT]):
    name = "chat_template"
    Options = ChatTemplateOptions

    add_bos = False  # the rendered text holds whatever BOS/EOS the template writes
    add_eos = False

    def __init__(self, options: ChatTemplateOptionsT | None = None):
        super().__init__(options)
        opts = self.options
        default_mapping = type(opts).model_fields["message_property_mappings"].default
        self._mapping = {**default_mapping, **opts.message_property_mappings}
        self._role_names = {name: role for role, names in (opts.roles or {}).items() for name in names}
        self._train_roles = frozenset(opts.roles_to_train)
        self._tokenizer: Any = None
        self._template = ""
        self._template_vars: dict[str, Any] = {}
        self._eot: re.Pattern[str] | None = None
        self.eot_tokens: list[str] = []

    # ---- validate time --------------------------------------------------------------------------

    def check(self, config: Any) -> list[str | tuple[str, str]]:
        opts = self.options
        problems: list[str | tuple[str, str]] = []
        problems += template_problems(opts.chat_template, opts.chat_template_jinja, config)
        if opts.eot_tokens is not None and any(not token for token in opts.eot_tokens):
            problems.append(("eot_tokens", "an end-of-turn marker cannot be empty"))
        seen: dict[str, str] = {}
        for role, names in (opts.roles or {}).items():
            for name in names:
                if seen.setdefault(name, role) != role:
                    problems.append(("roles", f"'{name}' is listed under both '{seen[name]}' and '{role}'"))
        return problems

    # ---- prepare --------------------------------------------------------------------------------

    def prepare(self, tokenizer: Any) -> None:
        opts = self.options
        self._tokenizer = tokenizer
        self.add_bos = self.add_eos = False
        builtin = BUILTIN_TEMPLATES.get(opts.chat_template)
        self._template = choose_template(tokenizer, opts.chat_template, opts.chat_template_jinja)
        self._template_vars = dict(tokenizer.special_tokens_map)
        if opts.eot_tokens is not None:
            eot = list(opts.eot_tokens)
        elif builtin is not None and builtin.eot != DETECT:
            marker = builtin.eot if builtin.eot is not None else tokenizer.eos_token
            eot = [marker] if marker else []
        else:
            eot = self._detect_eot()
        markerless = builtin is not None and builtin.eot == "" and opts.eot_tokens is None
        if not eot and opts.train_on_eos != "none" and not markerless:
            raise ValueError(
                "could not find the end-of-turn marker of the chat template (in a probe render, no special "
                "token follows the answer, or the answer is not rendered verbatim); set eot_tokens, or "
                "train_on_eos: none"
            )
        self.eot_tokens = eot
        longest_first = sorted(set(eot), key=len, reverse=True)
        self._eot = re.compile(r"\s*(?:" + "|".join(map(re.escape, longest_first)) + ")") if eot else None

    def _detect_eot(self) -> list[str]:
        """The special token right after the answer (whitespace allowed) in a probe render."""
        probe = [
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Four."},
        ]
        try:
            full = self._render(probe)
        except Exception as err:
            raise ValueError(f"the chat template fails on a probe conversation: {err}") from None
        span = self._locate_one(full, probe, 1)
        if span is None:
            return []
        tokenizer = self._tokenizer
        specials = {str(token) for token in tokenizer.all_special_tokens}
        specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        specials = {token for token in specials if token and not token.isspace()}
        rest = full[span[1] :]
        rest = rest[len(rest) - len(rest.lstrip()) :]
        found = [token for token in specials if rest.startswith(token)]
        return [max(found, key=len)] if found else []

    # ---- rendering ------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]]) -> str:
        return render(self._template, messages, self._template_vars)

    # ---- format ---------------------------------------------------------------------------------

    def format(self, row: dict[str, Any]) -> list[Segment]:
        opts = self.options
        if self._tokenizer is None:
            raise RuntimeError("prepare(tokenizer) must be called before format()")
        messages, trained, fields = self._messages(row)
        located = list(range(len(messages))) if opts.train_on_eos == "all" else trained
        try:
            full = self._render(messages)
        except Exception as err:
            raise RowError(
                f"the chat template fails on this conversation: {err}", field=opts.field_messages
            ) from None
        spans = self._locate(full, messages, located) if located else {}
        for i in trained:
            if i not in spans:
                raise RowError(
                    f"the chat template does not render message {fields[i] or i} verbatim (it changes "
                    "or drops its content), so its tokens cannot be located for the loss",
                    field=fields[i] or opts.field_messages,
                )

        train_spans = [(self._turn_start(full, messages, i, spans[i][0]), spans[i][1]) for i in trained]
        eos_from: list[int]
        if opts.train_on_eos == "turn":
            eos_from = trained
        elif opts.train_on_eos == "all":
            eos_from = list(spans)
        elif opts.train_on_eos == "last" and trained:
            eos_from = [max(trained, key=lambda i: spans[i][0])]
        else:
            eos_from = []
        if self._eot is not None:
            for i in eos_from:
                end = spans[i][1]
                match = self._eot.match(full, end)
                if match:
                    train_spans.append((end, match.end()))
        return _segments(full, _merge(train_spans))

    def _messages(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int], list[str | None]]:
        """Canonical messages, the indices of the trained ones, and each one's field name in the row
        (None for an inserted system prompt)."""
        opts = self.options
        name = opts.field_messages
        raw = row.get(name)
        if raw is None:
            raise RowError(f"missing field '{name}'", field=name)
        if not isinstance(raw, (list, tuple)):
            raise RowError(f"field '{name}' must be a list of messages, got {type(raw).__name__}", field=name)
        if not raw:
            raise RowError(f"field '{name}' has no messages", field=name)
        role_key, content_key = self._mapping["role"], self._mapping["content"]
        extra = [(key, data_key) for key, data_key in self._mapping.items() if key not in ("role", "content")]
        flag_key = opts.message_field_training
        messages: list[dict[str, Any]] = []
        trained: list[int] = []
        fields: list[str | None] = []
        for n, item in enumerate(raw):
            where = f"{name}[{n}]"
            if not isinstance(item, dict):
                raise RowError(f"{where} must be an object, got {type(item).__name__}", field=where)
            role = item.get(role_key)
            if role is None:
                raise RowError(f"{where} has no '{role_key}'", field=f"{where}.{role_key}")
            if not isinstance(role, str):
                raise RowError(
                    f"{where}.{role_key} must be a string, got {type(role).__name__}",
                    field=f"{where}.{role_key}",
                )
            content = item.get(content_key)
            if content is None:
                raise RowError(f"{where} has no '{content_key}'", field=f"{where}.{content_key}")
            if not isinstance(content, str):
                raise RowError(
                    f"{where}.{content_key} must be a string, got {type(content).__name__}",
                    field=f"{where}.{content_key}",
                )
            role = self._role_names.get(role, role)
            train = role in self._train_roles
            if flag_key is not None and (flag := item.get(flag_key)) is not None:
                if not isinstance(flag, bool):
                    raise RowError(
                        f"{where}.{flag_key} must be true or false, got {flag!r}", field=f"{where}.{flag_key}"
                    )
                train = flag
            message = {"role": role, "content": content}
            for key, data_key in extra:
                if (value := item.get(data_key)) is not None:
                    message[key] = value
            thinking_key = opts.template_thinking_key
            if thinking_key not in message:
                source_key = opts.field_thinking or thinking_key
                thinking = item.get(source_key)
                if thinking is not None and not isinstance(thinking, str):
                    raise RowError(
                        f"{where}.{source_key} must be a string, got {type(thinking).__name__}",
                        field=f"{where}.{source_key}",
                    )
                if thinking is not None:
                    message[thinking_key] = thinking
            if train:
                trained.append(len(messages))
            messages.append(message)
            fields.append(f"{where}.{content_key}")
        if opts.system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": opts.system_prompt})
            fields.insert(0, None)
            trained = [i + 1 for i in trained]
            if "system" in self._train_roles:
                trained.insert(0, 0)
        return messages, trained, fields

    def _locate(
        self, full: str, messages: list[dict[str, Any]], which: list[int]
    ) -> dict[int, tuple[int, int]]:
        """(start, end) in `full` of the content of each message in `which` that the template renders
        verbatim (or stripped); the others are left out."""
        spans = self._locate_all(full, messages, which)
        if spans is not None:
            return spans
        spans = {}
        for i in which:
            span = self._locate_one(full, messages, i)
            if span is not None:
                spans[i] = span
        return spans

    def _locate_all(
        self, full: str, messages: list[dict[str, Any]], which: list[int]
    ) -> dict[int, tuple[int, int]] | None:
        """One render with every content in `which` replaced by a numbered sentinel; the text between
        the sentinels is the template's. None when `full` is not that text with the contents (or
        their stripped forms) in place of the sentinels: the template depends on the contents."""
        if "\ue000" in full or "\ue001" in full:
            return None
        probe = list(messages)
        for i in which:
            probe[i] = {**messages[i], "content": f"\ue000{i}\ue001"}
        try:
            pieces = _SENTINEL.split(self._render(probe))
        except Exception:
            return None
        texts, order = pieces[0::2], [int(i) for i in pieces[1::2]]
        if sorted(order) != sorted(which) or not full.startswith(texts[0]):
            return None
        spans: dict[int, tuple[int, int]] = {}
        pos = len(texts[0])
        for k, i in enumerate(order):
            after, last = texts[k + 1], k == len(order) - 1
            for content in _variants(messages[i]["content"]):
                end = pos + len(content)
                if full.startswith(content, pos) and (
                    full[end:] == after if last else full.startswith(after, end)
                ):
                    spans[i] = (pos, end)
                    pos = end + len(after)
                    break
            else:
                return None
        return spans

    def _turn_start(self, full: str, messages: list[dict[str, Any]], i: int, content_start: int) -> int:
        """Where message i's trained text starts: its content, or before it the rendering of its
        reasoning (Axolotl's turn: where the render parts from one without the reasoning and with a
        sentinel content)."""
        key = self.options.template_thinking_key
        if messages[i].get(key) is None:
            return content_start
        sentinel = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in full)
        probe = list(messages)
        probe[i] = {k: v for k, v in messages[i].items() if k != key}
        probe[i]["content"] = sentinel + "sentinel"
        try:
            other = self._render(probe)
        except Exception:
            return content_start
        return min(_common_prefix(full, other), content_start)

    def _locate_one(self, full: str, messages: list[dict[str, Any]], i: int) -> tuple[int, int] | None:
        """Render with only message i's content replaced by a sentinel that shares no character with
        `full`: the content starts where the two renders part."""
        sentinel = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in full)
        probe = list(messages)
        probe[i] = {**messages[i], "content": sentinel + "sentinel"}
        try:
            other = self._render(probe)
        except Exception:
            return None
        start = _common_prefix(full, other)
        for content in _variants(messages[i]["content"]):
            if full.startswith(content, start):
                return start, start + len(content)
        return None


class ShareGPTOptions(ChatTemplateOptions):
    field_messages: str = Field("conversations", description="Row field holding the list of messages")
    message_property_mappings: dict[str, str] = Field(
        {"role": "from", "content": "value"},
        description="Message key -> the key used in the data (role and content; other keys are passed "
        "to the template as they are named here)",
    )
    roles: dict[str, list[str]] | None = Field(
        {"system": ["system"], "user": ["human", "user"], "assistant": ["gpt", "assistant"]},
        description="Role -> the names the data uses for it; names not listed are used as they are",
    )


class ShareGPT(ChatTemplate[ShareGPTOptions]):
    """ShareGPT rows ({"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]})
    through the `chat_template` path."""

    name = "sharegpt"


# ---- helpers ------------------------------------------------------------------------------------


def template_problems(
    chat_template: str, chat_template_jinja: str | None, config: Any
) -> list[tuple[str, str]]:
    """Validate-time problems with a `chat_template` / `chat_template_jinja` option pair (shared by
    the formatters that render conversations)."""
    problems: list[tuple[str, str]] = []
    known = [TOKENIZER_DEFAULT, JINJA, *BUILTIN_TEMPLATES]
    if chat_template not in known:
        problems.append(
            (
                "chat_template",
                f"unknown chat template '{chat_template}'{did_you_mean(chat_template, known)}; "
                f"known: {', '.join(known)}",
            )
        )
    if chat_template == JINJA:
        if not chat_template_jinja:
            problems.append(("chat_template_jinja", "required when chat_template is 'jinja'"))
        elif (error := jinja_syntax_error(chat_template_jinja)) is not None:
            problems.append(("chat_template_jinja", error))
    elif chat_template_jinja is not None:
        problems.append(
            (
                "chat_template_jinja",
                f"only used with chat_template: jinja (chat_template is '{chat_template}')",
            )
        )
    if chat_template == TOKENIZER_DEFAULT:
        where = config.tokenizer or config.base_model
        if _local_tokenizer_without_template(where):
            problems.append(
                (
                    "chat_template",
                    f"the tokenizer in {where} has no chat template; choose a built-in "
                    f"({', '.join(BUILTIN_TEMPLATES)}) or jinja with chat_template_jinja",
                )
            )
    return problems


def choose_template(tokenizer: Any, chat_template: str, chat_template_jinja: str | None) -> str:
    """The template source a `chat_template` option names, set on the tokenizer (so it is saved with
    the trained model) unless it is the tokenizer's own. Raises ValueError when there is none or it
    does not compile."""
    builtin = BUILTIN_TEMPLATES.get(chat_template)
    if chat_template == TOKENIZER_DEFAULT:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "chat_template: the tokenizer has no chat template; choose a built-in "
                f"({', '.join(BUILTIN_TEMPLATES)}) or jinja with chat_template_jinja"
            )
        template = str(tokenizer.get_chat_template())
    elif chat_template == JINJA:
        if not chat_template_jinja:
            raise ValueError("chat_template_jinja is required when chat_template is 'jinja'")
        template = chat_template_jinja
    elif builtin is not None:
        template = builtin.source
    else:
        raise ValueError(f"unknown chat template '{chat_template}'")
    problem = jinja_syntax_error(template)  # fails here, not on a row
    if problem is not None:
        raise ValueError(f"the chat template does not compile: {problem}")
    if chat_template != TOKENIZER_DEFAULT:
        tokenizer.chat_template = template  # saved with the tokenizer at the end of training
    return template


def render(
    template: str,
    messages: list[dict[str, Any]],
    template_vars: dict[str, Any],
    generation_prompt: bool = False,
) -> str:
    """Exactly `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`,
    minus its tokenizer overhead: transformers' own renderer, whose compiled template it caches."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered: Any = render_jinja_template(  # (texts, generation indices)
        conversations=[messages],
        chat_template=template,
        add_generation_prompt=generation_prompt,
        **template_vars,
    )
    return str(rendered[0][0])


def _variants(content: str) -> list[str]:
    """The content as a template may render it: verbatim first, then trimmed."""
    out = [content]
    for variant in (content.strip(), content.lstrip(), content.rstrip()):
        if variant not in out:
            out.append(variant)
    return out


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search on slices: C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-empty spans covering the same characters as `spans`."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _segments(full: str, spans: list[tuple[int, int]]) -> list[Segment]:
    """Segments covering `full` exactly: the (merged) `spans` trained, the rest not."""
    segments: list[Segment] = []
    cursor = 0
    for start, end in spans:
        if start > cursor:
            segments.append(Segment(full[cursor:start], train=False))
        segments.append(Segment(full[start:end], train=True))
        cursor = end
    if cursor < len(full):
        segments.append(Segment(full[cursor:], train=False))
    return segments


def jinja_syntax_error(source: str) -> str | None:
    """A message naming the line when `source` is not a valid chat template (jinja2 only: validate
    time imports no transformers), else None."""
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    class Generation(jinja2.ext.Extension):  # transformers' {% generation %} block, parsed only
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    try:
        env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        lines = source.splitlines()
        text = lines[err.lineno - 1].strip() if 0 < err.lineno <= len(lines) else ""
        return f"Jinja syntax error on line {err.lineno} of the template: {err.message}" + (
            f" (in: {text[:120]})" if text else ""
        )
    return None


def _local_tokenizer_without_template(where: str) -> bool:
    """True when `where` is a local tokenizer directory that certainly has no chat template."""
    config_file = os.path.join(where, "tokenizer_config.json")
    if not os.path.isfile(config_file):
        return False
    if any(
        os.path.exists(os.path.join(where, name))
        for name in ("chat_template.jinja", "chat_template.json", "additional_chat_templates")
    ):
        return False
    try:
        with open(config_file, encoding="utf-8") as handle:
            return not json.load(handle).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return False
