"""Process layout shared by the multi-process backends (ddp, fsdp, deepspeed): how many processes
per node, how many nodes, and where node 0 listens. The train command hands these to torchrun when
it starts the processes itself; under torchrun or accelerate launch the launcher's layout is used."""

from __future__ import annotations

from pydantic import Field

from trainer.api import Distributed, Options
from trainer.config.schema import TrainConfig


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
        if self.launch.node_rank >= self.launch.nnodes:
            return [("node_rank", f"{self.launch.node_rank} must be below nnodes ({self.launch.nnodes})")]
        return []

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
