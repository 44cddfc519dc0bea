"""`deepspeed`: DeepSpeed ZeRO stages 1-3 through transformers' integration.

    distributed:
      type: deepspeed
      num_processes: 8
      stage: 3                      # 1: optimizer state sharded; 2: + gradients; 3: + weights
      offload_optimizer: none       # cpu | nvme (nvme_path)
      offload_param: none           # cpu | nvme, stage 3 only
      config_file: null             # your own DeepSpeed JSON instead; "auto" values are filled in

The DeepSpeed JSON is generated from these keys with batch size, accumulation, clipping and
precision left "auto" (transformers fills them from the config). Under ZeRO-3 the model is created
already partitioned (zero.Init) and the final save gathers the 16-bit weights into one ordinary
safetensors model (or the whole PEFT adapter). The JSON DeepSpeed ran with, every "auto" filled in, is
written to output_dir/deepspeed_config.json when training starts.

With offload_optimizer, accelerate replaces the run's optimizer with DeepSpeed's CPU Adam, built from
the learning rate and weight decay alone. That is the same optimizer only for AdamW with the default
betas and epsilon; for any other optimizer (or AdamW with its own betas, epsilon or optim_args) the
generated JSON sets zero_force_ds_cpu_optimizer: false, so the configured optimizer itself steps the
offloaded weights (slower than CPU Adam, but the training the config asks for, never silently Adam).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import Field

from plugins.distributed.launch import (
    Launched,
    LaunchOptions,
    adapter,
    adapter_name,
    has_cuda,
)
from trainer.api import OPTIMIZERS, Contribution, Sharding, TrainConfig

AUTO: Literal["auto"] = "auto"
CPU_ADAM_KEEPS = ("adamw_torch", "adamw_torch_fused")
"""Optimizers that DeepSpeed's CPU Adam reproduces (AdamW) when offloading swaps it in."""
ADAM_SETTINGS = ("adam_beta1", "adam_beta2", "adam_epsilon")
"""What the swap does not pass on (only lr and weight decay): they must keep transformers' defaults."""


def cpu_adam_would_differ(config: TrainConfig) -> bool:
    """Whether swapping in DeepSpeed's CPU Adam (offload_optimizer) would change the optimizer."""
    from dataclasses import fields

    from transformers import TrainingArguments

    args = config.trainer_args or {}
    if config.optimizer not in CPU_ADAM_KEEPS or args.get("optim_args"):
        return True
    defaults = {f.name: f.default for f in fields(TrainingArguments) if f.name in ADAM_SETTINGS}
    return any(args.get(key, default) != default for key, default in defaults.items())


class DeepSpeedOptions(LaunchOptions):
    stage: Literal[0, 1, 2, 3] = Field(
        2, description="ZeRO stage: 1 optimizer state, 2 + gradients, 3 + weights"
    )
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        "none", description="Where optimizer state lives"
    )
    offload_param: Literal["none", "cpu", "nvme"] = Field("none", description="Where weights live (stage 3)")
    nvme_path: str | None = Field(None, description="Directory for nvme offload")
    overlap_comm: bool = Field(True, description="Overlap gradient reduction with backward")
    contiguous_gradients: bool = Field(
        True, description="Copy gradients into one buffer as they are produced"
    )
    reduce_bucket_size: int | Literal["auto"] = Field(AUTO, description="Elements per reduction bucket")
    allgather_bucket_size: int | None = Field(None, gt=0, description="Elements per all-gather (stages 1-2)")
    stage3_prefetch_bucket_size: int | Literal["auto"] = Field(AUTO, description="Stage 3 prefetch elements")
    stage3_param_persistence_threshold: int | Literal["auto"] = Field(
        AUTO, description="Stage 3: parameters smaller than this stay whole on every process"
    )
    config_file: str | None = Field(None, description="A DeepSpeed JSON to use instead of these keys")


class DeepSpeed(Launched[DeepSpeedOptions]):
    name = "deepspeed"
    requires = {"deepspeed": "deepspeed"}

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems = super().check(config)
        opts = self.options
        if opts.offload_param != "none" and opts.stage != 3:
            problems.append(
                ("offload_param", f"offloads weights, which only stage 3 shards (stage is {opts.stage})")
            )
        if "nvme" in (opts.offload_param, opts.offload_optimizer) and not opts.nvme_path:
            problems.append(("nvme_path", "nvme offload needs nvme_path"))
        if opts.offload_optimizer != "none" and opts.stage == 0:
            problems.append(("offload_optimizer", "needs stage 1, 2 or 3"))
        if adapter_name(config) == "galore" or config.optimizer.startswith("galore_"):
            problems.append(
                "GaLore cannot run under deepspeed: ZeRO wraps and partitions the optimizer state that "
                "GaLore's projections work on (use distributed: ddp)"
            )
        if opts.offload_optimizer != "none" and OPTIMIZERS[config.optimizer].low_bit_state:
            problems.append(
                (
                    "offload_optimizer",
                    f"offloading runs DeepSpeed's own CPU Adam; it cannot offload '{config.optimizer}' "
                    "(use optimizer: adamw_torch, or offload_optimizer: none)",
                )
            )
        chosen_adapter = adapter(config)
        if opts.stage == 3 and chosen_adapter is not None and chosen_adapter.quantized_bits() == 8:
            problems.append(
                ("stage", "ZeRO-3 cannot partition an 8-bit (load_in_8bit) base model: use stage 2")
            )
        if opts.config_file is not None and os.path.exists(str(opts.config_file)):
            problem = _config_file_problem(opts.config_file)
            if problem:
                problems.append(("config_file", problem))
        return problems

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        problems = super().check_machine(config)
        path = self.options.config_file
        if path is not None and not os.path.exists(str(path)):  # the training machine's file
            problems.append(("config_file", f"{path} does not exist"))
        return problems

    def deepspeed_config_file(self) -> dict[str, Any]:
        with open(str(self.options.config_file), encoding="utf-8") as handle:
            loaded: dict[str, Any] = json.load(handle)
        return loaded

    def deepspeed_config(self, config: TrainConfig) -> dict[str, Any]:
        opts = self.options
        if opts.config_file is not None:
            return self.deepspeed_config_file()
        zero: dict[str, Any] = {
            "stage": opts.stage,
            "overlap_comm": opts.overlap_comm,
            "contiguous_gradients": opts.contiguous_gradients,
            "reduce_bucket_size": opts.reduce_bucket_size,
        }
        if opts.allgather_bucket_size is not None:
            zero["allgather_bucket_size"] = opts.allgather_bucket_size
        for key, device in (
            ("offload_optimizer", opts.offload_optimizer),
            ("offload_param", opts.offload_param),
        ):
            if device != "none":
                zero[key] = {"device": device, "pin_memory": True}
                if device == "nvme":
                    zero[key]["nvme_path"] = opts.nvme_path
        if opts.stage == 3:
            zero["stage3_prefetch_bucket_size"] = opts.stage3_prefetch_bucket_size
            zero["stage3_param_persistence_threshold"] = opts.stage3_param_persistence_threshold
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        generated: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": AUTO,
            "gradient_accumulation_steps": AUTO,
            "train_batch_size": AUTO,
            "gradient_clipping": AUTO,
            "bf16": {"enabled": AUTO},
            "fp16": {"enabled": AUTO},
            "zero_optimization": zero,
        }
        if opts.offload_optimizer != "none" and cpu_adam_would_differ(config):
            generated["zero_force_ds_cpu_optimizer"] = False  # run the configured optimizer itself
        return generated

    def sharding(self) -> Sharding:
        opts = self.options
        if opts.config_file is not None:
            zero = self.deepspeed_config_file().get("zero_optimization", {})
            stage = int(zero.get("stage", 0))
            offload_optimizer = (zero.get("offload_optimizer") or {}).get("device", "none")
            offload_param = (zero.get("offload_param") or {}).get("device", "none")
        else:
            stage, offload_optimizer, offload_param = opts.stage, opts.offload_optimizer, opts.offload_param
        return Sharding(
            weights=stage >= 3,
            gradients=stage >= 2,
            optimizer=stage >= 1,
            over=self.world_size(),
            optimizer_offloaded=offload_optimizer != "none",
            weights_offloaded=offload_param != "none",
            fp32_partitions=stage >= 1,  # the ZeRO optimizer's (stage 0 has none; not measured)
        )

    def init_processes(self) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if has_cuda() else "gloo")

    def contribute(self, config: TrainConfig) -> Contribution:
        return Contribution(
            sft_args={"deepspeed": self.deepspeed_config(config)}, callbacks=[_write_filled_config()]
        )


def _config_file_problem(path: str) -> str | None:
    """Why `path` is not a DeepSpeed JSON config that can be read, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        return f"cannot read {path}: {err.strerror}"
    except ValueError as err:  # a NUL in the path, or bytes that are not UTF-8
        return f"cannot read {path}: {err}"
    try:
        loaded = json.loads(text)
    except ValueError as err:
        return f"{path} is not valid JSON: {err}"
    if not isinstance(loaded, dict):
        return f"{path} must hold a JSON object (DeepSpeed's config), not a {type(loaded).__name__}"
    return None


CONFIG_NAME = "deepspeed_config.json"


def _write_filled_config() -> Any:
    """A callback that writes the DeepSpeed config as run (transformers has filled the "auto" values
    by the time training begins) to output_dir, from the main process."""
    import os

    from transformers import TrainerCallback

    class WriteDeepSpeedConfig(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero or args.hf_deepspeed_config is None:
                return
            path = os.path.join(args.output_dir, CONFIG_NAME)
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                json.dump(args.hf_deepspeed_config.config, handle, indent=2, default=str)
            os.replace(path + ".tmp", path)

    return WriteDeepSpeedConfig()
