"""The language-modelling loss scored on the trained positions only, where TRL would score them all.

TRL 1.16's SFTTrainer computes the loss through a fused, chunked LM head (`trl.trainer.utils.
add_fused_lm_head`). On CUDA/XPU with Triton it projects only the positions whose next token is
trained; on any other device (CPU) it projects every position, prompt and padding included, and
folds the vocabulary chunk by chunk in torch ops (its `compact = _use_triton(device)`). There, when
the trained positions' logits are small (`LOGITS_BUDGET_BYTES`), `labelled_loss` asks the model for
exactly those logits (transformers' `logits_to_keep` with an index tensor) and computes from them
what TRL computes: the summed negative log-likelihood over `num_items_in_batch`, and the logged
entropy and token accuracy. A run that TRL handles differently (another loss type, label
smoothing, a custom loss function, an MoE auxiliary loss, large logits, an accelerator) keeps TRL's
path: `trained_positions` says which.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

LOGITS_BUDGET_BYTES = 256 * 2**20
"""Largest fp32 logits of the trained positions computed at once; above it TRL's chunked head runs."""


def trained_positions(trainer: Any, model: Any, inputs: dict[str, Any]) -> Any | None:
    """The positions whose next token is trained, when this batch's loss is TRL's plain token NLL on
    a device where TRL's fused head scores every position, and their logits are small; None where
    TRL's own path runs."""
    labels = inputs.get("labels")
    if labels is None or "shift_labels" in inputs or labels.device.type in ("cuda", "xpu"):
        return None
    if trainer.args.loss_type != "nll" or trainer.label_smoother is not None:
        return None
    if trainer.compute_loss_func is not None or trainer.aux_loss_enabled:
        return None
    base = trainer.accelerator.unwrap_model(model)
    if hasattr(base, "get_base_model"):  # PEFT
        base = base.get_base_model()
    if not _takes_logits_to_keep(base.__class__):
        return None
    kept = (labels[:, 1:] != -100).any(0).nonzero().flatten()
    vocab = base.config.get_text_config().vocab_size
    return kept if labels.shape[0] * kept.numel() * vocab * 4 <= LOGITS_BUDGET_BYTES else None


@functools.cache
def _takes_logits_to_keep(model_class: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def labelled_loss(
    trainer: Any, model: Any, inputs: dict[str, Any], kept: Any, num_items_in_batch: Any
) -> Any:
    """TRL's SFT loss and metrics (TRL 1.16 SFTTrainer.compute_loss, loss_type "nll") from the
    logits of the trained positions `kept` only (`trained_positions`)."""
    import torch

    targets = inputs["labels"][:, 1:]
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    logits = model(**model_inputs, use_cache=False, logits_to_keep=kept).logits
    chosen = targets[:, kept]
    trained = chosen != -100
    log_probs = logits[trained].float().log_softmax(-1)
    target_ids = chosen[trained]
    token_log_probs = log_probs.gather(-1, target_ids[:, None]).squeeze(-1)
    count = trained.sum() if num_items_in_batch is None else num_items_in_batch
    loss = -token_log_probs.sum() / torch.as_tensor(count).clamp(min=1)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1).sum()
        correct = (log_probs.argmax(-1) == target_ids).sum()
        gather = trainer.accelerator.gather_for_metrics
        valid, entropy, correct = (gather(x).sum() for x in (trained.sum(), entropy, correct))
    # TRL 1.16 SFTTrainer._metrics: the per-step values its `log` averages
    metrics = trainer._metrics["train" if model.training else "eval"]
    metrics["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
    metrics["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
    return loss
