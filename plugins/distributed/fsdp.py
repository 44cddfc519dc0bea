"""`fsdp`: PyTorch Fully Sharded Data Parallel through transformers/accelerate, FSDP2 by default.

    distributed:
      type: fsdp
      num_processes: 8
      version: 2                  # 1 is deprecated in transformers (removed in 5.20)
      sharding: full_shard        # shard_grad_op; FSDP1 also hybrid_shard, no_shard
      wrap_layer: null            # default: the model's own decoder-layer classes (_no_split_modules)
      cpu_offload: false
      activation_checkpointing: false
      checkpoint_state_dict: sharded   # checkpoints: sharded (fast) or full; the final save is always full
      cpu_ram_efficient_loading: false # only process 0 reads the checkpoint; FSDP copies its weights

Every process holds a shard of the weights, gradients and optimizer state. The final model is saved
consolidated, as one ordinary safetensors model (or PEFT adapter) that `from_pretrained` loads.

With `cpu_ram_efficient_loading` only process 0 reads the weights into CPU RAM; the others build the
model on the meta device (trainer.runtime.meta_loading) and receive process 0's weights when FSDP
shards the model (FSDP2: accelerate broadcasts them; FSDP1: sync_module_states, which needs a GPU).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plugins.distributed.launch import Launched, LaunchOptions, adapter, adapter_name, has_cuda
from trainer.api import Contribution, Sharding, TrainConfig


class FsdpOptions(LaunchOptions):
    version: Literal[1, 2] = Field(2, description="FSDP2 (fully_shard, per-parameter DTensor) or FSDP1")
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field(
        "full_shard",
        description="full_shard: weights, grads, optimizer sharded (ZeRO-3-like); shard_grad_op: grads "
        "and optimizer only (ZeRO-2-like); hybrid_shard: full_shard inside a node, replicated across "
        "nodes (FSDP1); no_shard: DDP-like (FSDP1)",
    )
    wrap_layer: list[str] | None = Field(
        None, description="Module class names wrapped as units (default: the model's decoder-layer classes)"
    )
    cpu_offload: bool = Field(False, description="Keep sharded weights and optimizer state in CPU RAM")
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each wrapped layer's activations (instead of gradient_checkpointing)",
    )
    checkpoint_state_dict: Literal["sharded", "full"] = Field(
        "sharded", description="Checkpoints as per-process shards or one full state dict on rank 0"
    )
    cpu_ram_efficient_loading: bool = Field(
        False,
        description="Only process 0 reads the checkpoint; the others build the model on the meta device "
        "and get process 0's weights when FSDP shards it (full-precision base, sft)",
    )


class Fsdp(Launched[FsdpOptions]):
    name = "fsdp"

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems = super().check(config)
        if self.options.version == 2 and self.options.sharding in ("hybrid_shard", "no_shard"):
            problems.append(
                (
                    "sharding",
                    f"'{self.options.sharding}' needs version: 1 (FSDP2 has full_shard and shard_grad_op)",
                )
            )
        if adapter_name(config) == "galore" or config.optimizer.startswith("galore_"):
            problems.append(
                "GaLore cannot run under fsdp: its optimizer projects whole weight matrices, which FSDP "
                "shards across processes (use distributed: ddp)"
            )
        if self.options.version == 1 and self.options.checkpoint_state_dict == "sharded" and config.resume:
            problems.append(
                (
                    "version",
                    "FSDP1's sharded checkpoints resume without the optimizer state (accelerate loads it "
                    "into an optimizer that has no state yet, so Adam restarts): resume with version: 2",
                )
            )
        if self.options.activation_checkpointing and config.gradient_checkpointing:
            problems.append(
                ("activation_checkpointing", "set this or the top-level gradient_checkpointing, not both")
            )
        if self.options.cpu_ram_efficient_loading:
            problems += [("cpu_ram_efficient_loading", p) for p in meta_loading_problems(config)]
        return problems

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems: list[str | tuple[str, str]] = []
        if self.options.version == 1 and adapter_name(config) not in (None, "full"):
            problems.append(
                (
                    "version",
                    "FSDP1 cannot save a PEFT adapter without a GPU (PyTorch's FSDP1 full-state-dict "
                    "gather crashes on CPU tensors): use version: 2",
                )
            )
        if self.options.version == 1 and self.options.checkpoint_state_dict == "full":
            problems.append(
                (
                    "checkpoint_state_dict",
                    "'full' needs a GPU under FSDP1 (PyTorch's FSDP1 full-state-dict gather crashes on CPU "
                    "tensors, SIGSEGV): use 'sharded', or version: 2",
                )
            )
        if self.options.version == 1 and self.options.cpu_ram_efficient_loading:
            problems.append(
                (
                    "cpu_ram_efficient_loading",
                    "FSDP1 copies process 0's weights to the others with sync_module_states, which "
                    "accelerate runs only on a GPU: use version: 2, or set cpu_ram_efficient_loading: false",
                )
            )
        if self.options.cpu_offload:
            problems.append(
                (
                    "cpu_offload",
                    "moves GPU weights to CPU RAM; this machine has no GPU, so they are there already "
                    "(and PyTorch's offload pins memory, which needs one): set cpu_offload: false",
                )
            )
        if problems and has_cuda():  # torch is asked only when an option needs a GPU
            return []
        return problems

    def sharding(self) -> Sharding:
        """full_shard = ZeRO-3; shard_grad_op = ZeRO-2 (whole weights held through forward and
        backward, and their shard besides: `resting_shard`); no_shard = DDP; hybrid_shard = full_shard
        within a node, replicated across nodes. cpu_offload keeps the sharded weights and the optimizer
        state in CPU RAM."""
        sharding = self.options.sharding
        return Sharding(
            weights=sharding in ("full_shard", "hybrid_shard"),
            gradients=sharding != "no_shard",
            optimizer=sharding != "no_shard",
            over=self.options.num_processes if sharding == "hybrid_shard" else self.world_size(),
            optimizer_offloaded=self.options.cpu_offload,
            weights_offloaded=self.options.cpu_offload,
            resting_shard=sharding == "shard_grad_op",
        )

    def fsdp_config(self) -> dict[str, object]:
        opts = self.options
        config: dict[str, object] = {
            "version": opts.version,
            "cpu_offload": opts.cpu_offload,
            "activation_checkpointing": opts.activation_checkpointing,
            "state_dict_type": "SHARDED_STATE_DICT"
            if opts.checkpoint_state_dict == "sharded"
            else "FULL_STATE_DICT",
        }
        if opts.version == 2:
            config["reshard_after_forward"] = opts.sharding == "full_shard"
        else:
            config["reshard_after_forward"] = opts.sharding
            # Broadcasting rank 0's weights needs a GPU in accelerate; every process loads them itself.
            config["sync_module_states"] = has_cuda()
        if opts.cpu_ram_efficient_loading:
            config["cpu_ram_efficient_loading"] = True
        if opts.wrap_layer:
            config["transformer_layer_cls_to_wrap"] = list(opts.wrap_layer)
        return config

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(
            sft_args={"fsdp": True, "fsdp_config": self.fsdp_config()},
            weights_from_process_0=self.options.cpu_ram_efficient_loading,
        )


READS_BASE_WEIGHTS = ("pissa", "olora", "loftq")
"""LoRA inits computed from the base weights, which the other processes do not have when they build
the adapter."""


def meta_loading_problems(config: TrainConfig) -> list[str]:
    """Why the processes other than 0 cannot build this run's model without its weights."""
    problems = []
    chosen = adapter(config)
    options = chosen.options if chosen is not None else None
    if (
        adapter_name(config) == "qlora"
        or getattr(options, "load_in_8bit", False)
        or config.model_quantization_config is not None
    ):
        problems.append(
            "needs a full-precision base: a quantized one is quantized by every process as it loads "
            "the weights, and accelerate copies only unquantized weights from process 0"
        )
    init = getattr(options, "init", None)
    if init in READS_BASE_WEIGHTS:
        problems.append(
            f"the adapter's init ({init}) is computed from the base weights, which only process 0 "
            "reads: use init: default or gaussian"
        )
    method = config.plugin("method")
    if method is not None and method.name != "sft":
        problems.append(
            f"method '{method.name}' builds its trainer (and reference model) in ways that need the "
            "weights in every process: use it with cpu_ram_efficient_loading: false"
        )
    return problems
