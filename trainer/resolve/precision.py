"""Start-time checks of the config against this machine: precision flags and device-bound optimizers.

Validation never imports torch, so what depends on the hardware is checked here, when a run starts
(`trainer.runtime.run.train`, before anything is built). Each problem points at the config key to change, so
the CLI prints it with its file:line and exits 2 — instead of transformers' ValueError surfacing as
"trainer_args: rejected by SFTConfig", or, for fp16 on CPU, nothing at all: accelerate enables fp16
autocast only on an accelerator and a CPU run silently trains in fp32.

What each flag does on this hardware (torch 2.13, transformers 5.x, accelerate 1.x):
- bf16 on CPU works: accelerate runs the forward pass under torch.autocast("cpu", bfloat16), native
  on CPUs with AVX512-BF16/AMX and emulated (slower) elsewhere. On CUDA it needs bf16 support
  (Ampere or newer), else transformers refuses it.
- fp16 needs an accelerator (CUDA, XPU, MPS, ...): it is refused here on CPU.
- tf32 needs an NVIDIA GPU of compute capability 8.0+ (Ampere) with a CUDA build of torch.
"""

from __future__ import annotations

from typing import Any

from trainer.config.errors import Problem
from trainer.config.optimizers import OPTIMIZERS
from trainer.config.schema import TrainConfig


def accelerator_type() -> str | None:
    """The device type a run trains on ('cuda', 'xpu', 'mps', ...), or None for CPU."""
    import torch

    probe = getattr(torch, "accelerator", None)  # torch >= 2.6
    if probe is not None:
        if not probe.is_available():
            return None
        device = probe.current_accelerator()
        return device.type if device is not None else None
    return "cuda" if torch.cuda.is_available() else None


def _cuda_name() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def check_precision(config: TrainConfig, device: Any = ...) -> list[Problem]:
    """Problems with bf16/fp16/tf32 on this machine (`device`: accelerator type, probed by default)."""
    import torch

    device = accelerator_type() if device is ... else device
    problems = []
    if config.fp16 and device is None:
        problems.append(
            Problem(
                ("fp16",),
                "fp16 mixed precision needs a GPU (or another accelerator); this machine has none, and on "
                "CPU accelerate would silently train in fp32. Use bf16: true (CPU autocast) or remove fp16",
            )
        )
    if config.bf16 and device == "cuda" and not torch.cuda.is_bf16_supported():
        problems.append(
            Problem(
                ("bf16",),
                f"bf16 needs a GPU with bfloat16 support (NVIDIA Ampere or newer); this is {_cuda_name()}. "
                "Use fp16: true instead",
            )
        )
    if config.tf32:
        if device != "cuda" or torch.version.cuda is None:
            where = f"a {device} device" if device else "no GPU"
            problems.append(
                Problem(
                    ("tf32",),
                    f"tf32 needs an NVIDIA GPU of the Ampere generation or newer (compute capability 8.0+); "
                    f"this machine has {where}. Remove tf32",
                )
            )
        elif torch.cuda.get_device_capability()[0] < 8:
            problems.append(
                Problem(
                    ("tf32",),
                    f"tf32 needs an NVIDIA GPU of compute capability 8.0+ (Ampere); this is {_cuda_name()}. "
                    "Remove tf32",
                )
            )
    return problems


def check_optimizer_device(config: TrainConfig, device: Any = ...) -> list[Problem]:
    """An optimizer that cannot run on this machine's device."""
    device = accelerator_type() if device is ... else device
    why = OPTIMIZERS[config.optimizer].cuda_only
    if why is None or device == "cuda":
        return []
    plain = config.optimizer.replace("_8bit", "")
    return [
        Problem(
            ("optimizer",),
            f"'{config.optimizer}' needs a CUDA GPU ({why}); this machine has "
            f"{f'a {device} device' if device else 'no GPU'}. Use '{plain}' instead",
        )
    ]


def check_start(config: TrainConfig) -> list[Problem]:
    """Every hardware problem of `config` on this machine."""
    device = accelerator_type()
    return [*check_precision(config, device), *check_optimizer_device(config, device)]
