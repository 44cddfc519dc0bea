"""Memory per device for a resolved config, estimated without torch (for `validate`).

Parameter shapes come from the checkpoint without loading it: a local model's safetensors
header(s) (8-byte little-endian length + JSON of names, dtypes and shapes; the shards named by
`model.safetensors.index.json`), else the same files or `config.json` in the Hugging Face cache,
and for a config alone a formula for Llama-like models (embeddings, q/k/v/o, gate/up/down, norms).

Bytes per parameter follow the seed notes (shared/seeds/002, "Using a Single GPU": "A typical
model with AdamW optimizer requires 18 bytes per parameter"; 8-bit AdamW and Adafactor save
memory) with the breakdown of its reference 1 (huggingface.co/docs/transformers/perf_train_gpu_one,
"anatomy of the model's memory"):

* weights: 4 bytes (fp32) or 2 (fp16/bf16 checkpoint), as `dtype="auto"` loads them; mixed
  precision (bf16/fp16 on fp32 weights) adds the 16-bit working copy, 2 bytes per trainable
  parameter (autocast caches casts of trainable leaves only). 4-bit NF4 base linears (qlora):
  0.5 byte + one fp32 absmax per 64 weights (0.0625), or with double quantisation one 8-bit absmax
  per 64 plus one fp32 per 64*256 (0.0159). 8-bit base linears: 1 byte + an fp32 scale per row.
* gradients: one per trainable parameter in its own dtype (4 bytes for fp32 master weights).
* optimizer states: AdamW 8 bytes (two fp32 moments); 8-bit Adam (bitsandbytes, torchao) 2 bytes
  + an fp32 absmax per 256 values, tensors under 4096 values (and, in bitsandbytes optimizers,
  embeddings: transformers overrides them) keep 32-bit states; SGD 0 bytes, 4 with momentum
  (`optim_args: momentum=...`); Adafactor (transformers', beta1=None) is factored: exactly
  4*(rows+cols) bytes per matrix (the row and column second moments) and 4 bytes per vector
  value, computed from the shapes, so well under the "~4 bytes per parameter" upper bound;
  GaLore keeps its states on rank-r projections of each targeted matrix.
  So mixed-precision AdamW = 4 + 2 + 4 + 8 = 18 bytes per trainable parameter (the seed's number),
  fp32 AdamW = 16, 8-bit AdamW mixed = 10 + ~2.03.
* what trains and what the base weighs: the adapter says (`Adapter.training`): full training
  counts every weight; LoRA r*(in+out) per targeted linear in fp32 (PEFT upcasts adapters), DoRA
  adds `out`; QLoRA and 8-bit bases count their quantized linears; GaLore its projections.
* activations: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
  Models", eq. 1): per layer s*b*h*34 + 5*a*s^2*b bytes in 16-bit, with the MLP's 16*s*b*h (for
  an intermediate of 4h) replaced by 4*s*b*I for the model's intermediate size I, so
  s*b*(18h + 4I) + 5*a*s^2*b; the 5*a*s^2*b attention-score term only for `eager` attention (sdpa
  and flash kernels do not keep the scores); doubled for fp32 activations. Gradient checkpointing
  keeps each layer's input (2*s*b*h bytes in 16-bit) plus one layer's full activations while it is
  recomputed. Plus the logits (s*b*V in the activation dtype, their fp32 upcast and log-softmax).
  s = sequence_len (the longest a row may be), b = micro_batch_size.
* sharding: what the distributed plugin's `sharding()` says (`trainer.api.Sharding`): ZeRO stage 1
  divides optimizer states by the processes, 2 also gradients, 3 also weights; DDP divides nothing;
  offloaded optimizer state or weights are not on the device. Two copies beside that split, which a
  backend states (`Sharding.fp32_partitions`, `Sharding.resting_shard`) and 2-process runs measured
  (tests/test_memory_distributed.py):
  - DeepSpeed's ZeRO optimizer (stages 1-3) steps an fp32 copy of each process's 1/N partition of the
    trainable weights, made in every precision: + 4 bytes per trainable parameter / N in weights (the
    ZeRO paper, Rajbhandari et al. 2020, sec. 3.1, counts it in its K = 12 bytes of mixed-precision
    Adam state: fp32 copy, momentum, variance). Under bf16/fp16 DeepSpeed casts the module itself
    to 16-bit, so weights and gradients are 2 bytes (the paper's 2 + 2 + K), with no autocast copy;
    the optimizer's moments are fp32. ZeRO-2 cuts the gradient partitions from the flattened weights,
    and a tensor that a partition boundary cuts has its whole gradient in each partition that holds
    part of it (stage_1_and_2.py `grads_in_partition`): + the largest trainable tensor's gradient.
  - FSDP SHARD_GRAD_OP gathers the whole weights for the forward and keeps them through the backward,
    beside each process's 1/N shard (the weights the optimizer steps): whole weights + 1/N.
  FSDP full_shard holds only its shards between units; the unit gathered at a time (and the root
  unit, embeddings and final norm, kept gathered from the forward through the backward) are temporary.

Not counted: CUDA context and allocator slack, temporary buffers, the eval pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from trainer.api.base_model import (
    BaseModelInfo,
    ModelShapes,
    Unavailable,
    find_shapes,
    numel,
    positive_size,
)
from trainer.api.contract import TrainedTensor
from trainer.config.optimizers import OPTIMIZERS, state_bytes

GIB = 1024**3

# ---- the estimate --------------------------------------------------------------------------------


@dataclass
class Estimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float | None
    trainable: int
    total_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0)

    def render(self) -> str:
        act = gib(self.activations) if self.activations is not None else "n/a"
        share = 100 * self.trainable / self.total_params if self.total_params else 0
        return (
            f"weights {gib(self.weights)}, gradients {gib(self.gradients)}, optimizer "
            f"{gib(self.optimizer)}, activations {act}, total {gib(self.total)}; trainable "
            f"{count(self.trainable)} of {count(self.total_params)} parameters ({share:.2f}%)"
        )


def gib(n: float) -> str:
    if n >= 0.1 * GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def count(n: int) -> str:
    for size, unit in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _momentum(config: Any) -> bool:
    args = str((getattr(config, "trainer_args", None) or {}).get("optim_args") or "")
    match = re.search(r"momentum\s*=\s*([0-9.eE+-]+)", args)
    return bool(match and float(match.group(1)) != 0)


EMBEDDING_NAMES = re.compile(r"(embed_tokens|wte|embed_in)\.weight$|^lm_head\.weight$|embed_out\.weight$")


def new_token_copies(base: BaseModelInfo, config: Any, trainable: list[TrainedTensor]) -> list[TrainedTensor]:
    """Tokens added under a PEFT adapter (one that adds tensors): the core trains the input and output
    embeddings as full copies saved with the adapter (trainer.runtime.build.train_new_token_rows);
    tied ones are one copy, as the model's shapes list them once."""
    if not (config.tokens or config.special_tokens) or not any(t.added for t in trainable):
        return []
    return [
        TrainedTensor(name, shape, base.dtype_bytes, added=True, embedding=True)
        for name, shape in base.tensors.items()
        if EMBEDDING_NAMES.search(name)
    ]


def estimate(resolved: Any, shapes: ModelShapes | None = None) -> Estimate:
    """Memory per device for a resolved config; raises Unavailable."""
    c = resolved.config
    shapes = shapes or find_shapes(c.base_model)
    base = shapes.describe()
    training = resolved.adapter.plugin.training(base, c)
    notes: list[str] = [f"shapes from {shapes.source}", *training.notes]
    trainable = training.trainable + new_token_copies(base, c, training.trainable)
    if len(trainable) > len(training.trainable):
        notes.append(
            "tokens: the embeddings train in full beside the adapter (counted as if every token is new)"
        )
    added = [t for t in trainable if t.added]
    stored = training.base_weight_bytes + sum(numel(t.shape) * t.bytes_per_value for t in added)
    weights = stored
    half = c.bf16 is True or c.bf16 == "auto" or c.fp16  # auto: as on a GPU with bf16 (the one that trains)
    if c.bf16 == "auto":
        notes.append("bf16: auto counted as bf16 (a GPU that has it; fp32 elsewhere)")
    mixed = half and shapes.dtype_bytes == 4
    optimizer_row = OPTIMIZERS[c.optimizer]
    n_train = sum(numel(t.shape) for t in trainable)
    sharding = resolved.distributed.plugin.sharding()
    over = max(1, sharding.over)
    # Copies beside the ZeRO split that a backend states (Sharding; see the module docstring).
    fp32_partitions, resting_shard = sharding.fp32_partitions, sharding.resting_shard
    # DeepSpeed casts the module to 16-bit under bf16/fp16 (quantized weights stay as they are).
    cast = fp32_partitions and mixed and resolved.adapter.plugin.quantized_bits() is None

    def grad_bytes(t: Any) -> float:
        return 2 if cast else t.bytes_per_value

    if cast:
        weights = stored / 2  # an fp32 checkpoint (mixed), held in 16-bit
    elif mixed:  # the 16-bit working copy autocast keeps of each fp32 trainable weight
        weights += 2 * sum(numel(t.shape) for t in trainable if t.bytes_per_value == 4)
    gradients = sum(numel(t.shape) * grad_bytes(t) for t in trainable)
    largest_gradient = max((numel(t.shape) * grad_bytes(t) for t in trainable), default=0.0)
    if optimizer_row.fused_backward:
        gradients = 0.0
    elif optimizer_row.layerwise:
        gradients = largest_gradient
    momentum = _momentum(c)
    optimizer = sum(
        state_bytes(
            c.optimizer,
            t.shape,
            4 if fp32_partitions else t.bytes_per_value,  # DeepSpeed steps fp32 partitions
            embedding=t.embedding,
            projected_rank=t.projected_rank,
            momentum=momentum,
        )
        for t in trainable
    )

    if sharding.optimizer:
        optimizer /= over
    if sharding.gradients:
        gradients /= over
    if sharding.weights:
        weights /= over
    if sharding.stage:
        notes.append(f"ZeRO stage {sharding.stage} over {over} processes")
    if fp32_partitions and not sharding.optimizer_offloaded:
        weights += 4 * n_train / over
        notes.append("DeepSpeed's fp32 copy of this process's partition of the trainable weights")
        if sharding.gradients and not sharding.weights and gradients:
            gradients += largest_gradient  # a tensor cut by the flat partition's boundary, whole
    if resting_shard and not sharding.weights_offloaded:
        weights += stored / over
        notes.append("whole weights through forward and backward, and this process's shard besides")
    method = resolved.method.plugin if "method" in resolved.chosen else None
    peft = bool(getattr(resolved.adapter.plugin, "peft", False))
    if method is not None and method.reference(peft=peft) == "copy":
        # a frozen second copy of the base as it loads (no gradients or optimizer state), split as the weights
        weights += training.base_weight_bytes / (over if sharding.weights else 1)
        notes.append(f"method '{method.name}': a frozen copy of the base model as its reference")
    if sharding.optimizer_offloaded:
        optimizer = 0.0
        notes.append("optimizer state in CPU RAM")
    if sharding.weights_offloaded:
        weights = 0.0
        notes.append("weights in CPU RAM, gathered a layer at a time (not counted)")

    act_bytes = 2 if (half or shapes.dtype_bytes == 2) else 4
    activations = activation_bytes(
        shapes.config, c.sequence_len, c.micro_batch_size, act_bytes, c.gradient_checkpointing,
        scores=resolved.attention.plugin.keeps_scores,
    )  # fmt: skip
    if activations is None:
        notes.append("activations need hidden_size, num_hidden_layers, num_attention_heads in config.json")
    elif method is not None and method.data[0] == "preference":
        activations *= 2  # each row is a pair: its chosen and its rejected sequence go through together
        notes.append(f"method '{method.name}': two sequences (chosen, rejected) per row")
    total_params = shapes.num_params + sum(numel(t.shape) for t in added)
    return Estimate(weights, gradients, optimizer, activations, n_train, total_params, notes)


def activation_bytes(
    config: dict[str, Any], seq: int, batch: int, act_bytes: int, checkpointing: bool, scores: bool
) -> float | None:
    """Korthikanti et al. per-layer activations (see the module docstring), all layers + logits."""

    def first(*keys: str) -> int | None:
        key = next((k for k in keys if config.get(k)), None)
        return positive_size(config, key) if key else None

    try:
        h = first("hidden_size", "n_embd", "d_model")
        layers = first("num_hidden_layers", "n_layer")
        heads = first("num_attention_heads", "n_head")
        if h is None or layers is None or heads is None:
            return None
        inter = first("intermediate_size", "n_inner") or 4 * h
        vocab = first("vocab_size") or 0
    except Unavailable:
        return None
    scale = act_bytes / 2  # the formula counts 16-bit values
    layer = seq * batch * (18 * h + 4 * inter) * scale
    if scores:
        layer += 5 * heads * seq * seq * batch * scale
    # checkpointing keeps every layer's input and one layer's activations during its recomputation
    total = layers * seq * batch * h * act_bytes + layer if checkpointing else layers * layer
    return total + seq * batch * vocab * (act_bytes + 8)
