"""The optimizers a config may name (transformers' `OptimizerNames`), one row each: the packages
transformers needs to build it, whether its state is 8-bit or paged, why it cannot step without
CUDA, and the size of its state (what the memory estimate counts). Torch-free, so `validate` reads it.

State sizes: AdamW keeps two moments per value in the parameter's dtype (fp32 master weights: 8
bytes); 8-bit optimizers (bitsandbytes, torchao) 1 byte per state value plus an fp32 absmax per 256
values, except tensors under 4096 values and, in bitsandbytes optimizers, embeddings (transformers
overrides them), which keep 32-bit states; Adafactor (transformers', beta1=None) is factored: one
row and one column second moment per matrix, one value per vector value; SGD keeps nothing, or a
momentum buffer when `optim_args` sets momentum; GaLore/APOLLO keep their inner optimizer's state on
rank-r projections of each targeted matrix, plus the fp32 projector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BNB = ("bitsandbytes", "pip install 'trainer[bnb]'")
GALORE = ("galore_torch", "pip install 'trainer[galore]'")
_GALORE_8BIT_SYNC = "galore_torch's 8-bit GaLoreAdamW calls torch.cuda.synchronize() every step"


@dataclass(frozen=True)
class Optimizer:
    requires: tuple[tuple[str, str], ...] = ()
    """(importable module, how to install it) for each package transformers needs."""
    low_bit_state: bool = False
    """Its state is 8-bit or paged (bitsandbytes, torchao's 8-bit AdamW): DeepSpeed's CPU offload
    cannot hold it."""
    cuda_only: str | None = None
    """Why it cannot step without CUDA (measured on a CPU-only torch build), or None."""
    states: int = 2
    """State values kept per trained value (Adam's two moments)."""
    state_dtype: Literal["param", "fp32", "8bit", "4bit", "factored"] = "param"
    """What one state value costs: the parameter's bytes, 4, 1 (+ absmax), 0.5 (+ absmax), or
    factored rows and columns (Adafactor)."""
    momentum_states: int = 0
    """Extra state values when `optim_args` sets a non-zero momentum (SGD, RMSprop)."""
    projected: str | None = None
    """GaLore / APOLLO: the inner optimizer whose state lives on rank-r projections."""
    layerwise: bool = False
    """Steps each parameter in its backward hook: one tensor's gradient held at a time."""
    fused_backward: bool = False
    """Updates inside the backward pass (LOMO): no gradients held."""


def _bnb(states: int = 2, state_dtype: Literal["fp32", "8bit"] = "8bit") -> Optimizer:
    """A bitsandbytes optimizer: 8-bit, paged, or 32-bit Lion / RMSprop."""
    return Optimizer(requires=(BNB,), low_bit_state=True, states=states, state_dtype=state_dtype)


OPTIMIZERS: dict[str, Optimizer] = {
    "adamw_torch": Optimizer(),
    "adamw_torch_fused": Optimizer(),
    "adamw_torch_xla": Optimizer(requires=(("torch_xla", "install torch_xla (a TPU/XLA machine)"),)),
    "adamw_torch_npu_fused": Optimizer(
        requires=(("torch_npu", "install torch_npu (an Ascend NPU machine)"),)
    ),
    "adafactor": Optimizer(states=1, state_dtype="factored"),
    "adamw_anyprecision": Optimizer(
        requires=(("torchdistx", "install torchdistx (https://github.com/pytorch/torchdistx)"),),
        state_dtype="fp32",
    ),
    "adamw_torch_4bit": Optimizer(requires=(("torchao", "pip install 'torchao>=0.4'"),), state_dtype="4bit"),
    "adamw_torch_8bit": Optimizer(
        requires=(("torchao", "pip install 'torchao>=0.4'"),), low_bit_state=True, state_dtype="8bit"
    ),
    "ademamix": Optimizer(requires=(BNB,), states=3),
    "sgd": Optimizer(states=0, momentum_states=1),
    "adagrad": Optimizer(states=1),
    "adamw_bnb_8bit": _bnb(),
    "adamw_8bit": _bnb(),
    "ademamix_8bit": _bnb(states=3),
    "lion_8bit": _bnb(states=1),
    "lion_32bit": _bnb(states=1, state_dtype="fp32"),
    "paged_adamw_32bit": _bnb(state_dtype="fp32"),
    "paged_adamw_8bit": _bnb(),
    "paged_ademamix_32bit": _bnb(states=3, state_dtype="fp32"),
    "paged_ademamix_8bit": _bnb(states=3),
    "paged_lion_32bit": _bnb(states=1, state_dtype="fp32"),
    "paged_lion_8bit": _bnb(states=1),
    "rmsprop": Optimizer(states=1, momentum_states=1),
    "rmsprop_bnb": _bnb(states=1, state_dtype="fp32"),
    "rmsprop_bnb_8bit": _bnb(states=1),
    "rmsprop_bnb_32bit": _bnb(states=1, state_dtype="fp32"),
    "galore_adamw": Optimizer(requires=(GALORE,), projected="adamw_torch"),
    "galore_adamw_8bit": Optimizer(
        requires=(GALORE, BNB), low_bit_state=True, cuda_only=_GALORE_8BIT_SYNC, projected="adamw_8bit"
    ),
    "galore_adafactor": Optimizer(requires=(GALORE,), projected="adafactor"),
    "galore_adamw_layerwise": Optimizer(requires=(GALORE,), projected="adamw_torch", layerwise=True),
    "galore_adamw_8bit_layerwise": Optimizer(
        requires=(GALORE, BNB),
        low_bit_state=True,
        cuda_only=_GALORE_8BIT_SYNC,
        projected="adamw_8bit",
        layerwise=True,
    ),
    "galore_adafactor_layerwise": Optimizer(requires=(GALORE,), projected="adafactor", layerwise=True),
    "lomo": Optimizer(requires=(("lomo_optim", "pip install lomo-optim"),), states=0, fused_backward=True),
    "adalomo": Optimizer(
        requires=(("lomo_optim", "pip install lomo-optim"),),
        states=1,
        state_dtype="factored",
        fused_backward=True,
    ),
    "grokadamw": Optimizer(requires=(("grokadamw", "pip install grokadamw"),), states=3),
    "schedule_free_radam": Optimizer(requires=(("schedulefree", "pip install schedulefree"),)),
    "schedule_free_adamw": Optimizer(requires=(("schedulefree", "pip install schedulefree"),)),
    "schedule_free_sgd": Optimizer(requires=(("schedulefree", "pip install schedulefree"),), states=1),
    "apollo_adamw": Optimizer(
        requires=(("apollo_torch", "pip install apollo-torch"),), projected="adamw_torch"
    ),
    "apollo_adamw_layerwise": Optimizer(
        requires=(("apollo_torch", "pip install apollo-torch"),), projected="adamw_torch", layerwise=True
    ),
    "stable_adamw": Optimizer(requires=(("optimi", "pip install torch-optimi"),)),
}
"""Every optimizer name, in transformers' order (a test keeps the names equal to the installed enum)."""


MIN_8BIT_SIZE = 4096
"""bitsandbytes keeps 32-bit states for tensors with fewer values."""
BLOCK = 256
"""Values per fp32 absmax in 8-bit optimizer states."""


def state_bytes(
    optimizer: str,
    shape: tuple[int, ...],
    bytes_per_value: float,
    *,
    embedding: bool = False,
    projected_rank: int | None = None,
    momentum: bool = False,
) -> float:
    """Bytes of optimizer state for one trained tensor (see the module docstring). `projected_rank`:
    the rank GaLore/APOLLO project this matrix to (None: not a projected matrix)."""
    row = OPTIMIZERS[optimizer]
    n = math.prod(shape)
    if row.projected is not None:
        if projected_rank is None or len(shape) != 2:
            return state_bytes(row.projected, shape, bytes_per_value, embedding=embedding, momentum=momentum)
        small, big = sorted(shape)
        rank = min(projected_rank, small)
        return small * rank * 4 + state_bytes(row.projected, (rank, big), 4, momentum=momentum)
    states = row.states + (row.momentum_states if momentum else 0)
    if row.state_dtype in ("8bit", "4bit"):
        if n < MIN_8BIT_SIZE or (embedding and optimizer not in _TORCHAO):
            return states * 4 * n
        per_value = 0.5 if row.state_dtype == "4bit" else 1.0
        return states * (per_value * n + 4 * -(-n // BLOCK))
    if row.state_dtype == "factored":
        if len(shape) >= 2:
            rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2] + shape[-1:])
            return bytes_per_value * (rows + cols)
        return bytes_per_value * n
    size = 4 if row.state_dtype == "fp32" else bytes_per_value
    return states * size * n


_TORCHAO = ("adamw_torch_8bit", "adamw_torch_4bit")
"""torchao's low-bit AdamW quantizes embeddings too (transformers overrides only bitsandbytes')."""
