"""FSDP without a GPU: what accelerate lacks for `distributed: fsdp` on CPU processes (gloo).

accelerate (1.16) turns FSDP on only for accelerator devices: on CPU its state stays MULTI_CPU and
the model is silently wrapped in plain DDP. PyTorch's FSDP1 and FSDP2 themselves train on CPU with
gloo, so after the Accelerator is built this module switches its state to FSDP with the plugin
transformers made from `fsdp_config`, as accelerate does on a GPU. PyTorch's FSDP1 full-state-dict
gather crashes (SIGSEGV) on CPU tensors, so the final FSDP1 save on CPU gathers the weights with
`summon_full_params` instead. Nothing here runs when CUDA is available.
"""

from __future__ import annotations

from typing import Any


def engage(trainer: Any) -> None:
    """Make a CPU run that asked for FSDP (`fsdp_plugin_args`) really run FSDP."""
    import torch
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if trainer.args.fsdp_plugin_args is None or trainer.is_fsdp_enabled:
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    # FSDP1 checks that `device_id` is the parameters' own device: "cpu", not accelerate's "cpu:0".
    cpu = torch.device("cpu")
    state.device = cpu
    PartialState._shared_state.update(distributed_type=DistributedType.FSDP, device=cpu)
    trainer.is_fsdp_enabled = True


def needs_fsdp1_gather(trainer: Any) -> bool:
    import torch

    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    return plugin is not None and plugin.fsdp_version == 1 and not torch.cuda.is_available()


def fsdp1_full_state_dict(trainer: Any) -> dict[str, Any]:
    """Every process joins; returns the whole, unsharded weights (on every process)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.model_wrapped
    wrappers = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")

    def clean(name: str) -> str:
        for wrapper in wrappers:
            name = name.replace(wrapper, "")
        return name

    with FSDP.summon_full_params(model, writeback=False):
        tensors = {clean(n): p.detach().clone() for n, p in model.named_parameters()}
        for prefix, module in model.named_modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    tensors[clean(f"{prefix}.{name}" if prefix else name)] = buffer.detach().clone()
    return tensors
