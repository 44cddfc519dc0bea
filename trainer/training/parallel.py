"""What the processes really run, read back from accelerate and the wrapped model: the backend
(DDP, FSDP1/2, DeepSpeed ZeRO stage) and the share of the weights this process holds. Printed when
training starts, so a backend that silently fell back (FSDP on CPU used to become DDP) shows."""

from __future__ import annotations

from typing import Any


def backend_name(trainer: Any) -> str:
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        mode = plugin.reshard_after_forward  # FSDP1: a ShardingStrategy; FSDP2: a bool
        sharding = mode.name.lower() if hasattr(mode, "name") else "full_shard" if mode else "shard_grad_op"
        return f"FSDP{plugin.fsdp_version} ({sharding})"
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.NO:
        return "one process"
    return "DDP"


def held_share(model: Any) -> float:
    """Elements of the weights stored on this process / elements of the whole model."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp1_units = FullyShardedDataParallel.fsdp_modules(model)
    if fsdp1_units:  # FSDP1: each unit's FlatParameter holds this process's slice
        # torch 2.13 FSDP1 `_handle.flat_param` / `_unpadded_unsharded_size`: no public API says what
        # one process holds of a FlatParameter
        flat = [unit._handle.flat_param for unit in fsdp1_units if unit._handle is not None]
        held = sum(int(p.numel()) for p in flat)
        whole = sum(int(p._unpadded_unsharded_size.numel()) for p in flat)
    else:
        sizes = [_sizes(param) for param in model.parameters()]
        held, whole = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
    return held / whole if whole else 1.0


def _sizes(param: Any) -> tuple[int, int]:
    if hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3: an empty placeholder plus its partition
        return int(param.ds_tensor.numel()), int(param.ds_numel)
    to_local = getattr(param, "to_local", None)
    if to_local is not None:  # FSDP2: a DTensor shard
        return int(to_local().numel()), int(param.numel())
    return int(param.numel()), int(param.numel())


def describe(trainer: Any) -> str:
    processes = trainer.accelerator.num_processes
    if processes == 1:
        return "parallel: one process"
    share = held_share(trainer.model_wrapped)
    return (
        f"parallel: {backend_name(trainer)} on {processes} process(es); "
        f"process 0 holds {share:.0%} of the weights"
    )


def report_at_start(trainer: Any, log: Any) -> None:
    """Log `describe(trainer)` on the main process once the model is wrapped (training starts)."""
    from transformers import TrainerCallback

    class ParallelReport(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                log(describe(trainer))

    trainer.add_callback(ParallelReport())
