"""Formatters for preference and reinforcement training: `preference` (prompt + chosen + rejected),
`kto` (prompt + completion + desirable label) and `prompt` (prompts for GRPO).

    datasets:
      - path: prefs.jsonl        # {"prompt": "...", "chosen": "...", "rejected": "..."}
        type: preference
      - path: intel.jsonl        # Axolotl's {system, question, chosen, rejected}
        type: preference
        prompt_field: question
        chat_template: chatml    # wrap text rows as system/user/assistant messages
      - path: chats.jsonl        # {"messages": [...], "chosen": {"role": "assistant", ...}, "rejected": ...}
        type: preference
        prompt_field: messages

A field is a string or chat messages (a list of {role, content}, or one message). Rows given as
messages are rendered with the chat template (`chat_template`: the tokenizer's own by default, a
built-in or jinja); text rows are used as they are (the tokenizer's BOS before the prompt, EOS
after each completion), unless `chat_template` is set, which wraps them as system/user/assistant
messages first. Without a prompt field, chosen and rejected may be whole conversations that share
their first turns: the shared turns are the prompt (TRL's implicit-prompt rows).

The prompt is rendered once, with the template's generation prompt; a completion is what the full
conversation adds after it (up to its end-of-turn marker). Every completion token is trained, no
prompt token is.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from plugins.formatters.chat_template import choose_template, render, template_problems
from trainer.api import Formatter, Judged, Options, Preference, PromptOnly, RowError, Segment

Messages = list[dict[str, Any]]


class ConversationOptions(Options):
    prompt_field: str = Field("prompt", description="Row field holding the prompt (text or messages)")
    system_field: str = Field("system", description="Row field holding a system prompt, used when present")
    system_prompt: str | None = Field(None, description="System prompt for rows that have none")
    chat_template: str | None = Field(
        None,
        description="Template for message rows: tokenizer_default, a built-in (chatml, llama3, mistral, "
        "gemma, phi3, qwen) or jinja. Unset: the tokenizer's own, and text rows stay text; set: text "
        "rows are wrapped as system/user/assistant messages and rendered with it",
    )
    chat_template_jinja: str | None = Field(None, description="The Jinja source, with chat_template: jinja")


class _Conversations(Formatter[Any]):
    """Renders a prompt and its completions: as text, or as messages with a chat template."""

    add_bos = False  # the segments hold BOS and EOS themselves (text rows) or the template's
    add_eos = False

    def __init__(self, options: Any = None):
        super().__init__(options)
        self._tokenizer: Any = None
        self._template: str | None = None
        self._template_vars: dict[str, Any] = {}
        self._bos: list[int] = []
        self._eos: list[int] = []

    def check(self, config: Any) -> list[str | tuple[str, str]]:
        opts = self.options
        if opts.chat_template is None:
            if opts.chat_template_jinja is not None:
                return [("chat_template_jinja", "only used with chat_template: jinja")]
            return []
        return list(template_problems(opts.chat_template, opts.chat_template_jinja, config))

    def prepare(self, tokenizer: Any) -> None:
        opts = self.options
        self._tokenizer = tokenizer
        if opts.chat_template is not None:
            self._template = choose_template(tokenizer, opts.chat_template, opts.chat_template_jinja)
        elif getattr(tokenizer, "chat_template", None):
            self._template = str(tokenizer.get_chat_template())
        self._template_vars = dict(tokenizer.special_tokens_map)
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self._bos = [bos] if bos is not None and probe and probe[0] == bos else []
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; set one in its tokenizer_config.json")
        self._eos = [tokenizer.eos_token_id]

    # ---- reading fields ----------------------------------------------------------------------

    def _value(self, row: dict[str, Any], name: str, *, optional: bool = False) -> str | Messages | None:
        """A field as text or as a list of messages (one message is a list of one)."""
        value = row.get(name)
        if value is None:
            if optional:
                return None
            raise RowError(f"missing field '{name}'", field=name)
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise RowError(
                f"field '{name}' must be text or chat messages, got {type(value).__name__}", field=name
            )
        for i, message in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(message, dict):
                raise RowError(f"{where} must be a message object, got {type(message).__name__}", field=where)
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise RowError(f"{where}.{key} must be a string", field=f"{where}.{key}")
        return [dict(message) for message in value]

    def _system(self, row: dict[str, Any]) -> str | None:
        system = row.get(self.options.system_field)
        if system is not None and not isinstance(system, str):
            field = self.options.system_field
            raise RowError(f"field '{field}' must be a string, got {type(system).__name__}", field=field)
        return system if system else self.options.system_prompt  # an empty system is no system turn

    # ---- rendering ---------------------------------------------------------------------------

    def _as_messages(self, value: str | Messages, role: str) -> Messages:
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    def _uses_template(self, *values: str | Messages | None) -> bool:
        return self.options.chat_template is not None or any(isinstance(v, list) for v in values)

    def _render(self, messages: Messages, field: str, generation_prompt: bool = False) -> str:
        if self._template is None:
            raise RowError(
                "chat messages need a chat template: the tokenizer has none; set chat_template "
                "(a built-in, or jinja with chat_template_jinja)",
                field=field,
            )
        try:
            return render(self._template, messages, self._template_vars, generation_prompt)
        except Exception as err:
            raise RowError(f"the chat template fails on this row: {err}", field=field) from None

    def _prompt_messages(self, row: dict[str, Any], prompt: str | Messages) -> Messages:
        messages = self._as_messages(prompt, "user")
        system = self._system(row)
        if system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return messages

    def render_prompt(self, row: dict[str, Any], prompt: str | Messages, template: bool) -> list[Segment]:
        """The prompt as untrained segments (BOS first for text rows)."""
        if not template:
            system = self._system(row) or ""
            return [Segment(ids=list(self._bos)), Segment(system + str(prompt))]
        text = self._render(
            self._prompt_messages(row, prompt), self.options.prompt_field, generation_prompt=True
        )
        return [Segment(text)]

    def render_completion(
        self,
        row: dict[str, Any],
        prompt: str | Messages,
        completion: str | Messages,
        field: str,
        template: bool,
    ) -> list[Segment]:
        """A completion as trained segments: the text and EOS, or what the whole conversation
        adds after the rendered prompt (up to its end-of-turn marker, trailing whitespace left out)."""
        if not template:
            if not isinstance(completion, str):
                raise RowError(f"field '{field}' is messages but the prompt is text", field=field)
            return [Segment(completion, train=True), Segment(ids=list(self._eos), train=True)]
        messages = self._prompt_messages(row, prompt)
        head = self._render(messages, self.options.prompt_field, generation_prompt=True)
        full = self._render([*messages, *self._as_messages(completion, "assistant")], field)
        if not full.startswith(head):
            raise RowError(
                "the chat template renders the prompt differently on its own than before this "
                "completion, so the completion cannot be cut from the conversation",
                field=field,
            )
        return [Segment(full[len(head) :].rstrip(), train=True)]


class PreferenceOptions(ConversationOptions):
    chosen_field: str = Field("chosen", description="Row field holding the preferred completion")
    rejected_field: str = Field("rejected", description="Row field holding the dispreferred completion")


class PreferenceFormatter(_Conversations):
    """prompt + chosen + rejected (DPO, ORPO, SimPO, reward models; KTO unpairs them)."""

    name = "preference"
    Options = PreferenceOptions
    data = "preference"

    def format(self, row: dict[str, Any]) -> Preference:
        opts = self.options
        prompt = self._value(row, opts.prompt_field, optional=True)
        chosen = self._value(row, opts.chosen_field)
        rejected = self._value(row, opts.rejected_field)
        assert chosen is not None and rejected is not None
        if prompt is None:
            prompt, chosen, rejected = _split_shared_turns(chosen, rejected, opts)
        if chosen == rejected:
            raise RowError(
                "chosen and rejected are the same, so the pair prefers nothing", field=opts.chosen_field
            )
        template = self._uses_template(prompt, chosen, rejected)
        return Preference(
            prompt=self.render_prompt(row, prompt, template),
            chosen=self.render_completion(row, prompt, chosen, opts.chosen_field, template),
            rejected=self.render_completion(row, prompt, rejected, opts.rejected_field, template),
        )


def _split_shared_turns(
    chosen: str | Messages, rejected: str | Messages, opts: PreferenceOptions
) -> tuple[Messages, Messages, Messages]:
    """Implicit-prompt rows: the turns chosen and rejected share are the prompt."""
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise RowError(f"missing field '{opts.prompt_field}'", field=opts.prompt_field)
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError(
            f"no '{opts.prompt_field}' field, and chosen and rejected share no first turns to be the prompt",
            field=opts.prompt_field,
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


class KtoOptions(ConversationOptions):
    completion_field: str = Field("completion", description="Row field holding the completion")
    label_field: str = Field("label", description="Row field: true when the completion is desirable")


class KtoFormatter(_Conversations):
    """prompt + completion + label (true: desirable), KTO's unpaired rows."""

    name = "kto"
    Options = KtoOptions
    data = "unpaired"

    def format(self, row: dict[str, Any]) -> Judged:
        opts = self.options
        prompt = self._value(row, opts.prompt_field)
        completion = self._value(row, opts.completion_field)
        assert prompt is not None and completion is not None
        label = row.get(opts.label_field)
        if not isinstance(label, bool):
            raise RowError(
                f"field '{opts.label_field}' must be true or false, got {label!r}", field=opts.label_field
            )
        template = self._uses_template(prompt, completion)
        return Judged(
            prompt=self.render_prompt(row, prompt, template),
            completion=self.render_completion(row, prompt, completion, opts.completion_field, template),
            desirable=label,
        )


class PromptFormatter(_Conversations):
    """A prompt for GRPO to complete; every other field of the row goes to the reward functions."""

    name = "prompt"
    Options = ConversationOptions
    data = "prompt"

    def format(self, row: dict[str, Any]) -> PromptOnly:
        opts = self.options
        prompt = self._value(row, opts.prompt_field)
        assert prompt is not None
        template = self._uses_template(prompt)
        columns = {
            key: value for key, value in row.items() if key not in (opts.prompt_field, opts.system_field)
        }
        return PromptOnly(prompt=self.render_prompt(row, prompt, template), columns=columns)
