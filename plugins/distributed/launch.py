"""Process layout shared by the multi-process backends (ddp, fsdp, deepspeed): how many processes
per node, how many nodes, and where node 0 listens. The train command hands these to torchrun when
it starts the processes itself; under torchrun or accelerate launch the launcher's layout is used.

Each key can also come from the environment a cluster script sets (torchrun's own names, with or
without its PET_ prefix): NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT. A value given
on the command line (`distributed.node_rank=1`) wins over the environment, which wins over the file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import Field, ValidationError

from trainer.api import Adapter, ConfigErrors, Distributed, Options, Problem, TrainConfig


class LaunchOptions(Options):
    num_processes: int = Field(2, gt=0, description="Processes per node (usually one per GPU)")
    nnodes: int = Field(1, gt=0, description="Number of machines")
    node_rank: int = Field(0, ge=0, description="This machine's rank (0 .. nnodes-1)")
    master_addr: str = Field("127.0.0.1", description="Address of node 0 (nnodes > 1)")
    master_port: int = Field(29500, gt=0, lt=65536, description="Port on node 0 (nnodes > 1)")


LaunchOptionsT = TypeVar("LaunchOptionsT", bound=LaunchOptions)


class Launched(Distributed[LaunchOptionsT]):
    """Base of the backends that run several processes."""

    Options = LaunchOptions

    def processes_per_node(self) -> int:
        return self.options.num_processes

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        bad_rank = node_rank_problem(self.options)
        if bad_rank:
            problems.append(("node_rank", bad_rank))
        for key, backend in (("deepspeed", "deepspeed"), ("fsdp", "fsdp")):
            if config.trainer_args.get(key) and self.name != backend:
                problems.append(
                    f"trainer_args.{key} and distributed: {self.name} cannot run together; "
                    f"use distributed: {backend} for {backend}"
                )
        return problems

    def world_size(self) -> int:
        return self.options.num_processes * self.options.nnodes

    def launcher_args(self) -> list[str]:
        launch = self.options
        args = [f"--nproc_per_node={launch.num_processes}"]
        if launch.nnodes == 1:
            return [*args, "--standalone"]
        return [
            *args,
            f"--nnodes={launch.nnodes}",
            f"--node_rank={launch.node_rank}",
            f"--master_addr={launch.master_addr}",
            f"--master_port={launch.master_port}",
        ]

    def apply_environment(self, environ: Mapping[str, str], given: set[str]) -> list[str]:
        """Take launch keys from `environ` except those in `given` (set on the command line);
        returns one note per key taken. Raises ConfigErrors for a value the options refuse."""
        updates: dict[str, Any] = {}
        notes = []
        for key, names in ENVIRONMENT.items():
            found = next(((name, environ[name]) for name in names if environ.get(name)), None)
            if found is None or key in given:
                continue
            updates[key] = found[1]
            notes.append(f"{key}={found[1]} (from ${found[0]})")
        if not updates:
            return []
        try:
            options = type(self.options).model_validate({**self.options.model_dump(), **updates})
        except ValidationError as err:
            problems = [
                Problem(("distributed", *map(str, e["loc"])), f"{e['msg']} (from the environment)")
                for e in err.errors()
            ]
            raise ConfigErrors(problems) from None
        bad_rank = node_rank_problem(options)
        if bad_rank:
            raise ConfigErrors([Problem(("distributed", "node_rank"), f"{bad_rank} (from the environment)")])
        self.options = options
        return notes


def node_rank_problem(launch: LaunchOptions) -> str | None:
    if launch.node_rank < launch.nnodes:
        return None
    return f"{launch.node_rank} must be below nnodes ({launch.nnodes})"


ENVIRONMENT = {
    "num_processes": ("PET_NPROC_PER_NODE", "NPROC_PER_NODE"),
    "nnodes": ("PET_NNODES", "NNODES"),
    "node_rank": ("PET_NODE_RANK", "NODE_RANK"),
    "master_addr": ("PET_MASTER_ADDR", "MASTER_ADDR"),
    "master_port": ("PET_MASTER_PORT", "MASTER_PORT"),
}
"""Environment variables each launch key is read from (first found wins), as torchrun names them."""


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def adapter(config: TrainConfig) -> Adapter[Any] | None:
    """The run's adapter plugin (None when it did not resolve)."""
    chosen = config.plugin("adapter")
    return chosen if isinstance(chosen, Adapter) else None


def adapter_name(config: TrainConfig) -> str | None:
    chosen = adapter(config)
    return chosen.name if chosen is not None else None
