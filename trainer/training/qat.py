"""`qat:` applied with torchao (0.18): the model's linear layers (and, with quantize_embedding, its
input embeddings) are swapped for torchao's fake-quantized ones before training, `FakeQuantAfter`
switches fake quantization on at `fake_quant_after_n_steps`.

The swap keeps each layer's own weight and bias Parameters (`FakeQuantizedLinear.from_linear`), so
tied embeddings stay tied, optimizers and checkpoints see the same tensors under the same names, and
the saved model is the plain full-precision one: `from_pretrained` loads it with no torchao modules,
and quantizing it for real (docs/qat.md) applies the scheme the training simulated.

The output head (`get_output_embeddings()`) is left in full precision: TRL's chunked loss reads
`lm_head.weight` directly on a GPU (trl.trainer.utils.add_fused_lm_head), so a fake quantizer there
would act in some runs and not in others; transformers' TorchAoConfig leaves it unquantized too.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from trainer.config.errors import ConfigErrors, Problem
from trainer.config.schema import Qat
from trainer.resolve.qat import group_size


def _torchao() -> None:
    """Import torchao without its warnings about the CUDA extensions a CPU build cannot load."""
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        log.setLevel(level)


def base_config(qat: Qat, *, embedding: bool = False) -> Any:
    """The torchao post-training quantization config whose numerics `qat` fake-quantizes (the one
    that quantizes the trained model for real); `embedding`: the weight-only config for embeddings."""
    _torchao()
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8DynamicActivationInt4WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup

    act = None if embedding else qat.activation_dtype
    weight = qat.weight_dtype
    size = group_size(act, weight, qat.group_size if not embedding else qat.group_size or 32)
    bits = {"int4": torch.int4, "int8": torch.int8}  # type: ignore[attr-defined]
    if (act, weight) == (None, "int4"):
        return Int4WeightOnlyConfig(group_size=size, version=2)
    if (act, weight) == (None, "int8"):
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(size))
    if act == "int8":
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=bits[weight], weight_granularity=PerGroup(size)
        )
    if (act, weight) == ("fp8", "fp8"):
        return Float8DynamicActivationFloat8WeightConfig()
    if (act, weight) == ("fp8", "int4"):
        return Float8DynamicActivationInt4WeightConfig()
    if weight == "nvfp4":
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        return NVFP4DynamicActivationNVFP4WeightConfig(use_triton_kernel=False)
    if weight == "mxfp4":
        from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

        fp4 = torch.float4_e2m1fn_x2
        return MXDynamicActivationMXWeightConfig(activation_dtype=fp4, weight_dtype=fp4, block_size=size)
    raise ValueError(f"no QAT scheme for {act}/{weight} (validation refuses it)")


def prepare(model: Any, qat: Qat) -> Any:
    """Swap `model`'s linear layers (all but the output head) for torchao's fake-quantized ones, and
    its input embeddings too with `quantize_embedding`; fake quantization is on. A layer whose input
    width the group size does not divide is a config error naming `qat.group_size`."""
    _torchao()
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    head = model.get_output_embeddings()
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    size = group_size(qat.activation_dtype, qat.weight_dtype, qat.group_size)
    if size is not None:
        uneven = [f"{n} ({m.in_features} inputs)" for n, m in linears.items() if m.in_features % size]
        if uneven:
            raise ConfigErrors(
                [
                    Problem(
                        ("qat", "group_size"),
                        f"{size} does not divide the input width of {len(uneven)} linear layer(s), e.g. "
                        f"{', '.join(uneven[:3])}: use a group size that divides it",
                    )
                ]
            )
    quantize_(
        model,
        QATConfig(base_config(qat), step="prepare"),
        filter_fn=lambda module, name: name in linears and module is linears[name],
    )
    if qat.quantize_embedding:
        embeddings = model.get_input_embeddings()
        quantize_(
            model,
            QATConfig(base_config(qat, embedding=True), step="prepare"),
            filter_fn=lambda module, name: module is embeddings,
        )
    return model


def fake_quantizers(model: Any) -> list[Any]:
    """Every switchable fake quantizer in `model` (weights' and activations')."""
    found = []
    for module in model.modules():
        for attr in ("activation_fake_quantizer", "weight_fake_quantizer"):
            quantizer = getattr(module, attr, None)
            if quantizer is not None and hasattr(quantizer, "enabled"):
                found.append(quantizer)
    return found


def switch(model: Any, enabled: bool) -> None:
    """Fake quantization on or off in every fake-quantized layer of `model`."""
    for quantizer in fake_quantizers(model):
        quantizer.enabled = enabled


class FakeQuantAfter(TrainerCallback):
    """`fake_quant_after_n_steps: N`: fake quantization off for the first N optimizer steps (and the
    evaluation before them), on from step N+1. Decided from the step count before each step, so a run
    resumed past N has it on."""

    def __init__(self, steps: int):
        self.steps = steps
        self.on: bool | None = None

    def _set(self, state: Any, model: Any) -> None:
        wanted = state.global_step >= self.steps
        if model is not None and wanted is not self.on:
            switch(model, wanted)
            self.on = wanted

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._set(state, model)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._set(state, model)
