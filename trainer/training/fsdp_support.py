"""What accelerate (1.16) lacks or gets wrong for `distributed: fsdp`, mended after the Accelerator is
built (`engage`) and at the final save.

- FSDP1's sharding (GPU and CPU): accelerate fills the deprecated `sharding_strategy` with FULL_SHARD
  and then prefers it to `reshard_after_forward`, where transformers puts the configured strategy, so
  shard_grad_op / hybrid_shard / no_shard silently ran as full_shard. The plugin gets the strategy.
- CPU only: accelerate turns FSDP on only for accelerator devices: on CPU its state stays MULTI_CPU
  and the model is silently wrapped in plain DDP. PyTorch's FSDP1 and FSDP2 themselves train on CPU
  with gloo, so after the Accelerator is built this module switches its state to FSDP with the plugin
  transformers made from `fsdp_config`, as accelerate does on a GPU. PyTorch's FSDP1 full-state-dict
  gather crashes (SIGSEGV) on CPU tensors, so the final FSDP1 save on CPU gathers the weights with
  `summon_full_params` instead.
"""

from __future__ import annotations

from typing import Any


def engage(trainer: Any) -> None:
    """Make a run that asked for FSDP (`fsdp_plugin_args`) run the FSDP it asked for."""
    if trainer.args.fsdp_plugin_args is None:
        return
    if not trainer.is_fsdp_enabled:
        _engage_on_cpu(trainer)
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None and plugin.fsdp_version == 1:
        from torch.distributed.fsdp import ShardingStrategy

        wanted = plugin.reshard_after_forward  # a ShardingStrategy (or its name) under FSDP1
        if isinstance(wanted, str):
            wanted = ShardingStrategy[wanted.upper()]
        if isinstance(wanted, ShardingStrategy):
            plugin.sharding_strategy = wanted


def _engage_on_cpu(trainer: Any) -> None:
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    # FSDP1 checks that `device_id` is the parameters' own device: "cpu", not accelerate's "cpu:0".
    cpu = torch.device("cpu")
    state.device = cpu
    # accelerate 1.16 PartialState._shared_state: its public state is read-only, and every later
    # PartialState() must see FSDP on CPU too
    PartialState._shared_state.update(distributed_type=DistributedType.FSDP, device=cpu)
    trainer.is_fsdp_enabled = True


def needs_fsdp1_gather(trainer: Any) -> bool:
    import torch

    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return plugin is not None and plugin.fsdp_version == 1 and not torch.cuda.is_available()


def fsdp1_full_state_dict(trainer: Any) -> dict[str, Any]:
    """Every process joins; returns the whole, unsharded weights (on every process)."""
    from contextlib import nullcontext

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy

    model = trainer.model_wrapped
    whole = trainer.accelerator.state.fsdp_plugin.sharding_strategy == ShardingStrategy.NO_SHARD
    # torch 2.13 FSDP1 / checkpoint-wrapper module-name prefixes, removed to get the model's own names
    wrappers = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")

    def clean(name: str) -> str:
        for wrapper in wrappers:
            name = name.replace(wrapper, "")
        return name

    # no_shard keeps whole weights on every process (and summon_full_params fails on it)
    with nullcontext() if whole else FSDP.summon_full_params(model, writeback=False):
        tensors = {clean(n): p.detach().clone() for n, p in model.named_parameters()}
        for prefix, module in model.named_modules():
            # torch 2.13 Module._buffers / _non_persistent_buffers_set: state_dict() would run the
            # FSDP1 full-state-dict hooks that crash on CPU
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    tensors[clean(f"{prefix}.{name}" if prefix else name)] = buffer.detach().clone()
    return tensors
