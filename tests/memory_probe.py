"""Measure the model state each process of a real run holds, for tests/test_memory_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/memory_probe.py CONFIG OUT

builds the run of CONFIG as the train command does (`plan`, the backend's process setup,
`build_trainer`), trains it (max_steps 1 is enough) and writes OUT/rank<N>.json per process: the bytes of
storage it holds, by part, at four moments of the first step:

* forward:  the end of the first forward pass (what is gathered then: FSDP SHARD_GRAD_OP keeps the
  whole model gathered from here through the backward pass; full_shard only its root unit);
* backward: the end of the backward pass, before anything frees gradients (DeepSpeed: before the engine's
  gradient reduction epilogue, after which ZeRO-1 drops the gradients outside its partition, and
  ZeRO-2/3 reduce the last bucket, whose tensors' gradients are still whole here; DDP and FSDP:
  before the optimizer step, their reductions done);
* reduced:  every gradient reduced, right before the optimizer steps (DeepSpeed: its ZeRO optimizer's
  `step`; DDP and FSDP: the same moment as `backward`);
* step:     right after the optimizer step (before `zero_grad`).

Parts: `weights` (every copy of the parameters this process stores: replicas, FSDP2 DTensor local
shards and gathered parameters, FSDP1 flat parameters, DeepSpeed ZeRO-3 `ds_tensor` partitions and the
persistent small parameters, the fp32 partitions a ZeRO optimizer steps), `gradients` (`.grad` of those,
DeepSpeed's flat gradient partitions), `optimizer` (the torch optimizer's per-parameter state: Adam's
moments and step), `buffers` (communication buckets: DeepSpeed's ipg buckets, DDP's reducer buckets),
`other` (any other tensor reachable from a DeepSpeed ZeRO optimizer, reported so that nothing is missed
silently).

Bytes are storage bytes (`untyped_storage().nbytes()`), each storage counted once: views into flat
buffers (FSDP1 flat parameters, DeepSpeed's flattened groups, FSDP2's reduce-scatter output) count the
buffer with its padding, and storage an FSDP unit freed (resized to 0) counts 0.

Private internals read (no public API says what a process holds; written against torch 2.13 and
DeepSpeed 0.19.8): FSDP2 `_get_fsdp_state()._fsdp_param_group.fsdp_params` (`sharded_param`,
`_unsharded_param`), FSDP1 `_handle.flat_param` (`_local_shard`, `_full_param_padded`), DDP
`_get_ddp_logging_data()["bucket_sizes"]`, and the attributes of DeepSpeed's ZeRO optimizer.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

PARTS = ("weights", "gradients", "optimizer", "buffers", "other")


class Held:
    """Tensors by part, each storage once (the first part that names it keeps it)."""

    def __init__(self) -> None:
        self.bytes = dict.fromkeys(PARTS, 0)
        self.seen: set[int] = set()

    def add(self, part: str, tensor: Any) -> None:
        if tensor is None or not torch.is_tensor(tensor):
            return
        tensor = _local(tensor)
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen or storage.nbytes() == 0:
            return
        self.seen.add(key)
        self.bytes[part] += storage.nbytes()


def _local(tensor: Any) -> Any:
    to_local = getattr(tensor, "to_local", None)  # FSDP2: a DTensor's local shard
    return to_local() if to_local is not None else tensor


def _inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer that holds the per-parameter state (under accelerate's and DeepSpeed's)."""
    while getattr(optimizer, "optimizer", None) is not None:  # accelerate's, then DeepSpeed's wrapper
        optimizer = optimizer.optimizer
    return optimizer


def _zero_optimizer(engine: Any) -> Any:
    """DeepSpeed's ZeRO optimizer (stages 1-3), or None."""
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is not None and type(optimizer).__module__.startswith("deepspeed.runtime.zero"):
        return optimizer
    return None


def _walk(obj: Any, path: str, found: list[tuple[str, Any]], seen: set[int], depth: int = 0) -> None:
    """Every tensor reachable from a DeepSpeed object's attributes, with its attribute path."""
    if torch.is_tensor(obj):
        found.append((path, obj))
        if obj.grad is not None:
            found.append((path + ".grad", obj.grad))
        return
    if depth > 6 or id(obj) in seen or isinstance(obj, (torch.nn.Module, str, bytes, int, float)):
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{path}[{key if isinstance(key, (str, int)) else '.'}]", found, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for i, value in enumerate(obj):
            _walk(value, f"{path}[{i}]", found, seen, depth + 1)
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            _walk(value, f"{path}.{key}", found, seen, depth + 1)


def _zero_part(path: str) -> str:
    """The part a tensor found in DeepSpeed's ZeRO optimizer belongs to, from its attribute path."""
    lowered = path.lower()
    if "ipg" in lowered or "bucket" in lowered:
        return "buffers"
    if "grad" in lowered and "groups_flat" not in lowered:
        return "gradients"
    if "groups_flat" in lowered or "fp32" in lowered or "partition_of" in lowered:
        return "weights"
    return "other"


def measure(trainer: Any) -> dict[str, int]:
    """The bytes this process holds now, by part."""
    model = trainer.model_wrapped
    held = Held()
    parameters = list(model.parameters())
    for p in parameters:
        held.add("weights", p)
        held.add("weights", getattr(p, "ds_tensor", None))  # ZeRO-3: this process's partition
    for module in model.modules():
        get_state = getattr(module, "_get_fsdp_state", None)  # FSDP2 unit: shards beside gathered
        group = get_state()._fsdp_param_group if get_state is not None else None
        for fsdp_param in group.fsdp_params if group is not None else ():
            held.add("weights", fsdp_param.sharded_param)
            held.add("weights", getattr(fsdp_param, "_unsharded_param", None))
        handle = getattr(module, "_handle", None)  # FSDP1 unit: its flat parameter, gathered or not
        flat = getattr(handle, "flat_param", None)
        if flat is not None:
            held.add("weights", flat)
            held.add("weights", getattr(flat, "_local_shard", None))
            held.add("weights", getattr(flat, "_full_param_padded", None))
            held.add("gradients", flat.grad)
    for p in parameters:
        held.add("gradients", p.grad)
    inner = _inner_optimizer(trainer.optimizer)
    stepped = [p for group in inner.param_groups for p in group["params"]]
    for p in stepped:  # DeepSpeed ZeRO: the fp32 partitions it steps (else the parameters again)
        held.add("weights", p)
    for p in stepped:
        held.add("gradients", p.grad)
    for state in inner.state.values():
        for value in state.values():
            held.add("optimizer", value)
    zero = _zero_optimizer(model)
    if zero is not None:
        found: list[tuple[str, Any]] = []
        _walk(zero, "zero", found, {id(inner)})
        for path, tensor in found:
            held.add(_zero_part(path), tensor)
    ddp_data = getattr(model, "_get_ddp_logging_data", None)
    if ddp_data is not None:  # DDP's reducer buckets: not reachable as tensors, sized in its log data
        sizes = str(ddp_data().get("bucket_sizes", "") or "")
        held.bytes["buffers"] += sum(int(s) for s in sizes.split(",") if s.strip())
    return held.bytes


class Probe:
    """Hooks the three moments of the first step into one trainer (a TrainerCallback besides)."""

    def __init__(self, trainer: Any, out: Path) -> None:
        from transformers import TrainerCallback

        self.trainer, self.out = trainer, out
        self.rank = int(os.environ.get("RANK", "0"))
        self.seen: dict[str, dict[str, int]] = {}
        probe = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                probe.hook()

            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                probe.take("backward")  # DeepSpeed has taken both already, inside its backward
                probe.take("reduced")

            def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                probe.take("step")
                probe.write()

        self.callback = Callback()

    def hook(self) -> None:
        engine = self.trainer.model_wrapped  # wrapped by now (accelerate prepared it)
        engine.register_forward_hook(lambda *_: self.take("forward"))
        reduce = getattr(engine, "allreduce_gradients", None)
        if reduce is not None:  # DeepSpeed: the step runs inside accelerate's backward

            def before_reduction(*args: Any, **kwargs: Any) -> Any:
                self.take("backward")
                return reduce(*args, **kwargs)

            engine.allreduce_gradients = before_reduction
        zero = _zero_optimizer(engine)
        if zero is not None:
            step = zero.step

            def before_step(*args: Any, **kwargs: Any) -> Any:
                self.take("reduced")
                return step(*args, **kwargs)

            zero.step = before_step

    def take(self, moment: str) -> None:
        if moment not in self.seen:  # the first time only
            self.seen[moment] = measure(self.trainer)

    def write(self) -> None:
        path = self.out / f"rank{self.rank}.json"
        path.write_text(json.dumps(self.seen, indent=1), encoding="utf-8")


def main(argv: list[str]) -> None:
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import build_trainer, plan
    from trainer.runtime.run import end_processes, exit_process

    config, out = argv
    resolved = load_config(config)
    merged, args = plan(resolved)
    _ = args.distributed_state  # starts the process group, as the train command does
    resolved.distributed.plugin.init_processes()
    built = build_trainer(resolved, (merged, args))
    probe = Probe(built.trainer, Path(out))
    built.trainer.add_callback(probe.callback)
    built.trainer.train()
    end_processes(finished=True)
    exit_process(0)


if __name__ == "__main__":
    main(sys.argv[1:])
