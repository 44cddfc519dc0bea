"""What our subclass of TRL's GRPOTrainer adds (trainer.training.methods mixes it in).

- The model completes exactly the prompt tokens the data pipeline encoded (`prompt_ids`: the
  formatter's segments, BOS included once), not a re-tokenization of the prompt text: TRL 1.16
  tokenizes a text prompt with the tokenizer's special tokens, which puts a second BOS after a chat
  template that starts with one, and tokenizes the joined text where our pipeline tokenized each
  segment on its own (SentencePiece tokenizers differ there). The text (`prompt`) is still what the
  reward functions see.
- With `beta > 0` and full-weight training TRL loads the reference itself from the base model's
  path; when the config grew the embeddings (added tokens) that copy would not cover the new ids,
  so the run is refused before TRL loads it, with the reason.
"""

from __future__ import annotations

from typing import Any

from trainer.config.errors import ConfigErrors, Problem


class GrpoFeatures:
    """Mixin before trl.GRPOTrainer: `class X(GrpoFeatures, MethodFeatures, RunFeatures, GRPOTrainer)`."""

    _batch_prompt_ids: list[list[int]] | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        _refuse_reference_without_new_rows(kwargs.get("model"), kwargs.get("args"), kwargs.get("peft_config"))
        super().__init__(*args, **kwargs)

    # TRL 1.16 GRPOTrainer._generate_and_score_completions: the only place that sees the batch's rows
    # (with our prompt_ids) before the prompts are tokenized; _tokenize_prompts gets the texts alone
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._batch_prompt_ids = [list(row["prompt_ids"]) for row in inputs]
        try:
            return super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        finally:
            self._batch_prompt_ids = None

    # TRL 1.16 GRPOTrainer._tokenize_prompts: re-tokenizes the prompt text (special tokens added);
    # the prompts are the rows' own token ids instead (see the module docstring)
    def _tokenize_prompts(self, prompts: list[Any]) -> tuple[list[list[int]], Any, dict[str, Any]]:
        ids = self._batch_prompt_ids
        if ids is None or len(ids) != len(prompts):  # not called from a batch of our rows
            return super()._tokenize_prompts(prompts)  # type: ignore[misc]
        return [list(row) for row in ids], None, {}


def _refuse_reference_without_new_rows(model: Any, args: Any, peft_config: Any) -> None:
    """TRL 1.16 GRPOTrainer builds the reference of a full-weight run (beta > 0) by loading
    `model.config._name_or_path` again: refuse when the policy's embeddings were grown past that
    checkpoint's vocabulary (it could not score the added tokens)."""
    if model is None or args is None or getattr(args, "beta", 0.0) == 0.0 or peft_config is not None:
        return
    if hasattr(model, "peft_config"):  # already a PEFT model: the reference is its adapter switched off
        return
    from transformers import AutoConfig

    path = model.config.name_or_path
    try:
        remote = bool(getattr(args, "trust_remote_code", False))  # the config's own, as TRL loads it
        base = AutoConfig.from_pretrained(path, trust_remote_code=remote).get_text_config()
    except (OSError, ValueError):
        return  # TRL will say why it cannot load the reference
    rows = int(model.get_input_embeddings().weight.shape[0])
    if rows > base.vocab_size:
        raise ConfigErrors(
            [
                Problem(
                    ("method", "beta"),
                    f"with beta > 0 and full-weight training TRL loads the reference itself from {path}, "
                    f"whose {base.vocab_size} embedding rows do not cover the {rows - base.vocab_size} "
                    "tokens this config adds: use a PEFT adapter (lora, qlora; the reference is then the "
                    "adapter switched off) or beta: 0",
                )
            ]
        )
