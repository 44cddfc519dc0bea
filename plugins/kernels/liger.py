"""`liger`: Liger Kernel's fused Triton kernels (RMSNorm, RoPE, SwiGLU/GeGLU MLPs, LayerNorm) in the
model, applied by transformers itself.

    kernels: [liger]                 # Liger's own choice of kernels for the model type
    kernels:
      - type: liger
        rope: false                  # every other kernel as Liger chooses

The plugin sets SFTConfig's `use_liger_kernel` and `liger_kernel_config`. When training starts,
`transformers.Trainer` calls Liger's `_apply_liger_kernel_to_instance(model, **liger_kernel_config)`,
which picks `apply_liger_kernel_to_<model_type>` by the model's `config.model_type` (a PEFT model is
unwrapped first) and swaps the kernels into the loaded modules in place, and into the transformers
model classes process-wide (models built later in the same process get them too). A layer option
left unset keeps that function's default for the model type (on for most, off where Liger has no
kernel: `rope` on Qwen3.5 or GLM-4, where forcing it raises, `swiglu` on GPT-OSS, ...), so only what
you set is passed.

The loss: TRL's SFTTrainer (1.15 and later) computes the training loss itself through a chunked LM
head that never builds the full logits, refuses Liger's `fused_linear_cross_entropy` (it would replace
that forward) and turns it off. Liger's `cross_entropy` replaces `torch.nn.functional.cross_entropy`
for the whole process, which that loss does not use.

Liger's kernels are Triton GPU kernels: `check_machine()` says so at validate time on a machine
without a CUDA GPU, and `missing_requirements()` when the `liger_kernel` package is missing (machine
checks: `validate --skip-machine-checks` prints them as notes); `check()` refuses options that exclude
each other and, where the package is installed, a local model whose `model_type` has no Liger patch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re

from pydantic import Field

from trainer.api import Contribution, Kernel, Options, TrainConfig

TRL_OWN_FUSED_LM_HEAD = (1, 15)
"""First TRL version whose SFTTrainer refuses `fused_linear_cross_entropy` (its own fused LM head)."""

_UNSET = "unset: Liger's default for the model type"


class LigerOptions(Options):
    rms_norm: bool | None = Field(None, description=f"Liger's RMSNorm kernel for every RMSNorm ({_UNSET})")
    rope: bool | None = Field(None, description=f"Liger's rotary position embedding kernel ({_UNSET})")
    swiglu: bool | None = Field(
        None, description=f"Liger's fused SwiGLU MLP (Llama, Mistral, Qwen, ... MLPs) ({_UNSET})"
    )
    geglu: bool | None = Field(None, description=f"Liger's fused GeGLU MLP (Gemma models) ({_UNSET})")
    layer_norm: bool | None = Field(
        None,
        description=f"Liger's LayerNorm kernel, where the model has LayerNorms (vision towers) ({_UNSET})",
    )
    cross_entropy: bool = Field(
        False,
        description="Replace torch.nn.functional.cross_entropy, process-wide, with Liger's kernel; the "
        "training loss of TRL >= 1.15 does not use it. Not with fused_linear_cross_entropy",
    )
    fused_linear_cross_entropy: bool = Field(
        False,
        description="Liger's fused LM head + cross-entropy (no full logits); TRL >= 1.15 refuses it, its "
        "SFTTrainer computing the loss with its own chunked LM head. Not with cross_entropy",
    )


class Liger(Kernel[LigerOptions]):
    """Liger Kernel's fused Triton kernels (RMSNorm, RoPE, SwiGLU, ...): CUDA GPUs only, needs liger-kernel"""

    name = "liger"
    requires = {"liger_kernel": "liger"}

    def missing_requirements(self) -> list[str]:
        return [
            f"liger is unavailable: {line} (Liger's kernels are Triton GPU kernels: install it on a CUDA "
            "machine, or remove liger from kernels)"
            for line in super().missing_requirements()
        ]

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        options = self.options
        if options.cross_entropy and options.fused_linear_cross_entropy:
            problems.append(
                (
                    "cross_entropy",
                    "liger: cross_entropy and fused_linear_cross_entropy cannot both be true (set one false)",
                )
            )
        trl, trl_version = _version("trl")
        if options.fused_linear_cross_entropy and trl_version >= TRL_OWN_FUSED_LM_HEAD:
            problems.append(
                (
                    "fused_linear_cross_entropy",
                    f"liger: TRL {trl}'s SFTTrainer refuses it: it computes the loss with its own chunked "
                    "LM head, which never builds the full logits either (set it false)",
                )
            )
        patched = _patched_model_types(config)
        model_type = local_model_type(config.base_model)
        if isinstance(patched, dict) and model_type not in patched:
            known = ", ".join(sorted(patched))
            problems.append(
                f"liger has no kernels for model_type '{model_type}' ({config.base_model}); "
                f"it patches: {known}"
            )
        return problems

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if importlib.util.find_spec("liger_kernel") is None:
            return []  # missing_requirements() reports it; torch stays unimported
        import torch

        problems: list[str | tuple[str, str]] = []
        if not torch.cuda.is_available():
            problems.append(
                "liger needs a CUDA GPU; none is visible (Liger's kernels are Triton GPU kernels: "
                "remove liger from kernels on this machine)"
            )
        patched = _patched_model_types(config)
        if isinstance(patched, Exception):  # e.g. a transformers version it refuses
            problems.append(
                f"liger is unavailable: importing liger_kernel failed: {type(patched).__name__}: {patched}"
            )
        return problems

    def contribute(self, config: TrainConfig) -> Contribution:
        options = self.options
        return Contribution(
            sft_args={"use_liger_kernel": True, "liger_kernel_config": liger_kernel_config(options)}
        )


def liger_kernel_config(options: LigerOptions) -> dict[str, bool]:
    """The keyword arguments for Liger's `_apply_liger_kernel_to_instance`: the loss switches always, the
    layer kernels only where set (unset keeps Liger's per-model default)."""
    return {name: value for name, value in options.model_dump().items() if value is not None}


def _patched_model_types(config: TrainConfig) -> dict[str, object] | Exception | None:
    """Liger's table of the model types it patches, read where there is a question for it (the
    package is installed and the base model is local), or the error importing it raised; None when
    there is no question."""
    if importlib.util.find_spec("liger_kernel") is None or local_model_type(config.base_model) is None:
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as err:
        return err
    return dict(MODEL_TYPE_TO_APPLY_LIGER_FN)


def local_model_type(base_model: str) -> str | None:
    """`model_type` from a local model directory's config.json; None when it is not local or unreadable."""
    path = os.path.join(os.path.expanduser(base_model), "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _version(distribution: str) -> tuple[str, tuple[int, int]]:
    """An installed distribution's version and its (major, minor), read from its metadata (nothing
    imported); ("", (0, 0)) when it is not installed or the version is not numeric."""
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "", (0, 0)
    match = re.match(r"(\d+)\.(\d+)", text)
    return text, ((int(match.group(1)), int(match.group(2))) if match else (0, 0))
