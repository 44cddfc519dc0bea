"""`sampler: sequential` (Axolotl's curriculum_sampling): the training batches come in the prepared
order, the same every epoch; with shuffle: false that is the datasets' own order. The default random
sampler reorders them."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import toy_config, write_yaml
from trainer.config.errors import ConfigErrors
from trainer.resolve.validate import load_config
from trainer.runtime.build import build_trainer


def batches(
    tmp_path: Path, tiny_model: Path, toy_data: Path, **overrides: Any
) -> tuple[list[list[int]], Any]:
    """The rows of the first epoch's batches (each row's input_ids, padding cut), and the built run."""
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", max_train_samples=24,
                        micro_batch_size=4, **overrides)  # fmt: skip
    built = build_trainer(load_config(str(write_yaml(tmp_path / "cfg.yml", config))))
    return rows_of(built.trainer.get_train_dataloader()), built


def rows_of(loader: Any) -> list[list[int]]:
    rows: list[list[int]] = []
    for batch in loader:
        if "cu_seq_lens_q" in batch:  # padding-free: one flattened row, cut at the sequence starts
            flat, cuts = batch["input_ids"][0].tolist(), batch["cu_seq_lens_q"].tolist()
            rows += [flat[start:end] for start, end in itertools.pairwise(cuts)]
        else:
            for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True):
                rows.append([i for i, m in zip(ids, mask, strict=True) if m])
    return rows


def test_sequential_batches_follow_the_dataset_order(
    tmp_path: Path, tiny_model: Path, toy_data: Path
) -> None:
    import json

    rows, built = batches(tmp_path, tiny_model, toy_data, shuffle=False, sampler="sequential")
    assert built.args.train_sampling_strategy == "sequential"
    assert rows == [list(r) for r in built.train_dataset["input_ids"]]  # the prepared order, batch by batch
    # ... which is the file's order: the first rows' prompts, in the order the file lists them
    lines = (toy_data / "train.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    prompts = [json.loads(line)["prompt"] for line in lines]
    decoded = [built.tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    assert all(text.startswith(prompt) for text, prompt in zip(decoded, prompts, strict=True))
    loader = built.trainer.get_train_dataloader()
    assert rows_of(loader) == rows_of(loader) == rows  # every epoch in the same order

    shuffled, built = batches(tmp_path / "random", tiny_model, toy_data, shuffle=False)
    assert sorted(shuffled) == sorted(rows) and shuffled != rows  # the default sampler reorders them
    loader = built.trainer.get_train_dataloader()
    assert rows_of(loader) != rows_of(loader)  # ... anew every epoch


def test_sequential_sampler_conflicts_with_group_by_length(
    tmp_path: Path, tiny_model: Path, toy_data: Path
) -> None:
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "out", sampler="sequential",
                        group_by_length=True)  # fmt: skip
    with pytest.raises(ConfigErrors, match="sampler"):
        load_config(str(write_yaml(tmp_path / "cfg.yml", config)))
