"""Convert an Axolotl config into ours, accounting for every key.

A key is *carried* by a rule below (renamed or reshaped into our config, with Axolotl's defaults
written out where ours differ), or else judged from the inventory (keys.yaml): a null placeholder,
an off switch or a value equal to Axolotl's default is *dropped* with a note, so is a key the
inventory marks as speed/memory-only, logging or hub; one that changes what is trained without a
counterpart here is *refused*. A key Axolotl does not know is dropped: Axolotl ignores unknown keys
silently, so it had no effect there either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config.yaml_lines import SourceMap, load_yaml

INVENTORY = Path(__file__).with_name("keys.yaml")

SAME = {  # Axolotl key -> ours, same meaning and values
    "base_model": "base_model",
    "trust_remote_code": "trust_remote_code",
    "sequence_len": "sequence_len",
    "sample_packing": "sample_packing",
    "eval_sample_packing": "eval_sample_packing",
    "pad_to_sequence_len": "pad_to_sequence_len",
    "micro_batch_size": "micro_batch_size",
    "eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "learning_rate": "learning_rate",
    "num_epochs": "num_epochs",
    "max_steps": "max_steps",
    "warmup_ratio": "warmup_ratio",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps",
    "dataset_prepared_path": "dataset_prepared_path",
    "output_dir": "output_dir",
    "save_total_limit": "save_total_limit",
    "save_steps": "save_steps",
    "eval_steps": "eval_steps",
    "save_strategy": "save_strategy",
    "eval_strategy": "eval_strategy",
    "load_best_model_at_end": "load_best_model_at_end",
    "metric_for_best_model": "metric_for_best_model",
    "loss_watchdog_threshold": "loss_watchdog_threshold",
    "loss_watchdog_patience": "loss_watchdog_patience",
    "neftune_noise_alpha": "neftune_noise_alpha",
    "noisy_embedding_alpha": "neftune_noise_alpha",
    "group_by_length": "group_by_length",
    "bf16": "bf16",
    "fp16": "fp16",
    "tf32": "tf32",
    "tokenizer_config": "tokenizer",
    "dataset_processes": "dataset_num_proc",
    "dataset_num_proc": "dataset_num_proc",
    "tokens": "tokens",
    "evaluation_strategy": "eval_strategy",
}
TRAINER_ARGS = {"adam_beta1": "adam_beta1", "adam_beta2": "adam_beta2", "adam_epsilon": "adam_epsilon",
                "adam_beta3": "adam_beta3"}  # fmt: skip
"""Axolotl keys that are TrainingArguments fields with no key of ours: carried under trainer_args."""
FILTERS = {"min_sample_len": "min_length", "dataset_exact_deduplication": "dedupe"}

DEFAULTS_THAT_DIFFER = {  # written out when the Axolotl config leaves them unset
    "sequence_len": (512, "Axolotl's default sequence_len (ours is 2048)"),
    "bf16": ("auto", "Axolotl's default bf16: auto"),
    "tf32": ("auto", "Axolotl's default tf32: auto"),
    "optimizer": ("adamw_torch_fused", "Axolotl's default optimizer"),
    "output_dir": ("./model-out", "Axolotl's default output_dir"),
}

ATTENTION = {"flash_attention_2": "flash_attention_2", "flash_attention_3": "flash_attention_3",
             "sdpa": "sdpa", "eager": "eager", "flex_attention": "flex_attention"}  # fmt: skip
HUB_ATTENTION = (("flash-attn3", "flash_attention_3"), ("flash_attn3", "flash_attention_3"),
                 ("flash-attn", "flash_attention_2"), ("flash_attn", "flash_attention_2"))  # fmt: skip
"""Hub kernels (`kernels-community/...`) named by attn_implementation: the same exact attention."""
ATTENTION_SWITCHES = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa",
                      "eager_attention": "eager", "flex_attention": "flex_attention"}  # fmt: skip
LIGER = {"liger_rms_norm": "rms_norm", "liger_rope": "rope", "liger_glu_activation": "swiglu",
         "liger_layer_norm": "layer_norm", "liger_cross_entropy": "cross_entropy"}  # fmt: skip
TRACKERS = {  # Axolotl key -> (report_to, environment variable or None, or "run_name")
    "wandb_project": ("wandb", "WANDB_PROJECT"),
    "wandb_entity": ("wandb", "WANDB_ENTITY"),
    "wandb_watch": ("wandb", "WANDB_WATCH"),
    "wandb_log_model": ("wandb", "WANDB_LOG_MODEL"),
    "wandb_run_id": ("wandb", "WANDB_RUN_ID"),
    "wandb_mode": ("wandb", "WANDB_MODE"),
    "wandb_name": ("wandb", "run_name"),
    "trackio_project_name": ("trackio", "TRACKIO_PROJECT"),
    "trackio_space_id": ("trackio", "TRACKIO_SPACE_ID"),
    "trackio_run_name": ("trackio", "run_name"),
    "swanlab_project": ("swanlab", "SWANLAB_PROJECT"),
    "swanlab_experiment_name": ("swanlab", "run_name"),
    "mlflow_tracking_uri": ("mlflow", "MLFLOW_TRACKING_URI"),
    "mlflow_experiment_name": ("mlflow", "MLFLOW_EXPERIMENT_NAME"),
    "mlflow_run_name": ("mlflow", "run_name"),
}
TRACKER_SWITCHES = {"wandb": "wandb_project", "trackio": "trackio_project_name",
                    "swanlab": "swanlab_project", "mlflow": "mlflow_tracking_uri"}  # fmt: skip
DATASET_TYPES = {"alpaca": "alpaca", "alpaca:instruct": "alpaca", "alpaca_instruct": "alpaca",
                 "chat_template": "chat_template", "completion": "completion",
                 "input_output": "input_output"}  # fmt: skip
TEMPLATES = {"tokenizer_default": "tokenizer_default", "chatml": "chatml", "llama3": "llama3",
             "jinja": "jinja"}  # fmt: skip
"""Axolotl chat templates whose text ours reproduces (others: pass the Jinja with chat_template: jinja)."""
DATASET_SAME = {"path": "path", "split": "split", "name": "name", "data_files": "data_files",
                "revision": "revision", "field_messages": "field_messages", "roles": "roles",
                "roles_to_train": "roles_to_train", "train_on_eos": "train_on_eos",
                "message_property_mappings": "message_property_mappings",
                "message_field_training": "message_field_training", "eot_tokens": "eot_tokens",
                "chat_template_jinja": "chat_template_jinja", "field": "field"}  # fmt: skip
GLOBAL_DATASET_KEYS = ("chat_template", "chat_template_jinja", "eot_tokens", "default_system_message",
                       "train_on_inputs")  # fmt: skip
LORA_KEYS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
             "lora_modules_to_save": "modules_to_save", "peft_use_dora": "use_dora",
             "peft_use_rslora": "use_rslora", "peft_layers_to_transform": "layers_to_transform",
             "loraplus_lr_ratio": "loraplus_lr_ratio"}  # fmt: skip
FSDP_MECHANICS = ("auto_wrap_policy", "sync_module_states", "use_orig_params", "cpu_ram_efficient_loading",
                  "limit_all_gathers", "backward_prefetch", "forward_prefetch")  # fmt: skip
"""fsdp_config keys about how wrapping and loading are done: no effect on what trains."""
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
MEMORY_ONLY_PLUGINS = {
    "axolotl.integrations.kernels.KernelsPlugin": (
        "Hugging Face hub kernels swapped in for speed (the same computation)"
    ),
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin": (
        "Cut Cross Entropy computes the same loss without materialising the logits (memory only); "
        "TRL's SFTTrainer already computes it through a chunked LM head"
    ),
}


@functools.cache
def inventory() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(INVENTORY.read_text(encoding="utf-8"))
    return loaded


@dataclass
class Entry:
    """What happened to one Axolotl key."""

    key: str
    where: str
    status: str  # "carried" | "dropped" | "refused"
    note: str


@dataclass
class Conversion:
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[Any, ...], str] = field(default_factory=dict)
    """Our key path -> the Axolotl key(s) its value came from (the comment beside it)."""
    entries: list[Entry] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables the run needs (a tracker's project, entity, ...)."""

    def of(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]


class ConvertError(Exception):
    """The file cannot be read as an Axolotl config at all."""


class _Converter:
    def __init__(self, data: dict[str, Any], source: SourceMap, file: str):
        self.given, self.source, self.file = data, source, file
        self.out = Conversion(source=file)
        self.done: set[str] = set()

    # ---- accounting ---------------------------------------------------------------------------

    def where(self, *path: Any) -> str:
        return self.source.where(tuple(path)) or self.file

    def _entry(self, key: str, status: str, note: str, path: tuple[Any, ...] | None = None) -> None:
        self.done.add(key)
        self.out.entries.append(Entry(key, self.where(*(path or (key,))), status, note))

    def carry(self, key: str, ours: tuple[Any, ...], value: Any, note: str = "") -> None:
        self.put(ours, value, key)
        self._entry(key, "carried", f"-> {_dotted(ours)}" + (f" ({note})" if note else ""))

    def put(self, ours: tuple[Any, ...], value: Any, origin: str) -> None:
        target: Any = self.out.config
        for part in ours[:-1]:
            target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
        target[ours[-1]] = value
        previous = self.out.origins.get(ours)
        self.out.origins[ours] = f"{previous}, {origin}" if previous and origin not in previous else origin

    def drop(self, key: str, note: str, path: tuple[Any, ...] | None = None) -> None:
        self._entry(key, "dropped", note, path)

    def refuse(self, key: str, note: str, path: tuple[Any, ...] | None = None) -> None:
        self._entry(key, "refused", note, path)

    def has(self, key: str) -> bool:
        return self.given.get(key) is not None

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> Conversion:
        for handler in (
            self.simple_keys,
            self.adapter,
            self.attention,
            self.kernels,
            self.trackers,
            self.cadence,
            self.distributed,
            self.datasets,
            self.tokens_and_resume,
            self.optimizer_and_schedule,
            self.defaults,
        ):
            handler()
        for key in self.given:
            if key not in self.done:
                self.judge(key, self.given[key], inventory()["keys"].get(key))
        return self.out

    def judge(
        self, key: str, value: Any, info: dict[str, Any] | None, path: tuple[Any, ...] | None = None
    ) -> None:
        """The inventory's verdict on a key no rule carried."""
        if info is None:
            self.drop(
                key,
                "not an Axolotl key: Axolotl ignores unknown keys silently, so it had no effect there",
                path,
            )
        elif value is None:
            self.drop(key, "unset (a null placeholder)", path)
        elif info.get("default") is not None and value == info.get("default"):
            self.drop(key, f"Axolotl's default ({_short(value)}): {info.get('what', '')}", path)
        elif value is False or value == [] or value == {} or (value == 0 and not isinstance(value, bool)):
            self.drop(key, f"off ({_short(value)}): {info.get('what', '')}", path)
        elif info.get("proposal") == "drop":
            self.drop(key, f"{info.get('what', '')}; {info.get('reason', '')}".strip("; "), path)
        elif info.get("proposal") == "refuse":
            self.refuse(key, f"{info.get('what', '')}; {info.get('reason', 'no counterpart')}", path)
        else:
            hint = f" (would be {info['ours']})" if info.get("ours") else ""
            self.refuse(key, f"{info.get('what', '')}; not carried by this converter yet{hint}", path)

    # ---- rules --------------------------------------------------------------------------------

    def simple_keys(self) -> None:
        for key, ours in SAME.items():
            if key not in self.given:
                continue
            value = self.given[key]
            if value is None:
                self.drop(key, "unset (a null placeholder)")
            else:
                self.carry(key, (ours,), value)
        for key, ours in TRAINER_ARGS.items():
            if self.has(key):
                self.carry(key, ("trainer_args", ours), self.given[key])
        for key, ours in FILTERS.items():
            if key in self.given:
                value = self.given[key]
                if value is None or value is False:
                    self.drop(key, "unset or off")
                else:
                    self.carry(key, ("filters", ours), value)
        if "ddp_find_unused_parameters" in self.given:
            self.drop(
                "ddp_find_unused_parameters",
                "DDP's search for parameters without a gradient (lets some models run under DDP; no effect "
                "on what trains): set distributed: {type: ddp, find_unused_parameters: true} if needed",
            )
        if "use_kernels" in self.given:
            self.drop("use_kernels", "hub kernels for speed (the same computation)")
        if "val_set_size" in self.given:
            value = self.given["val_set_size"]
            if value is None or value == 0:
                self.drop("val_set_size", "no eval split (Axolotl's default 0)")
            elif isinstance(value, int | float) and value == 1:
                self.refuse(
                    "val_set_size", "1 means the whole dataset as eval rows in Axolotl (<= 1 is a share)"
                )
            else:
                self.carry("val_set_size", ("val_set_size",), value)
        if "special_tokens" in self.given:
            tokens = self.given["special_tokens"]
            if not tokens:
                self.drop("special_tokens", "unset")
            elif isinstance(tokens, dict):
                extra = tokens.get("additional_special_tokens")
                plain = {
                    k: v for k, v in tokens.items() if k != "additional_special_tokens" and v is not None
                }
                if plain:
                    self.put(("special_tokens",), plain, "special_tokens")
                if extra:
                    self.put(("tokens",), [*self.out.config.get("tokens", []), *extra], "special_tokens")
                self._entry("special_tokens", "carried", "-> special_tokens" + (" + tokens" if extra else ""))
            else:
                self.refuse("special_tokens", "must be a mapping of token names")

    def adapter(self) -> None:
        name = self.given.get("adapter")
        four, eight = bool(self.given.get("load_in_4bit")), bool(self.given.get("load_in_8bit"))
        lora_keys = [k for k in self.given if k.startswith("lora_") or k.startswith("peft_")]
        if name in (None, "") and not four and not eight:
            for key in ("adapter", "load_in_4bit", "load_in_8bit", *lora_keys):
                if key in self.given and key not in self.done:
                    if key == "lora_model_dir" and self.has(key):
                        continue  # refused below through the inventory
                    self.drop(key, "unset or off: no adapter (full fine-tuning)")
            if self.has("unfrozen_parameters"):
                unfrozen = self.given["unfrozen_parameters"]
                self.carry(
                    "unfrozen_parameters", ("adapter",), {"type": "full", "unfrozen_parameters": unfrozen}
                )
            return
        if name not in ("lora", "qlora", None):
            self.refuse("adapter", f"adapter '{name}' has no counterpart here (lora, qlora)")
            return
        kind = "qlora" if name == "qlora" or four else "lora"
        block: dict[str, Any] = {"type": kind}
        origin = ["adapter"] if "adapter" in self.given else []
        self._entry_if("adapter", f"-> adapter.type: {kind}")
        if four:
            self._entry_if("load_in_4bit", "-> adapter.type: qlora (a 4-bit base)")
            origin.append("load_in_4bit")
        elif "load_in_4bit" in self.given:
            self.drop("load_in_4bit", "off")
        if eight and kind == "lora":
            block["load_in_8bit"] = True
            self._entry_if("load_in_8bit", "-> adapter.load_in_8bit")
        elif "load_in_8bit" in self.given:
            self.drop("load_in_8bit", "off" if not eight else "ignored by Axolotl with a 4-bit base")
        for key, ours in LORA_KEYS.items():
            if self.has(key):
                block[ours] = self.given[key]
                self._entry_if(key, f"-> adapter.{ours}")
            elif key in self.given:
                self.drop(key, "unset (a null placeholder)")
        if "dropout" not in block:
            block["dropout"] = 0.0
            origin.append("(Axolotl's default lora_dropout 0.0)")
        if self.given.get("lora_target_linear"):
            block["target_modules"] = "all-linear"
            self._entry_if("lora_target_linear", "-> adapter.target_modules: all-linear")
            if self.has("lora_target_modules"):
                self._entry_if("lora_target_modules", "-> adapter.target_modules (all-linear covers them)")
        elif self.has("lora_target_modules"):
            block["target_modules"] = self.given["lora_target_modules"]
            self._entry_if("lora_target_modules", "-> adapter.target_modules")
            if "lora_target_linear" in self.given:
                self.drop("lora_target_linear", "off")
        else:
            self.refuse(
                "adapter",
                "neither lora_target_modules nor lora_target_linear: Axolotl gives PEFT an empty target list",
            )
            return
        kwargs = self.given.get("bnb_config_kwargs")
        if kwargs and kind == "qlora":
            for key, ours in (
                ("bnb_4bit_quant_type", "quant_type"),
                ("bnb_4bit_use_double_quant", "double_quant"),
            ):
                if key in kwargs:
                    block[ours] = kwargs[key]
            self._entry_if("bnb_config_kwargs", "-> adapter.quant_type / double_quant")
        if self.has("unfrozen_parameters"):
            self.refuse(
                "unfrozen_parameters",
                "training named base weights in full beside a LoRA adapter is not supported here yet",
            )
        for key in ("lora_model_dir",):
            if key in self.given and self.given[key] is None:
                self.drop(key, "unset (a null placeholder)")
        self.put(("adapter",), block, ", ".join(origin) or "adapter")

    def _entry_if(self, key: str, note: str) -> None:
        if key in self.given and key not in self.done:
            self._entry(key, "carried", note)

    def attention(self) -> None:
        chosen = None
        value = self.given.get("attn_implementation")
        if value is not None:
            hub = next((ours for mark, ours in HUB_ATTENTION if mark in str(value)), None)
            if value in ATTENTION or hub:
                chosen = ATTENTION.get(value) or hub
                note = f"the hub kernel {value} computes exact attention, as {hub} does" if hub else ""
                self.carry("attn_implementation", ("attention",), chosen, note)
            elif value == "xformers":
                chosen = "sdpa"
                self.carry("attn_implementation", ("attention",), "sdpa", "xformers computes exact attention")
            else:
                self.refuse("attn_implementation", f"attention kernel '{value}' has no counterpart here")
        elif "attn_implementation" in self.given:
            self.drop("attn_implementation", "unset (a null placeholder)")
        for key, ours in ATTENTION_SWITCHES.items():
            if key not in self.given:
                continue
            if self.given[key] and chosen is None:
                chosen = ours
                self.carry(key, ("attention",), ours)
            elif self.given[key]:
                self.drop(key, f"attention already chosen ({chosen})")
            else:
                self.drop(key, "off")

    def kernels(self) -> None:
        liger: dict[str, Any] = {}
        for key, ours in LIGER.items():
            if key in self.given:
                if self.given[key] is None:
                    self.drop(key, "unset (a null placeholder)")
                else:
                    liger[ours] = bool(self.given[key])
                    self._entry(key, "carried", f"-> kernels: liger {ours}")
        if "liger_fused_linear_cross_entropy" in self.given:
            self.drop(
                "liger_fused_linear_cross_entropy",
                "Liger's fused linear + cross-entropy saves memory only (the same loss); TRL's SFTTrainer "
                "already computes the loss through its own chunked LM head",
            )
        if any(liger.values()):
            self.put(("kernels",), [{"type": "liger", **liger}], "liger_*")
        plugins = self.given.get("plugins")
        if "plugins" in self.given:
            if not plugins:
                self.drop("plugins", "no plugins")
            elif isinstance(plugins, list):
                others = [p for p in plugins if p != LIGER_PLUGIN and p not in MEMORY_ONLY_PLUGINS]
                if others:
                    named = ", ".join(map(str, others))
                    self.refuse("plugins", f"Axolotl integration plugins with no counterpart here: {named}")
                else:
                    notes = ["liger: the kernels above" if LIGER_PLUGIN in plugins else ""]
                    notes += [MEMORY_ONLY_PLUGINS[p] for p in plugins if p in MEMORY_ONLY_PLUGINS]
                    self.drop("plugins", "; ".join(n for n in notes if n))
        if "cut_cross_entropy" in self.given:
            self.drop(
                "cut_cross_entropy",
                MEMORY_ONLY_PLUGINS["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
            )

    def trackers(self) -> None:
        used: list[str] = []
        for report, switch in TRACKER_SWITCHES.items():
            if self.has(switch):
                used.append(report)
        for key, (report, target) in TRACKERS.items():
            if key not in self.given:
                continue
            value = self.given[key]
            if value is None or report not in used:
                self.drop(
                    key, "unset" if value is None else f"{report} is not on (no {TRACKER_SWITCHES[report]})"
                )
            elif target == "run_name":
                self.carry(key, ("run_name",), value)
            else:
                self.out.env[target] = str(value)
                self._entry(key, "carried", f"-> environment {target}={value} (report_to: {report})")
        if used:
            self.put(
                ("report_to",),
                used[0] if len(used) == 1 else used,
                ", ".join(TRACKER_SWITCHES[u] for u in used),
            )
        if self.given.get("use_tensorboard"):
            self.put(
                ("report_to",), [*_listed(self.out.config.get("report_to")), "tensorboard"], "use_tensorboard"
            )
            self._entry("use_tensorboard", "carried", "-> report_to: tensorboard")

    def cadence(self) -> None:
        epochs = self.given.get("num_epochs") or 1
        evals = (self.has("val_set_size") and self.given["val_set_size"] != 0) or self.has("test_datasets")
        for key, strategy, steps in (("saves_per_epoch", "save_strategy", "save_steps"),
                                     ("evals_per_epoch", "eval_strategy", "eval_steps")):  # fmt: skip
            if key not in self.given:
                continue
            value = self.given[key]
            if not value:
                self.drop(key, "unset")
            elif key == "evals_per_epoch" and not evals:
                self.drop(key, "no eval split, so Axolotl runs no evals")
            elif self.has(steps):
                self.drop(key, f"{steps} is set, which Axolotl uses instead")
            else:
                ratio = 1.0 / (float(value) * float(epochs))
                if ratio >= 1:
                    self.carry(key, (strategy,), "epoch", f"{value} per epoch over {epochs} epochs")
                else:
                    self.put((strategy,), "steps", key)
                    self.carry(
                        key, (steps,), round(ratio, 6), f"a share of all steps: 1/({value} x {epochs} epochs)"
                    )

    def distributed(self) -> None:
        deepspeed = self.given.get("deepspeed")
        if deepspeed is not None:
            if isinstance(deepspeed, str):
                self.carry("deepspeed", ("distributed",), {"type": "deepspeed", "config_file": deepspeed})
            else:
                self.refuse("deepspeed", "an inline DeepSpeed config: give it as a JSON file (config_file)")
        elif "deepspeed" in self.given:
            self.drop("deepspeed", "unset")
        fsdp, config = self.given.get("fsdp"), self.given.get("fsdp_config")
        version = self.given.get("fsdp_version")
        if not fsdp and not config:
            for key in ("fsdp", "fsdp_config", "fsdp_version"):
                if key in self.given:
                    self.drop(key, "unset: no FSDP")
            return
        if deepspeed is not None:
            self.refuse("fsdp_config", "both DeepSpeed and FSDP are set")
            return
        config = dict(config or {})
        config = {k.removeprefix("fsdp_"): v for k, v in config.items()}
        block: dict[str, Any] = {"type": "fsdp"}
        version = version or config.pop("version", None) or 1
        config.pop("version", None)
        block["version"] = int(version)
        unsupported = []
        for key, value in config.items():
            if key == "offload_params":
                block["cpu_offload"] = bool(value)
            elif key == "activation_checkpointing":
                block["activation_checkpointing"] = bool(value)
            elif key == "transformer_layer_cls_to_wrap":
                block["wrap_layer"] = (
                    [v.strip() for v in value.split(",")] if isinstance(value, str) else value
                )
            elif key == "state_dict_type":
                block["checkpoint_state_dict"] = "full" if "FULL" in str(value).upper() else "sharded"
            elif key == "reshard_after_forward":
                block["sharding"] = "full_shard" if value else "shard_grad_op"
            elif key == "sharding_strategy":
                block["sharding"] = str(value).lower()
            elif key in FSDP_MECHANICS:
                continue  # how the wrapping/loading is done; no effect on what trains
            else:
                unsupported.append(key)
        for item in _listed(fsdp):
            if item in ("full_shard", "shard_grad_op", "hybrid_shard"):
                block.setdefault("sharding", item)
            elif item == "offload":
                block["cpu_offload"] = True
        if unsupported:
            self.refuse("fsdp_config", f"FSDP settings with no counterpart here: {', '.join(unsupported)}")
            return
        for key in ("fsdp", "fsdp_config", "fsdp_version"):
            self._entry_if(key, "-> distributed: fsdp")
        self.put(
            ("distributed",),
            block,
            ", ".join(k for k in ("fsdp", "fsdp_config", "fsdp_version") if k in self.given),
        )

    def datasets(self) -> None:
        for key in ("datasets", "test_datasets"):
            if key not in self.given:
                continue
            entries = self.given[key]
            if not entries:
                self.drop(key, "unset")
                continue
            converted = []
            refused = False
            for i, entry in enumerate(entries):
                result = self.dataset(key, i, entry)
                refused |= result is None
                converted.append(result)
            if refused:
                self.done.add(key)
                continue
            self.put((key,), converted, key)
            self._entry(key, "carried", f"-> {key} ({len(converted)})")
        for key in GLOBAL_DATASET_KEYS:
            if key in self.given and key not in self.done:
                value = self.given[key]
                if value is None or (key == "train_on_inputs" and value is False):
                    self.drop(key, "unset or Axolotl's default")
                else:
                    self._entry(key, "carried", "-> each dataset entry")

    def dataset(self, key: str, i: int, entry: Any) -> dict[str, Any] | None:
        path = (key, i)
        if not isinstance(entry, dict):
            self.refuse(f"{key}[{i}]", "a dataset entry must be a mapping", path)
            return None
        kind = entry.get("type")
        ours_type = DATASET_TYPES.get(kind) if isinstance(kind, str) else None
        if kind is None:
            ours_type = "pretokenized"  # Axolotl reads rows without a type as already tokenized
        if ours_type is None:
            info = inventory().get("dataset_types", {}).get(kind, {}) if isinstance(kind, str) else {}
            why = info.get("reason") or "no counterpart formatter"
            self.refuse(f"{key}[{i}].type", f"dataset type {_short(kind)}: {why}", (*path, "type"))
            return None
        out: dict[str, Any] = {"type": ours_type}
        for field_key, value in entry.items():
            where = (*path, field_key)
            if field_key == "type":
                continue
            if field_key in DATASET_SAME and value is not None:
                out[DATASET_SAME[field_key]] = value
            elif field_key == "chat_template":
                if value not in TEMPLATES:
                    self.refuse(f"{key}[{i}].chat_template", _template_reason(value), where)
                    return None
                out["chat_template"] = TEMPLATES[value]
            elif field_key in ("ds_type",) or value is None:
                continue  # read from the file's extension / unset
            elif field_key in ("message_field_role", "message_field_content"):
                mapping = out.setdefault("message_property_mappings", {})
                mapping[field_key.removeprefix("message_field_")] = value
            else:
                self.refuse(f"{key}[{i}].{field_key}", "a dataset option with no counterpart here", where)
                return None
        self.global_dataset_keys(out)
        if out["type"] == "alpaca" and self.given.get("train_on_inputs"):
            out["train_on_prompt"] = True
        return out

    def global_dataset_keys(self, out: dict[str, Any]) -> None:
        """Axolotl's top-level chat keys, which it applies to every dataset, onto this entry."""
        if out["type"] != "chat_template":
            return
        template = self.given.get("chat_template")
        if template is not None and "chat_template" not in out:
            if template not in TEMPLATES:
                self.refuse("chat_template", _template_reason(template))
                return
            out["chat_template"] = TEMPLATES[template]
        for key, ours in (("chat_template_jinja", "chat_template_jinja"), ("eot_tokens", "eot_tokens"),
                          ("default_system_message", "system_prompt")):  # fmt: skip
            if self.has(key) and ours not in out:
                out[ours] = self.given[key]
        if self.given.get("train_on_inputs"):
            out["roles_to_train"] = ["system", "user", "assistant"]

    def tokens_and_resume(self) -> None:
        resume = self.given.get("resume_from_checkpoint")
        if resume is not None:
            self.carry("resume_from_checkpoint", ("resume",), resume)
        elif "resume_from_checkpoint" in self.given:
            self.drop("resume_from_checkpoint", "unset")
        if "auto_resume_from_checkpoints" in self.given:
            if self.given["auto_resume_from_checkpoints"] and resume is None:
                self.carry("auto_resume_from_checkpoints", ("resume",), "auto")
            else:
                self.drop("auto_resume_from_checkpoints", "off")

    def optimizer_and_schedule(self) -> None:
        from trainer.config.optimizers import OPTIMIZERS
        from trainer.config.schema import SCHEDULERS

        optimizer = self.given.get("optimizer")
        if optimizer is not None:
            if optimizer in OPTIMIZERS:
                self.carry("optimizer", ("optimizer",), optimizer)
            else:
                self.refuse("optimizer", f"optimizer '{optimizer}' (Axolotl's own) has no counterpart here")
        scheduler = self.given.get("lr_scheduler")
        if scheduler is None and self.has("cosine_min_lr_ratio"):
            scheduler = "cosine"  # Axolotl's default
        if scheduler is not None:
            if scheduler == "cosine" and self.has("cosine_min_lr_ratio"):
                self.put(("lr_scheduler",), "cosine_with_min_lr", "lr_scheduler, cosine_min_lr_ratio")
                if "lr_scheduler" in self.given:
                    self._entry("lr_scheduler", "carried", "-> lr_scheduler: cosine_with_min_lr")
                ratio = self.given["cosine_min_lr_ratio"]
                self.put(
                    ("trainer_args",), {"lr_scheduler_kwargs": {"min_lr_rate": ratio}}, "cosine_min_lr_ratio"
                )
                self._entry(
                    "cosine_min_lr_ratio", "carried", "-> trainer_args.lr_scheduler_kwargs.min_lr_rate"
                )
            elif scheduler in SCHEDULERS:
                self.carry("lr_scheduler", ("lr_scheduler",), scheduler)
            else:
                self.refuse("lr_scheduler", f"schedule '{scheduler}' (Axolotl's own) has no counterpart here")

    def defaults(self) -> None:
        """Axolotl's defaults where ours differ, written out so the run does what Axolotl's did."""
        config = self.out.config
        for key, (value, why) in DEFAULTS_THAT_DIFFER.items():
            if key not in config and not any(
                e.key == key and e.status == "refused" for e in self.out.entries
            ):
                self.put((key,), value, why)
        if "warmup_ratio" not in config and "warmup_steps" not in config:
            self.put(("warmup_ratio",), 0.03, "Axolotl's default warmup: 3% of the steps (at most 100 steps)")
        if config.get("sample_packing"):
            if "pad_to_sequence_len" not in config:
                self.put(("pad_to_sequence_len",), True, "Axolotl pads packed rows to sequence_len")
            if "eval_sample_packing" not in config and config.get("val_set_size"):
                self.put(("eval_sample_packing",), True, "Axolotl packs eval rows too with sample_packing")


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _dotted(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _template_reason(name: Any) -> str:
    return (
        f"Axolotl's chat template '{name}' has no built-in here with the same text; give its Jinja "
        "with chat_template: jinja and chat_template_jinja"
    )


def convert(path: str) -> Conversion:
    """Convert the Axolotl config at `path` (ConvertError when it is not a readable mapping)."""
    try:
        data, source = load_yaml(path)
    except Exception as err:  # OSError, YAML syntax: the message says where
        raise ConvertError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: an Axolotl config is a mapping of keys")
    return _Converter(data, source, path).run()
