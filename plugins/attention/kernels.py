"""Attention kernels chosen at model load (`attn_implementation`): eager, sdpa, flash_attention_2."""

from __future__ import annotations

import importlib.util

from trainer.api import Attention, Contribution
from trainer.config.schema import TrainConfig


class _Kernel(Attention):
    implementation = ""

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(model_kwargs={"attn_implementation": self.implementation})


class Eager(_Kernel):
    """Plain PyTorch attention: slowest, works everywhere, the reference for correctness."""

    name = implementation = "eager"


class Sdpa(_Kernel):
    """torch.nn.functional.scaled_dot_product_attention: fast on CPU and GPU, the default."""

    name = implementation = "sdpa"


class FlashAttention2(_Kernel):
    """FlashAttention 2 kernels: CUDA GPUs only, needs the flash-attn package."""

    name = implementation = "flash_attention_2"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if importlib.util.find_spec("flash_attn") is None:
            return [
                "flash_attention_2 is unavailable: the 'flash_attn' package is not installed "
                "(it has no prebuilt wheel for this platform; install 'trainer[flash-attn]' on a "
                "CUDA machine, or use attention: sdpa)"
            ]
        import torch

        if not torch.cuda.is_available():
            return ["flash_attention_2 needs a CUDA GPU; none is visible (use attention: sdpa)"]
        if not (config.bf16 or config.fp16):
            return ["flash_attention_2 needs bf16: true or fp16: true"]
        return []
