"""The core's `EvalContext`: what eval plugins measure with. The eval rows come from the data
pipeline (the same encoding and loss mask as training), answers from the inference layer (the
run's prompt format, left-padded batches, greedy), metrics from the `trainer.metrics` entry points."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.api import EvalContext, Resolved
from trainer.resolve.registry import Registry, default_registry


class RunContext(EvalContext):
    """A model (being trained, or loaded from a run) with its run's resolved config."""

    def __init__(
        self,
        resolved: Resolved | None,
        model: Any,
        tokenizer: Any,
        name: str,
        eval_dataset: Any = None,
        registry: Registry | None = None,
    ):
        """`resolved` None: a model folder without a config; evals that need the eval split fail."""
        self.resolved = resolved
        if resolved is not None:
            self.config = resolved.config
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self._eval_dataset = eval_dataset
        self._registry = registry

    def _loaded(self, chat: bool | None = None) -> Any:
        """The model as the inference layer sees it: prompt format and end-of-turn from the run
        (or the format `chat` chooses)."""
        from trainer.inference.load import in_memory

        resolved = self.resolved.to_dict() if self.resolved is not None else None
        return in_memory(self.model, self.tokenizer, resolved, self.name, chat)

    def eval_rows(self) -> Any:
        if self._eval_dataset is None:
            from trainer.data.pipeline import build_eval_dataset

            if self.resolved is None:
                raise ValueError("no config to take the eval split from: give --data FILE --type FORMATTER")
            self._eval_dataset = build_eval_dataset(self.resolved, self.tokenizer)
        return self._eval_dataset

    def loss(self, rows: Any, batch_size: int) -> tuple[float, int]:
        """Summed next-token cross-entropy over the trained tokens (labels != -100), right-padded
        batches, the model in eval mode (restored after)."""
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total, tokens = 0.0, 0
        try:
            with torch.no_grad():
                for start in range(0, len(rows), batch_size):
                    batch = rows[start : start + batch_size]
                    ids_list, labels_list = batch["input_ids"], batch["labels"]
                    width = max(map(len, ids_list))
                    ids = torch.full((len(ids_list), width), pad, dtype=torch.long)
                    labels = torch.full((len(ids_list), width), -100, dtype=torch.long)
                    mask = torch.zeros((len(ids_list), width), dtype=torch.long)
                    for i, (row_ids, row_labels) in enumerate(zip(ids_list, labels_list, strict=True)):
                        ids[i, : len(row_ids)] = torch.tensor(row_ids)
                        labels[i, : len(row_labels)] = torch.tensor(row_labels)
                        mask[i, : len(row_ids)] = 1
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                    shifted = labels[:, 1:].to(device)
                    total += float(
                        torch.nn.functional.cross_entropy(
                            logits[:, :-1].reshape(-1, logits.size(-1)),
                            shifted.reshape(-1),
                            ignore_index=-100,
                            reduction="sum",
                        )
                    )
                    tokens += int((shifted != -100).sum())
        finally:
            model.train(was_training)
        return total, tokens

    def generate(
        self, prompts: list[Any], *, max_new_tokens: int, system: str | None = None, batch_size: int = 8
    ) -> list[str]:
        from trainer.inference.generation import Sampling, generate, prompt_ids

        model = self.model
        was_training = model.training
        model.eval()
        try:
            loaded = self._loaded()
            ids = [prompt_ids(loaded, prompt, system) for prompt in prompts]
            results = generate(loaded, ids, Sampling(max_new_tokens=max_new_tokens), batch_size)
        finally:
            model.train(was_training)
        return [completions[0].text for completions in results]

    def prompt_format(self, chat: bool | None = None) -> tuple[bool, list[str]]:
        loaded = self._loaded(chat)
        eos = self.tokenizer.eos_token_id
        markers = [str(self.tokenizer.convert_ids_to_tokens(i)) for i in loaded.stop_token_ids if i != eos]
        return loaded.chat, [*markers, *loaded.stop_strings]

    def metric(self, name: str) -> Callable[..., Any]:
        registry = self._registry or default_registry()
        function: Callable[..., Any] = registry.get("metrics", name)
        return function
