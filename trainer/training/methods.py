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

from trainer.data.encode import IGNORE
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
