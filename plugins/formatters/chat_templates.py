"""Built-in chat templates for the `chat_template` formatter, written after each model family's
published `tokenizer_config.json` template (string content only; no images).

Besides these, every chat template Axolotl ships by name is a built-in under Axolotl's name
(gemma3, llama4, qwen3, mistral_v7_tekken, ...): the Jinja files in `templates/`, copied unchanged
from Axolotl 0.21.0 (Apache-2.0, see templates/NOTICE). Templates written for images or tools
render string contents as text.

Each entry is the Jinja source and the end-of-turn marker the template writes after a message
(`None`: the tokenizer's `eos_token`, resolved when the formatter is prepared; `DETECT`: found by the
formatter's probe render; `""`: the template writes none). `bos_token` and `eos_token` in a template
are the tokenizer's own, as in `tokenizer.apply_chat_template`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

DETECT = "\0detect"
"""`BuiltinTemplate.eot` value: the marker is the special token the probe render finds after an answer."""


class BuiltinTemplate(NamedTuple):
    source: str
    eot: str | None
    """The end-of-turn marker written after a message: None means the tokenizer's eos_token, DETECT
    the special token a probe render finds, "" none."""


# ChatML (OpenAI, used by many fine-tunes): no BOS, `<|im_start|>role\n ... <|im_end|>\n`.
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta-Llama-3-8B-Instruct: BOS first, header tokens around the role, content trimmed.
LLAMA3 = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.1/v0.2 and Mixtral-8x7B-Instruct: a system message is folded into the first
# [INST]; roles must alternate user/assistant; an answer ends with eos_token.
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate \
user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an \
initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Gemma 3 (text): BOS first, the assistant is "model", a system message becomes a prefix of the first
# user turn, content is trimmed, roles must alternate.
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# Phi-3-mini-4k-instruct: `<|role|>\n ... <|end|>\n`; a render without a generation prompt ends with
# eos_token (so a conversation's render is not a prefix of the same conversation continued).
PHI3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Qwen2.5-Instruct: ChatML with Qwen's default system message (and its tool-call format).
QWEN = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments \
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": \
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "chatml": BuiltinTemplate(CHATML, "<|im_end|>"),
    "llama3": BuiltinTemplate(LLAMA3, "<|eot_id|>"),
    "mistral": BuiltinTemplate(MISTRAL, None),
    "gemma": BuiltinTemplate(GEMMA, "<end_of_turn>"),
    "phi3": BuiltinTemplate(PHI3, "<|end|>"),
    "qwen": BuiltinTemplate(QWEN, "<|im_end|>"),
}
"""Built-in template name -> (Jinja source, end-of-turn marker)."""

TEMPLATE_DIR = Path(__file__).with_name("templates")

FILE_EOT: dict[str, str | None] = {
    "alpaca": None, "aya": "<|END_OF_TURN_TOKEN|>", "cohere": "<|END_OF_TURN_TOKEN|>",
    "command_a": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "command_a_rag": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "command_a_tool_use": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "deepseek_v2": None, "deepseek_v3": "<\uff5cend\u2581of\u2581sentence\uff5c>", "exaone": "[|endofturn|]",
    "exaone4": "[|endofturn|]", "falcon_h1": "<|im_end|>", "gemma3": "<end_of_turn>",
    "gemma3n": "<end_of_turn>", "gemma4": "<turn|>", "gemma4_unified": "<turn|>", "jamba": "<|eom|>",
    "llama3_2_vision": "<|eot_id|>", "llama4": "<|eot|>", "llava": "", "metharme": None,
    "mistral_v1": None, "mistral_v2v3": None, "mistral_v3_tekken": None, "mistral_v7_tekken": None,
    "nemotron_h": "<|im_end|>", "phi_3": "<|end|>", "phi_35": "<|end|>", "phi_4": "<|im_end|>",
    "pixtral": None, "qwen2_vl": "<|im_end|>", "qwen3": "<|im_end|>", "qwen3_5": "<|im_end|>",
    "qwen_25": "<|im_end|>",
}  # fmt: skip
"""The end-of-turn marker of each template file, read off its text (command_a: the response's end
and the turn's, both trained; llava: none; metharme: eos_token after the last answer only). A file
not listed gets DETECT."""


def _load_files() -> None:
    for path in sorted(TEMPLATE_DIR.glob("*.jinja")):
        if path.stem not in BUILTIN_TEMPLATES:
            source = path.read_text(encoding="utf-8")
            BUILTIN_TEMPLATES[path.stem] = BuiltinTemplate(source, FILE_EOT.get(path.stem, DETECT))


_load_files()
