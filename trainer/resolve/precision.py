"""The config against the machine it runs on: precision flags, device-bound optimizers, processes per
GPU, and what `bf16: auto` / `tf32: auto` become here.

These are machine checks (`Problem.machine`): `validate` runs them with the config's own checks (and
`--skip-machine-checks` prints them as notes), and `train` runs them again when the run starts. Each
problem points at the config key to change, so the CLI prints it with its file:line and exits 2 —
instead of transformers' ValueError surfacing as "trainer_args: rejected by SFTConfig", or, for fp16
on CPU, nothing at all: accelerate enables fp16 autocast only on an accelerator and a CPU run silently
trains in fp32.

The machine is a `Machine`, which asks torch only what a rule needs, when it needs it: a config that
asks nothing of the hardware validates without importing torch, and on a machine with no GPU driver
at all the GPU count is 0 without torch too. Tests pass a `Machine` with the answers given.

What each flag does on this hardware (torch 2.13, transformers 5.x, accelerate 1.x):
- bf16 on CPU works: accelerate runs the forward pass under torch.autocast("cpu", bfloat16), native
  on CPUs with AVX512-BF16/AMX and emulated (slower) elsewhere. On CUDA it needs bf16 support
  (Ampere or newer), else transformers refuses it.
- `bf16: auto` is Axolotl's: bf16 where a GPU computes in it natively; on a GPU without bf16, fp16
  mixed precision (unless the config sets `fp16: false`); on a CPU full precision (fp32), where bf16
  would be emulated autocast and fp16 does not run.
- fp16 needs an accelerator (CUDA, XPU, MPS, ...): it is refused here on CPU.
- tf32 needs an NVIDIA GPU of compute capability 8.0+ (Ampere) with a CUDA build of torch;
  `tf32: auto` turns it on exactly there.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from typing import Any

from trainer.config.errors import Problem
from trainer.config.optimizers import OPTIMIZERS
from trainer.config.schema import TrainConfig

_ASK = object()

GPU_DRIVER_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
"""Linux device nodes without one of which no CUDA (NVIDIA), ROCm (AMD) or WSL2 GPU is visible."""


def no_gpu_driver() -> bool:
    """True when this machine certainly has no CUDA GPU, known without torch: none made visible
    (CUDA_VISIBLE_DEVICES empty or -1), macOS (no CUDA), or Linux without any GPU driver's device
    node. False means: ask torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):
        return not any(os.path.exists(node) for node in GPU_DRIVER_NODES)
    return False


class Machine:
    """What the machine that runs the config offers, as the rules here ask it. Each answer comes
    from torch the first time it is asked (and not at all when a rule does not ask); an answer given
    to the constructor is used as is, so a test describes a GPU machine on any machine:
    `Machine(accelerator="cuda", cuda_gpus=1, capability=(8, 0), bf16=True, tf32=True, gpu_name="A100")`
    is one A100; `Machine(accelerator=None)` a CPU-only machine."""

    def __init__(
        self,
        *,
        accelerator: Any = _ASK,
        cuda_gpus: Any = _ASK,
        capability: Any = _ASK,
        bf16: Any = _ASK,
        bf16_runs: Any = _ASK,
        tf32: Any = _ASK,
        gpu_name: Any = _ASK,
    ) -> None:
        given = {
            "accelerator": accelerator,
            "cuda_gpus": cuda_gpus,
            "capability": capability,
            "bf16": bf16,
            "bf16_runs": bf16_runs,
            "tf32": tf32,
            "gpu_name": gpu_name,
        }
        self.__dict__.update({k: v for k, v in given.items() if v is not _ASK})  # cached_property reads these

    @cached_property
    def accelerator(self) -> str | None:
        """The device type a run trains on ('cuda', 'xpu', 'mps', ...), or None for CPU."""
        return accelerator_type()

    @cached_property
    def cuda_gpus(self) -> int:
        """CUDA GPUs visible to this process (0 without asking torch where no GPU driver exists)."""
        if "accelerator" in self.__dict__ and self.accelerator != "cuda":
            return 0
        if no_gpu_driver():
            return 0
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0

    @cached_property
    def capability(self) -> tuple[int, int] | None:
        """The first CUDA GPU's compute capability, or None without one."""
        if self.accelerator != "cuda":
            return None
        import torch

        major, minor = torch.cuda.get_device_capability()
        return (int(major), int(minor))

    @cached_property
    def bf16(self) -> bool:
        """The accelerator computes in bfloat16 natively (a CUDA GPU of the Ampere generation or
        newer, an XPU with bf16); False on CPU."""
        if self.accelerator == "cuda":
            import torch

            try:
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
            except TypeError:  # a torch without the keyword
                return bool(torch.cuda.is_bf16_supported())
        if self.accelerator == "xpu":
            import torch

            return bool(getattr(torch.xpu, "is_bf16_supported", lambda: False)())
        return False

    @cached_property
    def bf16_runs(self) -> bool:
        """bf16 runs at all on the CUDA GPU, natively or emulated (what transformers asks before it
        accepts `bf16: true`); a described machine: as its `bf16`."""
        if "bf16" in self.__dict__ or self.accelerator != "cuda":
            return bool(self.bf16)
        import torch

        return bool(torch.cuda.is_bf16_supported())

    @cached_property
    def tf32(self) -> bool:
        """TF32 matmuls run: an NVIDIA GPU of compute capability 8.0+ with a CUDA build of torch."""
        if self.accelerator != "cuda":
            return False
        import torch

        if torch.version.cuda is None:  # a ROCm build
            return False
        return self.capability is not None and self.capability >= (8, 0)

    @cached_property
    def gpu_name(self) -> str:
        """'NAME (compute capability X.Y)' of the first CUDA GPU, or '' without one."""
        if self.accelerator != "cuda":
            return ""
        import torch

        return str(torch.cuda.get_device_name())

    def describe(self) -> str:
        """The GPU, as the messages name it: 'A100 (compute capability 8.0)', 'a mps device',
        'no GPU'."""
        if self.accelerator == "cuda":
            capability = ".".join(map(str, self.capability or ()))
            return f"{self.gpu_name or 'a CUDA GPU'} (compute capability {capability})"
        return f"a {self.accelerator} device" if self.accelerator else "no GPU"


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


def check_precision(config: TrainConfig, machine: Machine | None = None) -> list[Problem]:
    """Problems with bf16/fp16/tf32 on this machine (`auto` never is one: it decides by the machine)."""
    machine = machine or Machine()
    problems = []
    if config.fp16 and machine.accelerator is None:
        problems.append(
            Problem(
                ("fp16",),
                "fp16 mixed precision needs a GPU (or another accelerator); this machine has none, and on "
                "CPU accelerate would silently train in fp32. Use bf16: true (CPU autocast) or remove fp16",
                machine=True,
            )
        )
    # bf16 runs everywhere but on a CUDA GPU without it (no GPU driver: no question for torch)
    if config.bf16 is True and machine.cuda_gpus and machine.accelerator == "cuda" and not machine.bf16_runs:
        problems.append(
            Problem(
                ("bf16",),
                f"bf16 needs a GPU with bfloat16 support (NVIDIA Ampere or newer); this is "
                f"{machine.describe()}. Use fp16: true or bf16: auto instead",
                machine=True,
            )
        )
    if config.tf32 is True and not machine.tf32:
        capability = machine.capability if machine.accelerator == "cuda" else None
        if capability is not None and capability < (8, 0):
            message = (
                f"tf32 needs an NVIDIA GPU of compute capability 8.0+ (Ampere); this is "
                f"{machine.describe()}. Remove tf32 (or tf32: auto)"
            )
        else:  # no GPU, another accelerator, or a CUDA device of a ROCm build
            where = f"a {machine.accelerator} device" if machine.accelerator else "no GPU"
            message = (
                f"tf32 needs an NVIDIA GPU of the Ampere generation or newer (compute capability 8.0+); "
                f"this machine has {where}. Remove tf32 (or tf32: auto)"
            )
        problems.append(Problem(("tf32",), message, machine=True))
    return problems


def check_optimizer_device(config: TrainConfig, machine: Machine | None = None) -> list[Problem]:
    """An optimizer that cannot run on this machine's device."""
    why = OPTIMIZERS[config.optimizer].cuda_only
    if why is None:
        return []
    machine = machine or Machine()
    if machine.accelerator == "cuda":
        return []
    plain = config.optimizer.replace("_8bit", "")
    device = machine.accelerator
    return [
        Problem(
            ("optimizer",),
            f"'{config.optimizer}' needs a CUDA GPU ({why}); this machine has "
            f"{f'a {device} device' if device else 'no GPU'}. Use '{plain}' instead",
            machine=True,
        )
    ]


def too_many_processes(processes_per_node: int, gpus: int) -> str | None:
    """Why `processes_per_node` cannot run on a machine with `gpus` GPUs (None when it can: one
    process per GPU at most; a CPU-only machine runs any number of gloo processes)."""
    if gpus == 0 or processes_per_node <= gpus:
        return None
    return (
        f"{processes_per_node} processes per node but this machine has {gpus} GPU(s); each process "
        f"needs a GPU of its own (set num_processes to {gpus} or less)"
    )


def check_processes(processes_per_node: int, machine: Machine | None = None) -> list[Problem]:
    """One process per GPU at most (one process never needs to ask)."""
    if processes_per_node <= 1:
        return []
    reason = too_many_processes(processes_per_node, (machine or Machine()).cuda_gpus)
    return [Problem(("distributed", "num_processes"), reason, machine=True)] if reason else []


def check_start(config: TrainConfig, machine: Machine | None = None) -> list[Problem]:
    """Every hardware problem of `config`'s own keys on this machine."""
    machine = machine or Machine()
    return [*check_precision(config, machine), *check_optimizer_device(config, machine)]


AUTO_KEYS = ("bf16", "tf32")


def decide_auto(config: TrainConfig, machine: Machine | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """`bf16: auto` and `tf32: auto` decided for `machine` (this one by default): the config with
    booleans in their place, and for each key that was auto what it became and why
    (`{"bf16": "auto -> off (no GPU with bf16): training in fp32"}`). A config without auto comes back
    as it is."""
    if all(getattr(config, key) != "auto" for key in AUTO_KEYS):
        return config, {}
    machine = machine or Machine()
    updates: dict[str, bool] = {}
    said: dict[str, str] = {}
    if config.bf16 == "auto":
        updates["bf16"] = on = bf16_auto(machine)
        if on:
            said["bf16"] = f"auto -> on ({machine.describe()} computes in bf16)"
        elif machine.accelerator is None:
            said["bf16"] = "auto -> off (no GPU with bf16): training in fp32"
        elif "fp16" not in config.model_fields_set:  # Axolotl's fallback: fp16 on a GPU without bf16
            updates["fp16"] = True
            said["bf16"] = f"auto -> off ({machine.describe()} has no bf16): fp16 mixed precision instead"
        else:
            said["bf16"] = f"auto -> off ({machine.describe()} has no bf16): training in fp32"
    if config.tf32 == "auto":
        updates["tf32"] = on = bool(machine.tf32)
        if on:
            said["tf32"] = f"auto -> on ({machine.describe()} has TF32 matmuls)"
        else:
            said["tf32"] = "auto -> off (no NVIDIA GPU of compute capability 8.0+)"
    return config.model_copy(update=updates), said


def bf16_auto(machine: Machine) -> bool:
    """What `bf16: auto` becomes on `machine`: on where an accelerator computes in bf16 natively
    (Axolotl's rule), off elsewhere, on a CPU too."""
    return machine.accelerator is not None and bool(machine.bf16)
