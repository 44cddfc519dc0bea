"""The optimizers a config may name (transformers' `OptimizerNames`), one row each: the packages
transformers needs to build it, whether its state is 8-bit or paged, and why it
cannot step without CUDA. Torch-free, so `validate` reads it."""

from __future__ import annotations

from dataclasses import dataclass

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


def _bnb() -> Optimizer:
    """A bitsandbytes optimizer: 8-bit, paged, or 32-bit Lion / RMSprop."""
    return Optimizer(requires=(BNB,), low_bit_state=True)


OPTIMIZERS: dict[str, Optimizer] = {
    "adamw_torch": Optimizer(),
    "adamw_torch_fused": Optimizer(),
    "adamw_torch_xla": Optimizer(requires=(("torch_xla", "install torch_xla (a TPU/XLA machine)"),)),
    "adamw_torch_npu_fused": Optimizer(
        requires=(("torch_npu", "install torch_npu (an Ascend NPU machine)"),)
    ),
    "adafactor": Optimizer(),
    "adamw_anyprecision": Optimizer(
        requires=(("torchdistx", "install torchdistx (https://github.com/pytorch/torchdistx)"),)
    ),
    "adamw_torch_4bit": Optimizer(requires=(("torchao", "pip install 'torchao>=0.4'"),)),
    "adamw_torch_8bit": Optimizer(requires=(("torchao", "pip install 'torchao>=0.4'"),), low_bit_state=True),
    "ademamix": Optimizer(requires=(BNB,)),
    "sgd": Optimizer(),
    "adagrad": Optimizer(),
    "adamw_bnb_8bit": _bnb(),
    "adamw_8bit": _bnb(),
    "ademamix_8bit": _bnb(),
    "lion_8bit": _bnb(),
    "lion_32bit": _bnb(),
    "paged_adamw_32bit": _bnb(),
    "paged_adamw_8bit": _bnb(),
    "paged_ademamix_32bit": _bnb(),
    "paged_ademamix_8bit": _bnb(),
    "paged_lion_32bit": _bnb(),
    "paged_lion_8bit": _bnb(),
    "rmsprop": Optimizer(),
    "rmsprop_bnb": _bnb(),
    "rmsprop_bnb_8bit": _bnb(),
    "rmsprop_bnb_32bit": _bnb(),
    "galore_adamw": Optimizer(requires=(GALORE,)),
    "galore_adamw_8bit": Optimizer(requires=(GALORE, BNB), low_bit_state=True, cuda_only=_GALORE_8BIT_SYNC),
    "galore_adafactor": Optimizer(requires=(GALORE,)),
    "galore_adamw_layerwise": Optimizer(requires=(GALORE,)),
    "galore_adamw_8bit_layerwise": Optimizer(
        requires=(GALORE, BNB), low_bit_state=True, cuda_only=_GALORE_8BIT_SYNC
    ),
    "galore_adafactor_layerwise": Optimizer(requires=(GALORE,)),
    "lomo": Optimizer(requires=(("lomo_optim", "pip install lomo-optim"),)),
    "adalomo": Optimizer(requires=(("lomo_optim", "pip install lomo-optim"),)),
    "grokadamw": Optimizer(requires=(("grokadamw", "pip install grokadamw"),)),
    "schedule_free_radam": Optimizer(requires=(("schedulefree", "pip install schedulefree"),)),
    "schedule_free_adamw": Optimizer(requires=(("schedulefree", "pip install schedulefree"),)),
    "schedule_free_sgd": Optimizer(requires=(("schedulefree", "pip install schedulefree"),)),
    "apollo_adamw": Optimizer(requires=(("apollo_torch", "pip install apollo-torch"),)),
    "apollo_adamw_layerwise": Optimizer(requires=(("apollo_torch", "pip install apollo-torch"),)),
    "stable_adamw": Optimizer(requires=(("optimi", "pip install torch-optimi"),)),
}
"""Every optimizer name, in transformers' order (a test keeps the names equal to the installed enum)."""
