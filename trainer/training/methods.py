"""Our subclass of the TRL trainer a method names (DPO, KTO, ORPO, CPO/SimPO, reward, GRPO).

`method_trainer(trl_class)` returns `class X(MethodFeatures, RunFeatures, trl_class)`: the run's
features (trainer.training.run_features) and the data as our pipeline prepared it. The pipeline
already tokenized, masked and fitted every row (trainer.data.shapes), so TRL's own pass over the
dataset is skipped:

- the new-style trainers (DPO, KTO, reward) prepare in `_prepare_dataset`, which here returns the
  prepared rows (their columns are the ones TRL's collators read);
- the older experimental ones (ORPO, CPO) map `tokenize_row` over the rows, which here turns our
  columns into the `prompt_input_ids` / `chosen_labels` / ... columns their collator reads.

Padding-free and packed batches (`flatten_padded_batches`): TRL's preference trainers pad every
sequence of a micro-batch to the longest (TRL 1.16 has no padding-free DPO). Hooks around the
model's backbone run the right-padded batch as one row of its real tokens instead, with position
ids restarting at each sequence, so the attention kernel (sdpa's tiles, flash-attention's varlen)
keeps every sequence to itself; the hidden states are put back in the padded layout, so the LM head,
the log-probs and every loss and metric of the trainer are computed as TRL computes them.
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
    from trl import GRPOTrainer

    from trainer.training.grpo import GrpoFeatures

    extra = (GrpoFeatures,) if issubclass(trl_class, GRPOTrainer) else ()
    bases = (*extra, MethodFeatures, RunFeatures, trl_class)
    return type(trl_class.__name__, bases, {"__module__": __name__})


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


def reshard(model: Any) -> None:
    """Give back the gathered weights an FSDP2 model keeps after a forward without backward. FSDP2 keeps
    a unit that does not reshard after its forward (the root, and accelerate's embedding and LM-head
    unit) gathered until the next backward; after the held-out pairs are scored at the start, every
    process would hold those weights whole into the first step (the start report read 52-60% held of
    a 2-process run instead of 50%). No-op for any other model."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class PairPreference(TrainerCallback):
    """Logs `preference_accuracy` on held-out pairs at the start of training (the untrained model;
    not when resuming) and at its end, so the run report shows what the method changed."""

    def __init__(self, trainer: Any, pairs: Any, pad_id: int, head: str):
        self.trainer, self.pairs, self.pad_id, self.head = trainer, pairs, pad_id, head

    def _measure(self) -> None:
        model = self.trainer.model_wrapped or self.trainer.model
        accuracy = preference_accuracy(model, self.pairs, self.pad_id, self.head)  # on every process
        reshard(model)
        self.trainer.log({PREFERENCE_ACCURACY: round(accuracy, 4)})

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            self._measure()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._measure()


def backbone(model: Any) -> Any:
    """The transformer under the LM (or score) head: what TRL's fused head calls `base_model`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


class FlattenedRows:
    """Forward hooks on a backbone: a right-padded [N, L] batch runs as one [1, T] row of its T real
    tokens (position ids restarting per sequence, no attention mask), and its hidden states come back
    as [N, L, H] with zeros at the padding. Batches without padding, left-padded ones and cached
    (generation) calls run unchanged."""

    def __init__(self, module: Any):
        self._pending: list[tuple[Any, Any]] = []
        self._handles = [
            module.register_forward_pre_hook(self._flatten, with_kwargs=True),
            module.register_forward_hook(self._unflatten, with_kwargs=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _flatten(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import torch

        ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
        if (
            ids is None
            or mask is None
            or mask.dim() != 2
            or kwargs.get("past_key_values") is not None
            or kwargs.get("position_ids") is not None
        ):
            self._pending.append((None, None))
            return None
        lengths = mask.sum(-1)
        right_padded = torch.equal(
            mask.bool(), torch.arange(mask.size(1), device=mask.device) < lengths[:, None]
        )
        if not right_padded or bool((lengths == mask.size(1)).all()):
            self._pending.append((None, None))
            return None
        keep = mask.bool().reshape(-1)
        positions = torch.cat([torch.arange(int(n), device=ids.device) for n in lengths.tolist()])
        self._pending.append((keep, ids.shape))
        kwargs = {**kwargs, "input_ids": ids.reshape(-1)[keep][None], "attention_mask": None}
        kwargs["position_ids"] = positions[None]
        return args[1:] if args else (), kwargs

    def _unflatten(self, module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        keep, shape = self._pending.pop()
        if keep is None:
            return output
        hidden = output.last_hidden_state[0]
        index = keep.nonzero().squeeze(-1)
        padded = hidden.new_zeros(keep.numel(), hidden.size(-1)).index_copy(0, index, hidden)
        output.last_hidden_state = padded.view(*shape, hidden.size(-1))
        return output


def flatten_padded_batches(*models: Any) -> list[FlattenedRows]:
    """Run each model's right-padded batches as single rows of real tokens (see FlattenedRows)."""
    hooks = []
    for model in models:
        while hasattr(model, "module"):  # a DeepSpeed engine or a DDP wrapper
            model = model.module
        if model is not None:
            hooks.append(FlattenedRows(backbone(model)))
    return hooks
