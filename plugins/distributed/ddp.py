"""`ddp`: PyTorch DistributedDataParallel; the train command starts the processes with torchrun.

    distributed:
      type: ddp
      num_processes: 2          # per node
      nnodes: 1                 # >1: run the same command on every node with its node_rank
      backend: auto             # nccl on CUDA, gloo on CPU

Started under `torchrun` or `accelerate launch` already, the launcher's processes are used as they are.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from plugins.distributed.launch import Launched, LaunchOptions, has_cuda
from trainer.api import Contribution, TrainConfig


class DdpOptions(LaunchOptions):
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on GPU, else gloo")
    find_unused_parameters: bool = False
    bucket_cap_mb: int | None = Field(None, gt=0, description="Gradient bucket size (PyTorch default 25)")


class Ddp(Launched[DdpOptions]):
    name = "ddp"

    def contribute(self, config: TrainConfig) -> Contribution:
        opts = self.options
        backend = opts.backend if opts.backend != "auto" else ("nccl" if has_cuda() else "gloo")
        args: dict[str, Any] = {
            "ddp_backend": backend,
            "ddp_find_unused_parameters": opts.find_unused_parameters,
        }
        if opts.bucket_cap_mb is not None:
            args["ddp_bucket_cap_mb"] = opts.bucket_cap_mb
        return Contribution(sft_args=args)
