"""Attention kernels chosen at model load (`attn_implementation`): eager, sdpa, flex_attention,
flash_attention_2, flash_attention_3.

Each says how packed examples are kept apart (`packed_inputs`, see trainer.data.collate) and,
at validate time, why it cannot run on this machine (`check_machine`: the GPU, the kernel's package)
or under this config (`check`: 16-bit precision).
"""

from __future__ import annotations

import importlib.util
from typing import ClassVar

from trainer.api import Attention, Contribution, TrainConfig


class _Kernel(Attention):
    implementation: ClassVar[str] = ""

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(model_kwargs={"attn_implementation": self.implementation})


class Eager(_Kernel):
    """Plain PyTorch attention: slowest, works everywhere, the reference for correctness."""

    name = implementation = "eager"
    packed_inputs = "mask_4d"
    keeps_scores = True
    additive_mask = True


class Sdpa(_Kernel):
    """torch.nn.functional.scaled_dot_product_attention: fast on CPU and GPU, the default.

    Flattened rows (packed, or padding-free micro-batches) run one sdpa call per tile of whole
    examples instead of one masked call over the row (plugins.attention.segments); everything
    else runs exactly as transformers' `sdpa`."""

    name = "sdpa"
    packed_inputs = "position_ids"

    def contribute(self, config: TrainConfig) -> Contribution:
        from plugins.attention import segments

        return Contribution(model_kwargs={"attn_implementation": segments.register()})


def _cuda_problem(kernel: str, min_capability: tuple[int, int], gpus: str) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"{kernel} needs a CUDA GPU ({gpus}); none is visible (use attention: sdpa)"
    capability = torch.cuda.get_device_capability()
    if capability < min_capability:
        found, needed = ".".join(map(str, capability)), ".".join(map(str, min_capability))
        return f"{kernel} needs a {gpus} GPU (compute capability >= {needed}); this one is {found}"
    return None


def _half_precision_problem(kernel: str, config: TrainConfig) -> str | None:
    # bf16: auto is on wherever these kernels run (an Ampere or newer GPU computes in bf16)
    if config.bf16 is False and not config.fp16:
        return f"{kernel} runs in 16-bit only: set bf16: true or auto (or fp16: true)"
    return None


class FlexAttention(_Kernel):
    """PyTorch FlexAttention (torch.compile'd, block-sparse): packed examples skip each other's
    blocks entirely. Trains on CUDA GPUs; PyTorch has no FlexAttention backward on CPU."""

    name = implementation = "flex_attention"
    packed_inputs = "position_ids"

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return ["flex_attention is unavailable: this PyTorch has no FlexAttention (needs torch >= 2.5)"]
        import torch

        if not torch.cuda.is_available():
            return [
                "flex_attention cannot train here: PyTorch's FlexAttention has no backward pass on CPU "
                "and no CUDA GPU is visible (use attention: sdpa)"
            ]
        if importlib.util.find_spec("triton") is None:
            return ["flex_attention is unavailable: it compiles its kernels with Triton (pip install triton)"]
        return []


class FlashAttention2(_Kernel):
    """FlashAttention 2 kernels (varlen for packed rows): NVIDIA Ampere or newer, bf16/fp16, needs
    the flash-attn package."""

    name = implementation = "flash_attention_2"
    packed_inputs = "position_ids"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problem = _half_precision_problem(self.name, config)
        return [problem] if problem else []

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if importlib.util.find_spec("flash_attn") is None:
            return [
                "flash_attention_2 is unavailable: the 'flash_attn' package is not installed "
                "(it has no prebuilt wheel for this platform; install 'trainer[flash-attn]' on a "
                "CUDA machine, or use attention: sdpa)"
            ]
        problem = _cuda_problem(self.name, (8, 0), "NVIDIA Ampere or newer")
        return [problem] if problem else []


class FlashAttention3(_Kernel):
    """FlashAttention 3 kernels for Hopper GPUs (H100/H200), bf16/fp16. Needs the
    `flash_attn_interface` module, built from flash-attention's hopper/ directory (no PyPI wheel)."""

    name = implementation = "flash_attention_3"
    packed_inputs = "position_ids"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problem = _half_precision_problem(self.name, config)
        return [problem] if problem else []

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if importlib.util.find_spec("flash_attn_interface") is None:
            return [
                "flash_attention_3 is unavailable: the 'flash_attn_interface' module is not installed "
                "(it has no PyPI wheel: build flash-attention's hopper/ directory on a Hopper GPU "
                "machine), or use attention: flash_attention_2 / sdpa"
            ]
        problem = _cuda_problem(self.name, (9, 0), "NVIDIA Hopper")
        return [problem] if problem else []
