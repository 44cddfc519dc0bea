"""Loading the model without its weights on the processes that receive them from process 0.

When the distributed backend copies process 0's weights into every process as it shards the model
(FSDP's `cpu_ram_efficient_loading`; a plugin says so with `Contribution.weights_from_process_0`),
only process 0 reads the checkpoint. Every other process builds the same model from its config with
the parameters on the meta device (no storage, nothing read), while buffers are computed on the
CPU by the modules themselves: the non-persistent ones (rotary `inv_freq`) are in no state dict, so
no broadcast brings them, and the backend keeps each process's own.

transformers' `from_pretrained(device_map="meta")` is not used: in transformers 5 it still reads
every tensor of the checkpoint before moving it to meta, and its hub-kernels step fails on meta.

Before the trainer builds its optimizer, the trainable parameters get empty CPU storage
(`materialize_trainable`): accelerate maps the optimizer's parameters to the sharded ones by their
storage address, which is 0 for every meta tensor. The values are never read: the backend replaces
them with process 0's when it shards the model.
"""

from __future__ import annotations

from typing import Any

from trainer.config.errors import ConfigErrors, Problem
from trainer.config.schema import TrainConfig

SKELETON_KWARGS = ("attn_implementation", "num_labels")
"""from_pretrained arguments that shape the model and mean the same to from_config."""


def reads_weights(weights_from_process_0: bool) -> bool:
    """Whether this process reads the checkpoint: always, unless the backend broadcasts process 0's
    weights and this is another process."""
    if not weights_from_process_0:
        return True
    from accelerate import PartialState

    return PartialState().process_index == 0


def empty_model(auto: Any, config: TrainConfig, kwargs: dict[str, Any]) -> Any:
    """The model `auto.from_pretrained(config.base_model, **kwargs)` would build, its parameters on
    the meta device and its buffers computed; no weight is read. Ties the weights as
    from_pretrained does."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    unsupported = sorted(set(kwargs) - {"dtype", "config", *SKELETON_KWARGS})
    if unsupported:
        raise ConfigErrors(
            [
                Problem(
                    ("distributed", "cpu_ram_efficient_loading"),
                    f"cannot build the model without its weights with {', '.join(unsupported)} "
                    "(from the plugins' model arguments): set cpu_ram_efficient_loading: false",
                )
            ]
        )
    hf_config = kwargs.get("config")  # with overrides_of_model_config set (model_loading.load_kwargs)
    if hf_config is None:
        hf_config = AutoConfig.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code)
    if "num_labels" in kwargs:
        hf_config.num_labels = kwargs["num_labels"]
    dtype = kwargs.get("dtype", "auto")
    if dtype == "auto":  # from_pretrained's "auto": the config's dtype, else the checkpoint's
        dtype = getattr(hf_config, "dtype", None)
        if dtype is None:
            raise ConfigErrors(
                [
                    Problem(
                        ("distributed", "cpu_ram_efficient_loading"),
                        f"{config.base_model}'s config names no dtype, so only its weights tell which "
                        "one the other processes must build the model in: set cpu_ram_efficient_loading: "
                        "false",
                    )
                ]
            )
    extra = {key: kwargs[key] for key in ("attn_implementation",) if key in kwargs}
    with init_empty_weights(include_buffers=False):
        model = auto.from_config(hf_config, dtype=dtype, trust_remote_code=config.trust_remote_code, **extra)
    model.tie_weights()  # init_empty_weights gives a tied weight its own meta tensor
    return model


def materialize_trainable(model: Any) -> int:
    """Give every trainable parameter still on the meta device empty CPU storage of its shape
    (a parameter shared by two modules stays shared); returns how many were given."""
    import torch

    done: dict[int, Any] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta or not param.requires_grad:
                continue
            if id(param) not in done:
                empty = torch.empty_like(param, device="cpu")
                done[id(param)] = torch.nn.Parameter(empty, requires_grad=True)
            module.register_parameter(name, done[id(param)])
    return len(done)
