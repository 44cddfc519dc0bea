"""Axolotl's `qat:` block (axolotl/utils/schemas/quantization.py QATConfig, applied by
axolotl/utils/quantization.py prepare_model_for_qat) as ours.

Axolotl's defaults: weight_dtype int8, group_size 32, no activation quantization. What Axolotl
itself cannot run is refused with its own reason (int8 weights alone or with int8 activations,
NVFP4 without group_size 16 or without NVFP4 activations, QAT with an adapter or a 4/8-bit base);
its ternary scheme is its own code, not torchao's. MXFP4 in Axolotl fake-quantizes the activations
whatever activation_dtype says, so ours gets activation_dtype: mxfp4. Int4 weights under fp8
activations train with Axolotl's group_size but convert with torchao's fixed 128; ours takes 128 only.
"""

from __future__ import annotations

from typing import Any

from trainer.config.schema import Qat
from trainer.resolve.qat import scheme_problems

DTYPES = {
    "int4": "int4", "int8": "int8", "fp8": "fp8", "float8": "fp8", "float8_e4m3fn": "fp8",
    "nvfp4": "nvfp4", "mxfp4": "mxfp4",
}  # fmt: skip
"""Axolotl's dtype names (validate_ao_dtype) -> ours."""

AXOLOTL_REFUSES = {
    (None, "int8"): "Axolotl refuses int8 weights without activation quantization (Int8WeightOnlyConfig "
    "is not supported by torchao QAT, its message)",
    ("int8", "int8"): "Axolotl refuses int8 activations with int8 weights (its message: not supported "
    "by torchao QAT)",
    ("int4", "int4"): "Axolotl refuses int4 activations with int4 weights",
}


def convert(block: Any, given: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Our `qat:` block and a note, or (None, why it is refused) for Axolotl's `block` in the
    Axolotl config `given`."""
    if not isinstance(block, dict):
        return None, "must be a mapping (weight_dtype, activation_dtype, group_size, ...)"
    if given.get("adapter"):
        return None, f"Axolotl refuses QAT with an adapter (adapter: {given['adapter']}); so does trainer"
    for key in ("load_in_4bit", "load_in_8bit"):
        if given.get(key):
            return None, f"Axolotl refuses QAT with {key}: it fake-quantizes full-precision weights"
    unknown = sorted(set(block) - set(Qat.model_fields))
    if unknown:
        known = ", ".join(Qat.model_fields)
        return None, f"unknown option(s) {', '.join(unknown)} (Axolotl's QATConfig has {known})"
    names: dict[str, str | None] = {}
    for key, default in (("weight_dtype", "int8"), ("activation_dtype", None)):
        value = block.get(key, default)
        if value == "ternary":
            return None, (
                "ternary weights are Axolotl's own BitNet-style QAT (axolotl/utils/quantization_ternary.py), "
                "not a torchao scheme: no counterpart here"
            )
        if value is not None and str(value) not in DTYPES:
            return None, f"{key} '{value}' is not one of Axolotl's dtypes ({', '.join(DTYPES)}, ternary)"
        names[key] = None if value is None else DTYPES[str(value)]
    weight, act = names["weight_dtype"], names["activation_dtype"]
    assert weight is not None
    notes = []
    if weight == "mxfp4" and act is None:
        act = "mxfp4"
        notes.append("activation_dtype: mxfp4, as Axolotl fake-quantizes MXFP4 activations too")
    if (act, weight) in AXOLOTL_REFUSES:
        return None, AXOLOTL_REFUSES[(act, weight)]
    size = block.get("group_size", 32)  # Axolotl's default
    if size is None and weight in ("int4", "int8"):
        return None, (
            "group_size: null gives int weights per-channel scales in Axolotl's conversion but groups "
            "of 128 in its int4 fake quantization: set a group size"
        )
    if size is None:
        size = {"nvfp4": 16, "mxfp4": 32}.get(weight)
    if weight == "nvfp4" and size != 16:
        return None, f"Axolotl refuses NVFP4 with group_size {size} (its default is 32): it must be 16"
    if (act, weight) == ("fp8", "int4") and size != 128:
        return None, (
            f"Axolotl fake-quantizes int4 weights in groups of {size} under fp8 activations, but torchao's "
            "Float8DynamicActivationInt4WeightConfig, which quantizes the model afterwards, uses 128: "
            "set group_size: 128 to train what that conversion applies"
        )
    ours: dict[str, Any] = {"weight_dtype": weight}
    if act is not None:
        ours["activation_dtype"] = act
    if weight != "fp8" and size is not None:  # fp8 weights are scaled per row; Axolotl ignores it there
        ours["group_size"] = size
    elif "group_size" in block:
        notes.append("group_size left out: fp8 weights are scaled per row (Axolotl ignores it too)")
    if block.get("quantize_embedding"):
        ours["quantize_embedding"] = True
    if block.get("fake_quant_after_n_steps") is not None:
        ours["fake_quant_after_n_steps"] = block["fake_quant_after_n_steps"]
    problems = scheme_problems(Qat.model_validate(ours))
    if problems:
        return None, "; ".join(f"{key}: {why}" for key, why in problems)
    if (act, weight) == ("int8", "int4"):
        notes.append(
            "int4 weights fake-quantized as torchao's Int8DynamicActivationIntxWeightConfig quantizes them "
            "(symmetric, per group), the scheme `axolotl quantize` applies afterwards"
        )
    return ours, "; ".join(notes)
