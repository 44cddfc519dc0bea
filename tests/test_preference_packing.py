"""Padding-free and packed preference batches: every sequence of a micro-batch runs in one flattened
row, attending only to itself, and the per-sequence log-probs, the loss and the gradients equal TRL's
padded batch."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import run_api, toy_config, write_yaml  # noqa: E402
from trainer.training.methods import flatten_padded_batches  # noqa: E402


def long_tailed_pairs(path: Path, rows: int = 64, seed: int = 0, learnable: bool = False) -> Path:
    """Pairs whose prompts and completions vary from a few characters to a hundred (most short);
    `learnable`: the chosen completion is the rejected one in capitals."""
    rng = random.Random(seed)

    def text(mean: int) -> str:
        n = min(120, max(1, int(rng.expovariate(1 / mean))))
        return "".join(rng.choice("abcdefghij ") for _ in range(n))

    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            chosen, rejected = text(12), text(12)
            if learnable:
                chosen = rejected.upper()
            if chosen == rejected:
                rejected += "x"
            handle.write(json.dumps({"prompt": text(20), "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def config_for(model: Path, data: Path, out: Path, method: Any, **overrides: Any) -> dict[str, Any]:
    config = toy_config(
        model,
        data,
        out,
        method=method,
        datasets=[{"path": str(data), "type": "preference"}],
        sequence_len=160,
        max_train_samples=None,
        micro_batch_size=8,
        max_steps=4,
    )
    config.update(overrides)
    return config


def built(tmp_path: Path, config: dict[str, Any], name: str) -> Any:
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer

    return build_trainer(load_config(str(write_yaml(tmp_path / name, config)))).trainer


def sequence_logps(model: Any, batch: dict[str, Any]) -> Any:
    """TRL's own per-sequence log-probs (its fused head, as in the DPO loss)."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    )
    return out.log_probs.sum(-1)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_flattened_rows_give_the_padded_batches_log_probs_loss_and_gradients(
    tiny_model, tmp_path, adapter
) -> None:  # type: ignore[no-untyped-def]
    data = long_tailed_pairs(tmp_path / "pairs.jsonl")
    config = config_for(tiny_model, data, tmp_path / "o", "dpo", adapter=adapter, padding_free=False)
    trainer = built(tmp_path, config, "padded.yml")
    model = trainer.model
    model.train()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.05)
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.max() > 3 * lengths.min()  # long-tailed: mostly padding when padded

    def run() -> tuple[Any, Any, dict[str, Any]]:
        model.zero_grad()
        with torch.no_grad():
            logps = sequence_logps(model, batch)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logps, loss.detach(), grads

    padded = run()
    hooks = flatten_padded_batches(model, trainer.ref_model)
    calls: list[Any] = []
    probe = model.get_input_embeddings().register_forward_hook(lambda m, i, o: calls.append(o.shape))
    flattened = run()
    probe.remove()
    for hook in hooks:
        hook.remove()
    assert calls and all(shape[0] == 1 and shape[1] == int(lengths.sum()) for shape in calls)  # one row
    torch.testing.assert_close(flattened[0], padded[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flattened[1], padded[1], rtol=1e-5, atol=1e-6)
    assert flattened[2].keys() == padded[2].keys()
    for name in padded[2]:
        torch.testing.assert_close(flattened[2][name], padded[2][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo", "kto"])
def test_padding_free_is_the_default_and_trains_like_padded(tiny_model, tmp_path, method) -> None:  # type: ignore[no-untyped-def]
    """The same run padded and padding-free (the default under sdpa): the logged losses agree."""
    data = long_tailed_pairs(tmp_path / "pairs.jsonl")
    losses = []
    for padding_free in (False, None):
        out = tmp_path / f"o-{padding_free}"
        config = config_for(tiny_model, data, out, method, adapter="lora", padding_free=padding_free)
        history = run_api(tmp_path, config, name=f"{padding_free}.yml").trainer.state.log_history
        losses.append([h["loss"] for h in history if "loss" in h])
    assert len(losses[0]) == 4
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_sample_packing_groups_pairs_by_tokens(tiny_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With sample_packing a micro-batch is micro_batch_size groups of whole pairs, each group at most
    2 x sequence_len tokens; training runs and the loss falls."""
    data = long_tailed_pairs(tmp_path / "pairs.jsonl", rows=128, learnable=True)
    config = config_for(
        tiny_model, data, tmp_path / "o", "dpo", adapter="lora", sample_packing=True, micro_batch_size=2,
        max_steps=12, learning_rate=5e-3,
    )  # fmt: skip
    result = run_api(tmp_path, config)
    train = result.train_dataset
    assert type(train).__name__ == "PackedGroups"
    assert len(train) < 128 / 2  # more than two pairs per group on average
    assert all(sum(group) <= 2 * 160 for group in train.plan.slots)
    batch = next(iter(result.trainer.get_train_dataloader()))
    pairs = sum(len(train[i]["rows"]) for i in range(2))
    assert batch["input_ids"].shape[0] in range(2, 2 * 128)  # chosen and rejected of every pair
    assert pairs >= 2
    losses = [h["loss"] for h in result.trainer.state.log_history if "loss" in h]
    assert sum(losses[-3:]) / 3 < losses[0]
