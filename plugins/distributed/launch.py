"""Process layout shared by the multi-process backends (ddp, fsdp, deepspeed): how many processes
per node, how many nodes, and where node 0 listens. The train command hands these to torchrun when
it starts the processes itself; under torchrun or accelerate launch the launcher's layout is used."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from trainer.api import Distributed, Options
from trainer.config.schema import TrainConfig
from trainer.config.validate import plugin_name


class LaunchOptions(Options):
    num_processes: int = Field(2, gt=0, description="Processes per node (usually one per GPU)")
    nnodes: int = Field(1, gt=0, description="Number of machines")
    node_rank: int = Field(0, ge=0, description="This machine's rank (0 .. nnodes-1)")
    master_addr: str = Field("127.0.0.1", description="Address of node 0 (nnodes > 1)")
    master_port: int = Field(29500, gt=0, lt=65536, description="Port on node 0 (nnodes > 1)")


class Launched(Distributed):
    """Base of the backends that run several processes."""

    Options = LaunchOptions

    @property
    def launch(self) -> LaunchOptions:
        return self.options  # type: ignore[return-value]

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        if self.launch.node_rank >= self.launch.nnodes:
            problems.append(
                ("node_rank", f"{self.launch.node_rank} must be below nnodes ({self.launch.nnodes})")
            )
        for key, backend in (("deepspeed", "deepspeed"), ("fsdp", "fsdp")):
            if config.trainer_args.get(key) and self.name != backend:
                problems.append(
                    f"trainer_args.{key} and distributed: {self.name} cannot run together; "
                    f"use distributed: {backend} for {backend}"
                )
        return problems

    def world_size(self) -> int:
        return self.launch.num_processes * self.launch.nnodes

    def launcher_args(self) -> list[str]:
        args = [f"--nproc_per_node={self.launch.num_processes}"]
        if self.launch.nnodes == 1:
            return [*args, "--standalone"]
        return [
            *args,
            f"--nnodes={self.launch.nnodes}",
            f"--node_rank={self.launch.node_rank}",
            f"--master_addr={self.launch.master_addr}",
            f"--master_port={self.launch.master_port}",
        ]


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def adapter(config: TrainConfig) -> tuple[str | None, dict[str, Any]]:
    """The configured adapter's name and options block (validated separately by the adapter)."""
    block = config.adapter
    options = {k: v for k, v in block.items() if k != "type"} if isinstance(block, dict) else {}
    return plugin_name(block), options


def is_8bit_optimizer(name: str) -> bool:
    """bitsandbytes' 8-bit and paged optimizers."""
    return "8bit" in name or name.startswith(("paged_", "lion_", "rmsprop_bnb", "adamw_bnb_"))
