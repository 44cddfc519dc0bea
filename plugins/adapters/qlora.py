"""`qlora`: LoRA on a base model loaded in 4 bits by bitsandbytes (QLoRA). The base weights stay
quantized and frozen; only the adapters train, and the output is a normal PEFT adapter
(adapter_config.json + adapter_model.safetensors) that loads on the base, quantized or not.

adapter:
  type: qlora
  r: 16                 # ... and every other `lora` option
  quant_type: nf4       # or fp4
  double_quant: true    # quantize the quantization constants too (~0.4 bit/param less)
  compute_dtype: null   # null: bfloat16 with bf16 (as bf16: auto decides), float16 with fp16, else float32
  quant_storage: null   # the packed weights' dtype; null: uint8, or the compute dtype under fsdp

8-bit loading is not this adapter's business: it is `lora`'s `load_in_8bit`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from plugins.adapters.lora import Lora, LoraOptions, kbit_base_bytes
from trainer.api import BaseModelInfo, Contribution, TrainConfig

ComputeDtype = Literal["float32", "bfloat16", "float16"]


class QLoraOptions(LoraOptions):
    bits: Literal[4] = Field(4, description="Bits per base weight (4; for 8 bits use lora's load_in_8bit)")
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA paper's) or fp4"
    )
    double_quant: bool = Field(True, description="Also quantize the per-block scaling constants")
    compute_dtype: ComputeDtype | None = Field(
        None,
        description="Dtype the dequantized weights are multiplied in; "
        "null: bfloat16 with bf16, float16 with fp16, else float32",
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] | None = Field(
        None,
        description="Dtype the packed 4-bit weights are stored in; null: uint8, or under distributed: "
        "fsdp the compute dtype, so that FSDP shards them with the other weights",
    )


def resolved_quant_storage(options: QLoraOptions, config: TrainConfig) -> str:
    """The packed weights' dtype: the option when set; under FSDP the compute dtype, else uint8."""
    if options.quant_storage is not None:
        return options.quant_storage
    if _under_fsdp(config):
        return resolved_compute_dtype(options, config)
    return "uint8"


def _under_fsdp(config: TrainConfig) -> bool:
    """FSDP shards flattened weights of one dtype, so the packed 4-bit weights take the compute dtype."""
    return getattr(config.plugin("distributed"), "name", None) == "fsdp"


def resolved_compute_dtype(options: QLoraOptions, config: TrainConfig) -> ComputeDtype:
    """The compute dtype of a run: the option when set, else the one the config trains in (a run
    sees `bf16: auto` decided; before, at validate time, it counts as bf16, as on a GPU)."""
    if options.compute_dtype is not None:
        return options.compute_dtype
    if config.bf16 is True or config.bf16 == "auto":
        return "bfloat16"
    if config.fp16:
        return "float16"
    return "float32"


class QLora(Lora[QLoraOptions]):
    """LoRA adapters on a 4-bit (bitsandbytes) quantized, frozen base model."""

    name = "qlora"
    requires = {"bitsandbytes": "qlora"}

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = list(super().check(config))
        opts = self.options
        if getattr(opts, "load_in_8bit", False):  # lora's own 8-bit loading
            problems.append(
                ("load_in_8bit", "qlora loads the base in 4 bits; for 8 bits use adapter type lora")
            )
        init = getattr(opts, "init", "default")
        if init in ("pissa", "olora"):  # they rewrite the base weights, which stay 4-bit and frozen here
            problems.append(("init", f"{init} needs full-precision base weights; use adapter type lora"))
        dtype = opts.compute_dtype
        trains_in = "bfloat16" if config.bf16 is True else "float16" if config.fp16 else "float32"
        if config.bf16 == "auto" and dtype not in (None, "float32"):
            problems.append(
                (
                    "compute_dtype",
                    f"'{dtype}' is fixed, but bf16: auto decides the precision on the machine that trains "
                    "(bf16 on a GPU that has it, else fp32): leave compute_dtype unset to follow it",
                )
            )
        elif dtype is not None and dtype not in ("float32", trains_in):
            need = {"bfloat16": "bf16: true", "float16": "fp16: true"}[dtype]
            now = {"bfloat16": "bf16", "float16": "fp16", "float32": "neither bf16 nor fp16"}[trains_in]
            problems.append(
                ("compute_dtype", f"'{dtype}' needs {need}, but the config sets {now} (or leave it unset)")
            )
        storage = resolved_quant_storage(opts, config)
        if _under_fsdp(config) and config.bf16 == "auto" and opts.quant_storage is not None:
            problems.append(
                (
                    "quant_storage",
                    "FSDP shards weights of one dtype, which bf16: auto decides on the machine that trains: "
                    "leave quant_storage unset to follow it",
                )
            )
        elif _under_fsdp(config) and storage != resolved_compute_dtype(opts, config):
            problems.append(
                (
                    "quant_storage",
                    f"FSDP shards weights of one dtype; store the 4-bit weights as the compute dtype "
                    f"'{resolved_compute_dtype(opts, config)}', not '{storage}' (or leave it unset)",
                )
            )
        return problems

    def quantized_bits(self) -> int | None:
        return 4

    def base_weight_bytes(self, base: BaseModelInfo, config: TrainConfig) -> float:
        """NF4/FP4 linear weights: 0.5 byte plus one fp32 absmax per 64 weights (0.0625), or with
        double quantization one 8-bit absmax per 64 plus one fp32 per 64*256 (0.0159); every other
        weight as kbit_base_bytes says (fp32)."""
        per_value = 0.5 + (1 / 64 + 4 / (64 * 256) if self.options.double_quant else 4 / 64)
        return kbit_base_bytes(
            base, lambda shape: math.prod(shape) * per_value, self.options.quantize_moe_experts
        )

    def bnb_config(self, config: TrainConfig) -> Any:
        import torch
        from transformers import BitsAndBytesConfig

        opts = self.options
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=opts.quant_type,
            bnb_4bit_use_double_quant=opts.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, resolved_compute_dtype(opts, config)),
            bnb_4bit_quant_storage=getattr(torch, resolved_quant_storage(opts, config)),
        )

    def contribute(self, config: TrainConfig) -> Contribution:
        contribution = super().contribute(config)
        contribution.model_kwargs = {
            **contribution.model_kwargs,
            "quantization_config": self.bnb_config(config),
        }
        if resolved_compute_dtype(self.options, config) != "bfloat16":
            contribution.trainable_dtype = "float32"  # TRL casts them to bfloat16
        return contribution

    def expert_quantization(self, config: TrainConfig) -> dict[str, Any]:
        """The experts (quantize_moe_experts, linearized experts) in 4 bits, as the linear layers."""
        import torch

        opts = self.options
        return {
            "bits": 4,
            "quant_type": opts.quant_type,
            "double_quant": opts.double_quant,
            "compute_dtype": getattr(torch, resolved_compute_dtype(opts, config)),
            "storage": getattr(torch, resolved_quant_storage(opts, config)),
        }
