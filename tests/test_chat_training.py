"""A real training run through the chat path: ChatML conversations, only assistant turns trained,
eval loss falls, and the template is saved with the tokenizer so the output renders prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, run_api
from trainer.data.encode import IGNORE


def test_chat_example_trains_assistant_turns_and_saves_its_template(
    tiny_model: Path, toy_data: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from plugins.formatters.chat_templates import BUILTIN_TEMPLATES

    config: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart-chat.yml").read_text())
    config.update(
        base_model=str(tiny_model),
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        max_steps=40,
        max_train_samples=640,
        max_eval_samples=32,
        learning_rate=3.0e-3,
        warmup_steps=5,
        eval_strategy="steps",
        eval_steps=40,
    )
    config["datasets"][0]["path"] = str(toy_data / "chat_train.jsonl")
    config["test_datasets"][0]["path"] = str(toy_data / "chat_eval.jsonl")
    built = run_api(tmp_path, config)

    tokenizer = built.tokenizer
    row = built.train_dataset[0]
    trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE]
    text = tokenizer.decode(trained)
    assert text.count("<|im_end|>") == 2 and "Reverse each word." not in text and "user" not in text

    evals = [h["eval_loss"] for h in built.trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and evals[-1] < 0.6 * evals[0], evals

    saved = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert saved.chat_template == BUILTIN_TEMPLATES["chatml"].source
    prompt = saved.apply_chat_template(
        [{"role": "user", "content": "abc"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n"
