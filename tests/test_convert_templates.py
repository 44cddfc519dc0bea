"""`trainer convert`: Axolotl's named chat templates become our built-ins of the same name (SFT,
the top-level key and preference data), and its reasoning keys are carried; the output validates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plugins.formatters.chat_templates import BUILTIN_TEMPLATES
from tests.conftest import run_command
from tests.test_convert import _convert
from trainer.tools.axolotl.convert import TEMPLATES


def convert(tmp_path: Path, text: str) -> tuple[int, str, dict[str, Any]]:
    return _convert(tmp_path, text, rows='{"messages": []}\n')


def test_every_axolotl_name_maps_to_a_builtin_of_that_name() -> None:
    for name, ours in TEMPLATES.items():
        assert ours == name
        assert name in ("tokenizer_default", "jinja") or name in BUILTIN_TEMPLATES


def test_named_templates_carry_and_validate(tmp_path: Path, tiny_model: Path) -> None:
    text = (
        f"base_model: {tiny_model}\nchat_template: gemma3\n"
        "datasets:\n  - path: d.jsonl\n    type: chat_template\n"
        "  - path: d.jsonl\n    type: chat_template\n    chat_template: llama4\n"
    )
    code, err, config = convert(tmp_path, text)
    assert code == 0, err
    assert [d["chat_template"] for d in config["datasets"]] == ["gemma3", "llama4"]
    checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    # Axolotl's gemma is ours with a caveat (ours also accepts a system message)
    code, err, config = convert(tmp_path, text.replace("gemma3", "gemma"))
    assert code == 0 and config["datasets"][0]["chat_template"] == "gemma", err
    assert "Axolotl's rejects one, ours puts it before the first user turn" in err
    # names Axolotl does not have, and the fallback form, stay refused with their reason
    code, err, _ = convert(tmp_path, text.replace("gemma3", "gemma7"))
    assert code == 2 and "Axolotl has no chat template named 'gemma7'" in err, err
    code, err, _ = convert(tmp_path, text.replace("gemma3", "tokenizer_default_fallback_chatml"))
    assert code == 2 and "choose tokenizer_default or chatml" in err, err


def test_preference_data_with_a_named_template(tmp_path: Path) -> None:
    code, err, config = convert(
        tmp_path,
        "rl: dpo\nchat_template: qwen3\ndatasets:\n  - path: d.jsonl\n    type: chat_template.default\n",
    )
    assert code == 0, err
    assert config["datasets"][0]["chat_template"] == "qwen3"


def test_reasoning_keys_are_carried(tmp_path: Path, tiny_model: Path) -> None:
    entry = (
        f"base_model: {tiny_model}\ndatasets:\n  - path: d.jsonl\n    type: chat_template\n"
        "    chat_template: qwen3\n    field_thinking: thinking\n    template_thinking_key: thinking\n"
    )
    code, err, config = convert(tmp_path, entry)
    assert code == 0, err
    assert config["datasets"][0] == {
        "type": "chat_template",
        "path": "d.jsonl",
        "chat_template": "qwen3",
        "field_thinking": "thinking",
        "template_thinking_key": "thinking",
        "roles": {"user": ["human"], "assistant": ["gpt"]},  # Axolotl's default role names
    }
    assert "differs from template_thinking_key" not in err
    checked = run_command("validate", "--skip-machine-checks", tmp_path / "out.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    # a field_thinking other than the template's key: carried as documented, with Axolotl's difference
    code, err, config = convert(tmp_path, entry.replace("    template_thinking_key: thinking\n", ""))
    assert code == 0 and config["datasets"][0]["field_thinking"] == "thinking", err
    assert "field_thinking 'thinking' differs from template_thinking_key 'reasoning_content'" in err
    # only chat_template data reads them
    code, err, config = convert(tmp_path, entry.replace("type: chat_template", "type: alpaca"))
    assert code == 0 and "field_thinking" not in config["datasets"][0], err
