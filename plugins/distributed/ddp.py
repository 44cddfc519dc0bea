"""`ddp`: PyTorch DistributedDataParallel; the train command starts the processes with torchrun.

    distributed:
      type: ddp
      num_processes: 2          # per node
      nnodes: 1                 # >1: run the same command on every node with its node_rank
      backend: auto             # nccl on CUDA, gloo on CPU

Started under `torchrun` or `accelerate launch` already, the launcher's processes are used as they are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trainer.api import Contribution, Distributed, Options
from trainer.config.schema import TrainConfig


class DdpOptions(Options):
    num_processes: int = Field(2, gt=0, description="Processes per node (usually one per GPU)")
    nnodes: int = Field(1, gt=0, description="Number of machines")
    node_rank: int = Field(0, ge=0, description="This machine's rank (0 .. nnodes-1)")
    master_addr: str = Field("127.0.0.1", description="Address of node 0 (nnodes > 1)")
    master_port: int = Field(29500, gt=0, lt=65536, description="Port on node 0 (nnodes > 1)")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on GPU, else gloo")
    find_unused_parameters: bool = False


class Ddp(Distributed):
    name = "ddp"
    Options = DdpOptions

    @property
    def opts(self) -> DdpOptions:
        return self.options  # type: ignore[return-value]

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        if self.opts.node_rank >= self.opts.nnodes:
            return [("node_rank", f"{self.opts.node_rank} must be below nnodes ({self.opts.nnodes})")]
        return []

    def world_size(self) -> int:
        return self.opts.num_processes * self.opts.nnodes

    def launcher_args(self) -> list[str]:
        args = [f"--nproc_per_node={self.opts.num_processes}"]
        if self.opts.nnodes == 1:
            return [*args, "--standalone"]
        return [
            *args,
            f"--nnodes={self.opts.nnodes}",
            f"--node_rank={self.opts.node_rank}",
            f"--master_addr={self.opts.master_addr}",
            f"--master_port={self.opts.master_port}",
        ]

    def contribute(self, config: TrainConfig) -> Contribution:
        backend = self.opts.backend
        if backend == "auto":
            import torch

            backend = "nccl" if torch.cuda.is_available() else "gloo"
        return Contribution(
            sft_args={
                "ddp_backend": backend,
                "ddp_find_unused_parameters": self.opts.find_unused_parameters,
            }
        )
