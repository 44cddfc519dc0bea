"""trainer.training.lm_loss: the loss from the trained positions' logits alone equals TRL's fused
head (loss, gradients, logged entropy and token accuracy) on padded and padding-free batches, and
TRL's path stays where it differs (label smoothing, eval's outputs)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import trl  # noqa: E402

from tests.conftest import run_api, toy_config  # noqa: E402
from trainer.training import lm_loss  # noqa: E402


def first_batch(built: Any) -> dict[str, Any]:
    batch = next(iter(built.trainer.get_train_dataloader()))
    batch.pop("num_real_tokens")
    return batch


def loss_grads_metrics(
    trainer: Any, compute: Any, batch: dict[str, Any]
) -> tuple[float, dict[str, Any], list[float]]:
    model = trainer.model
    model.zero_grad()
    for values in trainer._metrics["train"].values():
        values.clear()
    loss = compute(dict(batch))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    metrics = trainer._metrics["train"]
    return loss.item(), grads, [metrics["entropy"][-1], metrics["mean_token_accuracy"][-1]]


@pytest.mark.parametrize("padding_free", [False, None])
def test_labelled_positions_loss_equals_trls_fused_head(tiny_model, toy_data, tmp_path, padding_free):
    config = toy_config(
        tiny_model, toy_data / "train.jsonl", tmp_path / "o", max_steps=3, padding_free=padding_free
    )
    built = run_api(tmp_path, config)
    trainer = built.trainer
    trainer.model.train()
    batch = first_batch(built)
    assert (batch["input_ids"].shape[0] == 1) is (padding_free is None)
    kept = lm_loss.trained_positions(trainer, trainer.model, batch)
    assert kept is not None
    items = torch.tensor(int((batch["labels"][:, 1:] != -100).sum()) + 5)  # as under accumulation
    theirs = loss_grads_metrics(
        trainer,
        lambda b: trl.SFTTrainer.compute_loss(trainer, trainer.model, b, num_items_in_batch=items),
        batch,
    )
    ours = loss_grads_metrics(
        trainer, lambda b: lm_loss.labelled_loss(trainer, trainer.model, b, kept, items), batch
    )
    assert ours[0] == pytest.approx(theirs[0], rel=1e-6)
    assert ours[0] > 0.1
    assert ours[1].keys() == theirs[1].keys() and len(ours[1]) > 5
    worst = max((ours[1][name] - theirs[1][name]).abs().max().item() for name in ours[1])
    assert worst < 1e-6, worst
    assert ours[2] == pytest.approx(theirs[2], rel=1e-5)


def test_trls_head_stays_where_the_loss_differs(tiny_model, toy_data, tmp_path, monkeypatch):
    config = toy_config(tiny_model, toy_data / "train.jsonl", tmp_path / "o", max_steps=1)
    built = run_api(tmp_path, config)
    trainer = built.trainer
    batch = first_batch(built)
    positions = functools.partial(lm_loss.trained_positions, trainer, trainer.model)
    assert positions(batch) is not None
    assert positions({**batch, "shift_labels": batch["labels"]}) is None
    trainer.label_smoother = object()
    assert positions(batch) is None
    trainer.label_smoother = None
    monkeypatch.setattr(lm_loss, "LOGITS_BUDGET_BYTES", 1000)
    assert positions(batch) is None
