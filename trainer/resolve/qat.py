"""`qat:` checked without torch: the activation/weight pairs torchao's QAT can fake-quantize, the
group sizes each format takes, the adapters it composes with, and (machine checks) the torchao
package and the GPUs NVFP4 and MX formats need. trainer.training.qat applies it."""

from __future__ import annotations

import importlib.util

from trainer.config.errors import Problem
from trainer.config.schema import QAT_DTYPES, Qat, TrainConfig
from trainer.resolve.precision import Machine

SCHEMES: dict[tuple[str | None, str], str] = {
    (None, "int4"): "Int4WeightOnlyConfig",
    (None, "int8"): "IntxWeightOnlyConfig(weight_dtype=torch.int8)",
    ("int8", "int4"): "Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4)",
    ("int8", "int8"): "Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8)",
    ("fp8", "fp8"): "Float8DynamicActivationFloat8WeightConfig",
    ("fp8", "int4"): "Float8DynamicActivationInt4WeightConfig",
    ("nvfp4", "nvfp4"): "NVFP4DynamicActivationNVFP4WeightConfig",
    ("mxfp4", "mxfp4"): "MXDynamicActivationMXWeightConfig(float4_e2m1fn_x2)",
}
"""(activation_dtype, weight_dtype) -> the torchao post-training config whose numerics the fake
quantization follows (and that quantizes the trained model for real; docs/qat.md)."""

GROUP_SIZES: dict[tuple[str | None, str], int | None] = {
    (None, "int4"): 32, (None, "int8"): 32, ("int8", "int4"): 32, ("int8", "int8"): 32,
    ("fp8", "fp8"): None, ("fp8", "int4"): 128, ("nvfp4", "nvfp4"): 16, ("mxfp4", "mxfp4"): 32,
}  # fmt: skip
"""Each scheme's default group size (Axolotl's 32 for the integer formats); None: scaled per row."""

FIXED_GROUP = {("fp8", "int4"), ("nvfp4", "nvfp4"), ("mxfp4", "mxfp4")}
"""Schemes whose group size torchao fixes (fp8 activations with int4 weights: 128; NVFP4: 16;
MX: 32)."""

SWITCHABLE = {"int4", "int8", "fp8"}
"""Weight formats whose fake quantizers can be switched off and on (fake_quant_after_n_steps);
torchao's NVFP4 and MX linears have no switch."""


def group_size(activation: str | None, weight: str, given: int | None) -> int | None:
    """The group size a valid scheme runs with: the given one, else the scheme's default."""
    return given if given is not None else GROUP_SIZES[(activation, weight)]


def _pairs() -> str:
    return ", ".join(f"{a or 'null'}/{w}" for a, w in SCHEMES)


def scheme_problems(qat: Qat) -> list[tuple[str, str]]:
    """(option, why) for what torchao's QAT cannot do in a `qat:` block: activation/weight pairs,
    group sizes, embedding quantization, the delayed start."""
    problems: list[tuple[str, str]] = []

    def bad(key: str, message: str) -> None:
        problems.append((key, message))

    act, weight = qat.activation_dtype, qat.weight_dtype
    if (act, weight) not in SCHEMES:
        if weight == "nvfp4" and act is None:
            why = (
                "torchao's NVFP4 QAT fake-quantizes the activations too (weight-only NVFP4 QAT is not "
                "supported): set activation_dtype: nvfp4"
            )
        elif weight == "mxfp4" and act is None:
            why = "torchao's MX QAT fake-quantizes the activations too: set activation_dtype: mxfp4"
        else:
            why = f"torchao's QAT has no {act or 'unquantized'}-activation/{weight}-weight scheme"
        bad("activation_dtype", f"{why}. Supported activation/weight pairs: {_pairs()}")
        return problems
    scheme = (act, weight)
    size = qat.group_size
    if size is not None:
        if GROUP_SIZES[scheme] is None:
            bad("group_size", f"{weight} weights are scaled per row, not in groups: remove group_size")
        elif scheme in FIXED_GROUP and size != GROUP_SIZES[scheme]:
            bad(
                "group_size",
                f"{act}/{weight} takes only group_size {GROUP_SIZES[scheme]} (torchao's fixed block size), "
                f"not {size}",
            )
    if qat.quantize_embedding and weight not in ("int4", "int8"):
        bad("quantize_embedding", f"torchao fake-quantizes embeddings to int4 or int8 only, not {weight}")
    if qat.fake_quant_after_n_steps is not None and weight not in SWITCHABLE:
        bad(
            "fake_quant_after_n_steps",
            f"torchao's {weight} fake-quantized linears cannot be switched off: remove it (fake quantization "
            "then runs from the first step)",
        )
    return problems


def qat_problems(config: TrainConfig) -> list[Problem]:
    """`scheme_problems` of `config.qat`, and the adapters QAT does not compose with."""
    qat = config.qat
    if qat is None:
        return []
    problems = [Problem(("qat", key), message) for key, message in scheme_problems(qat)]
    adapter = config.plugin("adapter")
    if adapter is not None and (getattr(adapter, "peft", False) or adapter.quantized_bits() is not None):
        message = (
            f"QAT trains the full weights through their fake quantization; adapter '{adapter.name}' trains "
            "an adapter beside frozen weights, whose merge the quantization never saw (Axolotl refuses "
            "QAT with PEFT too): use adapter: full"
        )
        problems.append(Problem(("qat",), message))
    return problems


def qat_machine_problems(config: TrainConfig, machine: Machine | None = None) -> list[Problem]:
    """What this machine lacks for `config.qat`: the torchao package; a CUDA GPU for the MX formats
    and a Blackwell one (compute capability 10.0+) for NVFP4, whose fake quantization runs torchao's
    low-precision matmuls in the forward pass."""
    qat = config.qat
    if qat is None:
        return []
    problems = []
    if importlib.util.find_spec("torchao") is None:
        problems.append(
            Problem(("qat",), "needs the 'torchao' package: pip install 'trainer[qat]'", machine=True)
        )
    weight = qat.weight_dtype
    if weight in ("nvfp4", "mxfp4"):
        machine = machine or Machine()
        if weight == "nvfp4" and (machine.capability or (0, 0)) < (10, 0):
            problems.append(
                Problem(
                    ("qat", "weight_dtype"),
                    "nvfp4 QAT runs torchao's NVFP4 matmuls in the forward pass, which need an NVIDIA "
                    f"Blackwell GPU (compute capability 10.0+); this is {machine.describe()}",
                    machine=True,
                )
            )
        if weight == "mxfp4" and machine.accelerator != "cuda":
            problems.append(
                Problem(
                    ("qat", "weight_dtype"),
                    f"mxfp4 QAT runs torchao's MX kernels, which need a CUDA GPU; this machine has "
                    f"{machine.describe()}",
                    machine=True,
                )
            )
    return problems


__all__ = ["QAT_DTYPES", "SCHEMES", "group_size", "qat_machine_problems", "qat_problems", "scheme_problems"]
