"""Our subclass of the TRL trainer a method names (DPO, KTO, ORPO, CPO/SimPO, reward, GRPO).

`method_trainer(trl_class)` returns `class X(MethodFeatures, RunFeatures, trl_class)`: the run's
features (trainer.training.run_features) and the data as our pipeline prepared it. The pipeline
already tokenized, masked and fitted every row (trainer.data.shapes), so TRL's own pass over the
dataset is skipped:

- the new-style trainers (DPO, KTO, reward) prepare in `_prepare_dataset`, which here returns the
  prepared rows (their columns are the ones TRL's collators read);
- the older experimental ones (ORPO, CPO) map `tokenize_row` over the rows, which here turns our
  columns into the `prompt_input_ids` / `chosen_labels` / ... columns their collator reads.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import TrainerCallback

from trainer.data.encode import IGNORE
from trainer.outputs.run_report import PREFERENCE_ACCURACY
from trainer.training.run_features import RunFeatures


class MethodFeatures:
    """The data hand-over of a prepared dataset to a TRL preference/RL trainer."""

    # TRL 1.16 DPOTrainer/KTOTrainer/RewardTrainer._prepare_dataset: extracts the prompt, adds EOS
    # and tokenizes text columns; there is no switch for rows that are already tokenized (the reward
    # trainer detects them, the others do not).
    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        return dataset

    # TRL 1.16 experimental ORPOTrainer/CPOTrainer.tokenize_row: mapped over the dataset in __init__
    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        prompt = list(feature["prompt_ids"])
        out: dict[str, Any] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            completion = list(feature[f"{side}_ids"])
            out[f"{side}_input_ids"] = prompt + completion
            out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(completion))
            out[f"{side}_labels"] = [IGNORE] * len(prompt) + completion
        return out


@functools.cache
def method_trainer(trl_class: type) -> type:
    """Our trainer class for a TRL trainer class (one class per TRL class, so pickling and
    isinstance checks see the same type every time)."""
    return type(trl_class.__name__, (MethodFeatures, RunFeatures, trl_class), {"__module__": __name__})


def preference_accuracy(model: Any, pairs: Any, pad_id: int, head: str, batch_size: int = 16) -> float:
    """The share of `pairs` (rows with prompt_ids, chosen_ids, rejected_ids) whose chosen completion
    the model scores above the rejected one: the summed log-probability of the completion's tokens
    for a language model, the score for a reward model (`head` "sequence_classification")."""
    import torch

    device = next(model.parameters()).device
    wins, total = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            rows = pairs[start : start + batch_size]
            scores = []
            for side in ("chosen_ids", "rejected_ids"):
                sequences = [p + c for p, c in zip(rows["prompt_ids"], rows[side], strict=True)]
                starts = [len(p) for p in rows["prompt_ids"]]
                width = max(len(s) for s in sequences)
                ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, sequence in enumerate(sequences):
                    ids[i, : len(sequence)] = torch.tensor(sequence)
                    mask[i, : len(sequence)] = 1
                with torch.no_grad():
                    out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
                if head == "sequence_classification":
                    scores.append(out.logits[:, 0].float().cpu())
                    continue
                logps = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
                taken = logps.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
                completion = torch.zeros_like(taken)
                for i, (begin, sequence) in enumerate(zip(starts, sequences, strict=True)):
                    completion[i, begin - 1 : len(sequence) - 1] = 1
                scores.append((taken * completion).sum(-1))
            chosen, rejected = scores
            wins += float((chosen > rejected).sum()) + 0.5 * float((chosen == rejected).sum())
            total += len(chosen)
    finally:
        model.train(was_training)
    return wins / max(1, total)


class PairPreference(TrainerCallback):
    """Logs `preference_accuracy` on held-out pairs at the start of training (the untrained model;
    not when resuming) and at its end, so the run report shows what the method changed."""

    def __init__(self, trainer: Any, pairs: Any, pad_id: int, head: str):
        self.trainer, self.pairs, self.pad_id, self.head = trainer, pairs, pad_id, head

    def _measure(self) -> None:
        model = self.trainer.model_wrapped or self.trainer.model
        accuracy = preference_accuracy(model, self.pairs, self.pad_id, self.head)
        self.trainer.log({PREFERENCE_ACCURACY: round(accuracy, 4)})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            self._measure()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._measure()
