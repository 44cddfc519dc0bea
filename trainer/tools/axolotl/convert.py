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
from trainer.tools.axolotl.alpaca_types import ALPACA_CHAT, instruction_options
from trainer.tools.axolotl.types import mismatch

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
    "early_stopping_patience": "early_stopping_patience",
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
    "save_total_limit": (4, "Axolotl's default save_total_limit: it keeps the last 4 checkpoints"),
}

ATTENTION = {"flash_attention_2": "flash_attention_2", "flash_attention_3": "flash_attention_3",
             "sdpa": "sdpa", "eager": "eager", "flex_attention": "flex_attention"}  # fmt: skip
HUB_ATTENTION = (("flash-attn3", "flash_attention_3"), ("flash_attn3", "flash_attention_3"),
                 ("flash-attn", "flash_attention_2"), ("flash_attn", "flash_attention_2"))  # fmt: skip
"""Hub kernels (`kernels-community/...`) named by attn_implementation: the same exact attention."""
ATTENTION_SWITCHES = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa",
                      "eager_attention": "eager", "flex_attention": "flex_attention",
                      "xformers_attention": "sdpa"}  # fmt: skip
"""xformers_attention: xformers computes exact attention, as sdpa does (speed differs)."""
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
TEMPLATES = {name: name for name in (
    "tokenizer_default", "jinja", "alpaca", "aya", "chatml", "cohere", "command_a", "command_a_rag",
    "command_a_tool_use", "deepseek_v2", "deepseek_v3", "exaone", "exaone4", "falcon_h1", "gemma", "gemma3",
    "gemma3n", "gemma4", "gemma4_unified", "jamba", "llama3", "llama3_2_vision", "llama4", "llava",
    "metharme", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "nemotron_h",
    "phi_3", "phi_35", "phi_4", "pixtral", "qwen2_vl", "qwen3", "qwen3_5", "qwen_25")}  # fmt: skip
"""Axolotl chat template name -> our built-in of the same name: Axolotl's Jinja file, shipped with the
chat_template formatter (chatml and llama3: ours, which render string contents alike; gemma: see
TEMPLATE_CAVEATS)."""
TEMPLATE_CAVEATS = {
    "gemma": "chat template gemma: ours (Gemma 3's text template) renders what Axolotl's does for "
    "conversations without a system message; Axolotl's rejects one, ours puts it before the first user turn",
}
BNB_KWARGS = {"bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant",
              "bnb_4bit_compute_dtype": "compute_dtype",
              "bnb_4bit_quant_storage": "quant_storage"}  # fmt: skip
BNB_8BIT_ONLY = ("llm_int8_threshold", "llm_int8_has_fp16_weight", "llm_int8_enable_fp32_cpu_offload")
CHAT_TYPES = ("chat_template", "sharegpt")
SHAREGPT_TYPES = ("sharegpt", "sharegpt:chat", "sharegpt_simple", "sharegpt_simple:chat")
"""Axolotl's removed sharegpt types that read conversations/from/value as they are (load_role,
load_guanaco and the jokes/ultrachat loaders reshape rows: refused by the inventory)."""
CHAT_ONLY_KEYS = (
    "field_messages", "message_property_mappings", "message_field_role", "message_field_content",
    "message_field_training", "message_field_training_detail", "roles", "roles_to_train", "train_on_eos",
    "train_on_eot", "field_thinking", "template_thinking_key", "split_thinking", "field_tools",
    "drop_system_message", "chat_template", "chat_template_jinja", "eot_tokens")  # fmt: skip
"""Dataset options only Axolotl's chat_template type reads: another type ignores them."""
UNKNOWN_DATASET_KEY = (
    "not an Axolotl dataset option: Axolotl ignores unknown keys silently, so it had no effect there"
)
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
             "loraplus_lr_ratio": "loraplus_lr_ratio", "lora_fan_in_fan_out": "fan_in_fan_out"}  # fmt: skip
FSDP_MECHANICS = ("auto_wrap_policy", "sync_module_states", "use_orig_params",
                  "limit_all_gathers", "backward_prefetch", "forward_prefetch")  # fmt: skip
"""fsdp_config keys about how wrapping is done: no effect on what trains."""
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

RL_METHODS = {"dpo": "dpo", "ipo": "dpo", "kto": "kto", "orpo": "orpo", "simpo": "simpo"}
"""Axolotl's `rl:` values whose trainer ours runs (ipo is DPO with loss_type ipo)."""
RL_REFUSED = {
    "grpo": "GRPO's rewards are Python functions named in trl.reward_funcs (module.function), which "
    "cannot be imported here: register each as a trainer.rewards entry point and write method: "
    "{type: grpo, rewards: [...]} by hand",
    "gdpo": "GDPO (group reward-decoupled GRPO, rewards from Python functions in trl.reward_funcs) has "
    "no counterpart here",
    "ebft": "energy-based fine-tuning (EBFT) has no counterpart here",
}
BETA_KEYS = ("rl_beta", "dpo_beta", "orpo_alpha")
"""Axolotl keys that set the TRL config's beta (orpo_alpha only with rl: orpo); trl.beta too."""
METHOD_OPTIONS = {  # Axolotl key -> (our option, the methods whose Axolotl trainer reads it)
    "dpo_loss_weights": ("loss_weights", ("dpo",)),
    "dpo_label_smoothing": ("label_smoothing", ("dpo",)),
    "precompute_ref_log_probs": ("precompute_ref_log_probs", ("dpo",)),
    "kto_desirable_weight": ("desirable_weight", ("kto",)),
    "kto_undesirable_weight": ("undesirable_weight", ("kto",)),
    "simpo_gamma": ("gamma", ("simpo",)),
    "cpo_alpha": ("cpo_alpha", ("simpo",)),
}
METHOD_DEFAULTS = {"simpo": {"beta": 0.1, "cpo_alpha": 1.0}}
"""TRL's defaults that Axolotl leaves in place where ours differ (CPOConfig: beta 0.1, cpo_alpha 1.0,
so Axolotl's simpo is CPO-SimPO unless cpo_alpha: 0)."""
FLAT_PAIRS = {  # chatml.X / llama3.X DPO functions: the columns they read (prompt, chosen, rejected)
    "intel": ("question", "chosen", "rejected"),
    "prompt_pairs": ("prompt", "chosen", "rejected"),
    "argilla": ("instruction", "chosen_response", "rejected_response"),
    "icr": ("input", "chosen", "rejected"),
}
FLAT_KTO = {"intel": "question", "prompt_pairs": "prompt", "ultra": "prompt"}
"""chatml.X / llama3.X KTO functions: the prompt column they read (and completion, label)."""
NOT_FLAT = {
    "ultra": "reads chosen[1].content and rejected[1].content of [user, assistant] conversations beside "
    "a prompt column; our preference rows take the prompt and whole completions",
    "argilla_chat": "reads chosen[0] as the prompt and chosen[1]/rejected[1] as the completions; our "
    "preference rows cannot pick turns",
}
PREFERENCE_CAVEAT = (
    "the type hard-codes {template} text, rendered here with chat_template: {template} (an empty system "
    "field gives no system turn in both)"
)


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
        self.method: str | None = None
        """Our method type when the Axolotl config trains one (rl or reward_model)."""
        self.global_template_used = False
        self.caveats: list[str] = []
        """How a carried preference dataset may differ from Axolotl's rows (noted on `datasets`)."""

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
        self.given = self.well_typed(self.given, "keys")
        for handler in (
            self.preference_method,
            self.simple_keys,
            self.adapter,
            self.attention,
            self.kernels,
            self.trackers,
            self.cadence,
            self.distributed,
            self.datasets,
            self.tokens_and_resume,
            self.sampling,
            self.training_extras,
            self.peft_extras,
            self.moe_experts,
            self.model_config_source,
            self.model_loading,
            self.optimizer_and_schedule,
            self.qat,
            self.defaults,
        ):
            handler()
        for key in self.given:
            if key not in self.done:
                self.judge(key, self.given[key], inventory()["keys"].get(key))
        return self.out

    def well_typed(
        self, values: dict[Any, Any], section: str, prefix: tuple[Any, ...] = ()
    ) -> dict[Any, Any]:
        """`values` (the config, or a dataset entry at `prefix`) less each one whose type Axolotl's
        schema (the inventory's `section`) rejects: refused here with the type it takes, so that no
        rule reads a value of a type it does not expect."""
        types = inventory()[section]
        kept = {}
        for key, value in values.items():
            wanted = (
                mismatch(str(types.get(key, {}).get("type", "")), value) if isinstance(key, str) else None
            )
            if wanted is None:
                kept[key] = value
            else:
                note = f"Axolotl takes {wanted} here, not {_short(value)}: it rejects this value"
                self.refuse(_dotted((*prefix, key)), note, (*prefix, key))
        return kept

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
        if self.given.get("group_by_length") and self.given.get("sample_packing"):
            self.drop("group_by_length", "no effect: with sample_packing Axolotl's multipack sampler is used")
        for key, ours in SAME.items():
            if key not in self.given or key in self.done:
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
            else:  # a mapping (the type gate in run())
                extra = tokens.get("additional_special_tokens")
                plain = {
                    k: v for k, v in tokens.items() if k != "additional_special_tokens" and v is not None
                }
                if plain:
                    self.put(("special_tokens",), plain, "special_tokens")
                if extra:
                    self.put(("tokens",), [*self.out.config.get("tokens", []), *extra], "special_tokens")
                self._entry("special_tokens", "carried", "-> special_tokens" + (" + tokens" if extra else ""))

    def preference_method(self) -> None:
        """`rl:` / `reward_model:` and the options Axolotl's trainer for it reads -> `method:`."""
        rl, reward = self.given.get("rl"), self.given.get("reward_model")
        if "rl" in self.given and rl is None:
            self.drop("rl", "unset: supervised fine-tuning")
        if "reward_model" in self.given and not reward:
            self.drop("reward_model", "unset or off")
        if rl is None and not reward:
            for key in (*BETA_KEYS, *METHOD_OPTIONS, "trl"):
                if self.has(key):
                    self.drop(key, "read only by preference training (rl:), which this config does not set")
            return
        if rl is not None and reward:
            self.refuse("reward_model", f"set beside rl: {rl}; Axolotl trains one or the other")
            return
        kind = "reward"
        if rl is not None:
            rl = str(rl)
            if rl in RL_REFUSED:
                self.refuse("rl", f"'{rl}': {RL_REFUSED[rl]}")
                if self.given.get("trl"):
                    self.refuse("trl", f"the settings of rl: {rl}, which cannot be carried (see rl)")
                return
            if rl not in RL_METHODS:
                known = ", ".join([*RL_METHODS, *RL_REFUSED])
                self.refuse("rl", f"rl: {_short(rl)} is not one of Axolotl's methods ({known})")
                return
            kind = RL_METHODS[rl]
        block: dict[str, Any] = {"type": kind}
        origins = ["rl" if rl is not None else "reward_model"]
        betas = self.method_options(kind, rl, block, origins)
        if betas is None:
            return
        if len(set(betas.values())) > 1:
            named = ", ".join(f"{k}: {v}" for k, v in betas.items())
            self.refuse(next(iter(betas)).split(".")[0], f"conflicting betas ({named}); Axolotl has one beta")
            return
        if betas:
            block["beta"] = next(iter(betas.values()))
            origins += [k for k in betas if k != "trl.beta"] + (["trl"] if "trl.beta" in betas else [])
            for key in betas:
                self._entry(
                    key.split(".")[0], "carried", "-> method.beta" + " (trl.beta)" * (key == "trl.beta")
                )
        for option, value in METHOD_DEFAULTS.get(kind, {}).items():
            if option not in block:
                block[option] = value
                origins.append(f"(TRL's default {option} {value}, which Axolotl leaves in place)")
        if rl == "ipo":
            block["loss_type"] = "ipo"
        if kind == "reward":
            note = (
                "-> method: reward (a one-score sequence-classification head); Axolotl also pads every "
                "row to sequence_len, which changes no score: it is read at the last real token"
            )
        else:
            note = f"-> method.type: {kind}" + (" with loss_type: ipo" if rl == "ipo" else "")
        self._entry(origins[0], "carried", note)
        for key in ("pad_to_sequence_len", "eval_sample_packing"):
            if self.given.get(key):
                self.drop(key, "padding/packing of SFT rows; the preference methods here run padding-free")
        if self.given.get("sample_packing"):
            self.refuse("sample_packing", "Axolotl refuses sample_packing with rl / reward_model")
            return
        if kind == "reward" and "num_labels" in self.given and self.given["num_labels"] in (1, None):
            self.drop("num_labels", "the reward model's one score (method: reward)")
        self.method = kind
        self.put(("method",), block, ", ".join(origins))

    def method_options(
        self, kind: str, rl: str | None, block: dict[str, Any], origins: list[str]
    ) -> dict[str, Any] | None:
        """The method block's options (into block); returns the betas given, by key (None: refused)."""
        betas: dict[str, Any] = {}
        method = f"rl: {rl}" if rl else "reward_model"
        for key in BETA_KEYS:
            if key not in self.given:
                continue
            if self.given[key] is None:
                self.drop(key, "unset (a null placeholder)")
            elif kind == "reward" or (key == "orpo_alpha" and kind != "orpo"):
                self.drop(key, f"not read by Axolotl with {method}")
            else:
                betas[key] = self.given[key]
        for key, (ours, methods) in METHOD_OPTIONS.items():
            if key not in self.given:
                continue
            value = self.given[key]
            if value is None:
                self.drop(key, "unset (a null placeholder)")
            elif kind not in methods:
                self.drop(key, f"read by Axolotl only with rl: {', '.join(methods)}, not with {method}")
            else:
                block[ours] = value
                origins.append(key)
                self._entry(key, "carried", f"-> method.{ours}")
        if "dpo_loss_type" in self.given:
            losses = self.given["dpo_loss_type"]
            if losses is None:
                self.drop("dpo_loss_type", "unset (a null placeholder)")
            elif kind != "dpo":
                self.drop("dpo_loss_type", f"read by Axolotl only with rl: dpo, ipo, not with {method}")
            elif rl == "ipo" and _listed(losses) != ["ipo"]:
                self.refuse("dpo_loss_type", f"{_short(losses)} beside rl: ipo (the ipo loss)")
                return None
            else:
                listed = _listed(losses)
                block["loss_type"] = listed[0] if len(listed) == 1 else listed
                origins.append("dpo_loss_type")
                self._entry("dpo_loss_type", "carried", "-> method.loss_type")
        trl = self.given.get("trl")
        if "trl" in self.given and not trl:
            self.drop("trl", "unset")
        elif trl is not None:
            known = inventory().get("trl_keys", {})
            others = []
            for key, value in trl.items():
                if key == "beta" and value is not None and kind != "reward":
                    betas["trl.beta"] = value
                elif value is not None and value != (known.get(key) or {}).get("default"):
                    others.append(key)
            if others:
                self.refuse("trl", f"TRL settings not carried for {method}: {', '.join(others)}")
                return None
            if "trl.beta" not in betas:
                self.drop("trl", "only unset values and Axolotl's defaults")
        return betas

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
        if not self.bnb_kwargs(kind, block):
            return
        if self.has("unfrozen_parameters"):
            block["unfrozen_parameters"] = self.given["unfrozen_parameters"]
            self._entry_if("unfrozen_parameters", "-> adapter.unfrozen_parameters (trained beside LoRA)")
        for key in ("lora_model_dir",):
            if key in self.given and self.given[key] is None:
                self.drop(key, "unset (a null placeholder)")
        self.put(("adapter",), block, ", ".join(origin) or "adapter")

    def bnb_kwargs(self, kind: str, block: dict[str, Any]) -> bool:
        """`bnb_config_kwargs` (Axolotl updates its 4-bit BitsAndBytesConfig with them) onto the qlora
        block; False when one cannot be carried (refused)."""
        kwargs = self.given.get("bnb_config_kwargs")
        if "bnb_config_kwargs" not in self.given:
            return True
        if not kwargs:
            self.drop("bnb_config_kwargs", "unset or empty")
            return True
        if kind != "qlora":
            self.drop("bnb_config_kwargs", "read only for a 4-bit load (adapter: qlora with load_in_4bit)")
            return True
        carried, ignored, refused = [], [], []
        for key, value in kwargs.items():
            ours = BNB_KWARGS.get(key)
            if (
                ours == "compute_dtype"
                and self.given.get("bf16", "auto") == "auto"
                and not self.given.get("fp16")
            ):
                refused.append(f"{key} (fixed while bf16: auto decides the precision; set bf16 or fp16)")
            elif ours is not None:
                value = (
                    str(value).removeprefix("torch.") if ours in ("compute_dtype", "quant_storage") else value
                )
                block[ours] = value
                carried.append(f"{key} -> adapter.{ours}")
            elif key in BNB_8BIT_ONLY or (key == "load_in_4bit" and value is True):
                ignored.append(key)
            else:
                refused.append(key)
        if refused:
            self.refuse("bnb_config_kwargs", f"{', '.join(refused)}: not carried to the qlora adapter")
            return False
        note = "; ".join(carried) + (
            f"; {', '.join(ignored)}: 8-bit settings, no effect on a 4-bit load" * bool(ignored)
        )
        self._entry("bnb_config_kwargs", "carried", note.strip("; "))
        return True

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
            else:  # a list (the type gate in run())
                self.plugin_list(plugins)
        if "cut_cross_entropy" in self.given:
            self.drop(
                "cut_cross_entropy",
                MEMORY_ONLY_PLUGINS["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"],
            )

    def plugin_list(self, plugins: list[Any]) -> None:
        """Liger's kernels are carried above; a plugin the inventory calls speed/memory/logging-only is
        dropped with its reason; any other (one that changes training, or one not known) is refused."""
        notes, refused = [], []
        for plugin in map(str, plugins):
            info = inventory()["plugins"].get(plugin) or {}
            if plugin == LIGER_PLUGIN:
                notes.append("liger: the kernels above")
            elif plugin in MEMORY_ONLY_PLUGINS:
                notes.append(MEMORY_ONLY_PLUGINS[plugin])
            elif info.get("proposal") == "drop":
                notes.append(f"{plugin.rsplit('.', 1)[-1]}: {info.get('reason')}")
            else:
                refused.append(plugin + (f" ({info['reason']})" if info.get("reason") else ""))
        if refused:
            self.refuse(
                "plugins", f"Axolotl integration plugins with no counterpart here: {'; '.join(refused)}"
            )
        else:
            self.drop("plugins", "; ".join(notes))

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
        prefix = "fsdp_" if any(str(k).startswith("fsdp_") for k in config) else ""
        config = {k.removeprefix("fsdp_"): v for k, v in config.items()}
        block: dict[str, Any] = {"type": "fsdp"}
        version = version or config.pop("version", None) or 1
        config.pop("version", None)
        block["version"] = int(version)
        unsupported = []
        efficient = False
        for key, value in config.items():
            if key == "offload_params":
                block["cpu_offload"] = bool(value)
            elif key == "activation_checkpointing" and value and self.given.get("gradient_checkpointing"):
                note = "gradient_checkpointing already checkpoints the layers, and Axolotl then skips FSDP's"
                self.drop("fsdp_config.activation_checkpointing", note, ("fsdp_config", f"{prefix}{key}"))
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
            elif key == "cpu_ram_efficient_loading":
                efficient = bool(value)
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
        loading = ""
        if efficient:
            blocker = self.meta_loading_blocker()
            if blocker is None:
                block["cpu_ram_efficient_loading"] = True
            else:
                loading = (
                    f" (cpu_ram_efficient_loading dropped: {blocker}, so every process reads the "
                    "checkpoint: more CPU RAM while loading, the same training)"
                )
        self._entry_if("fsdp_config", "-> distributed: fsdp" + loading)
        for key in ("fsdp", "fsdp_version"):
            self._entry_if(key, "-> distributed: fsdp")
        self.put(
            ("distributed",),
            block,
            ", ".join(k for k in ("fsdp", "fsdp_config", "fsdp_version") if k in self.given),
        )

    def meta_loading_blocker(self) -> str | None:
        """Why the other processes could not build this run's model without its weights (the fsdp
        plugin's rules for cpu_ram_efficient_loading), or None."""
        adapter = self.out.config.get("adapter")
        block = adapter if isinstance(adapter, dict) else {"type": adapter}
        if block.get("type") == "qlora" or block.get("load_in_8bit") or self.has("model_quantization_config"):
            return "ours needs a full-precision base for it"
        if block.get("init") in ("pissa", "olora", "loftq"):
            return f"the adapter's init ({block['init']}) is computed from the base weights"
        if self.method not in (None, "sft"):
            return f"ours runs it with method sft only, not {self.method}"
        return None

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
            notes = [c.split(": ", 1)[1] for c in self.caveats if c.startswith(f"{key}[")]
            self._entry(key, "carried", f"-> {key} ({len(converted)})" + "".join(f"; {n}" for n in notes))
        if self.method is not None:
            self.preference_globals()
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
        if len(self.well_typed(entry, "dataset_keys", path)) < len(entry):
            return None
        kind = entry.get("type")
        if self.method is not None:
            return self.preference_dataset(key, i, entry, kind)
        ours_type = DATASET_TYPES.get(kind) if isinstance(kind, str) else None
        if kind is None:
            ours_type = "pretokenized"  # Axolotl reads rows without a type as already tokenized
        instruction, why_not = instruction_options(kind, entry)  # alpaca:phi, alpaca_w_system.*, ...
        if instruction is None and why_not:
            self.refuse(f"{key}[{i}].type", f"dataset type {_short(kind)}: {why_not}", (*path, "type"))
            return None
        if instruction is not None:
            ours_type = "alpaca"
        sharegpt = self.sharegpt_options(key, i, entry) if kind in SHAREGPT_TYPES else {}
        if sharegpt is None:
            return None
        if sharegpt:
            ours_type = "sharegpt"
        if ours_type is None:
            info = _dataset_type_info(kind) if isinstance(kind, str) else {}
            why = info.get("reason") or "no counterpart formatter"
            self.refuse(f"{key}[{i}].type", f"dataset type {_short(kind)}: {why}", (*path, "type"))
            return None
        out: dict[str, Any] = {"type": ours_type, **(instruction or {}), **sharegpt}
        for field_key, value in entry.items():
            where = (*path, field_key)
            if field_key == "type" or (field_key == "conversation" and (kind in ALPACA_CHAT or sharegpt)):
                continue  # conversation: alpaca_chat's prompt style, or sharegpt's template (read above)
            if instruction is not None and field_key in ("conversation", "field"):
                if value is not None:
                    self.drop(f"{key}[{i}].{field_key}", f"not read by dataset type {_short(kind)}", where)
                continue
            if ours_type not in CHAT_TYPES and field_key in CHAT_ONLY_KEYS:
                if value is not None:
                    note = f"read only by chat types; {_short(kind)} ignores it"
                    self.drop(f"{key}[{i}].{field_key}", note, where)
                continue
            if field_key in DATASET_SAME and value is not None:
                out[DATASET_SAME[field_key]] = value
            elif field_key == "chat_template":
                if value not in TEMPLATES:
                    self.refuse(f"{key}[{i}].chat_template", _template_reason(value), where)
                    return None
                out["chat_template"] = self.template(value, f"{key}[{i}]")
            elif field_key in ("field_thinking", "template_thinking_key"):
                if ours_type in CHAT_TYPES and value is not None:
                    out[field_key] = value
                    self.thinking_caveat(entry, f"{key}[{i}]")
            elif field_key in ("ds_type",) or value is None:
                continue  # read from the file's extension / unset
            elif field_key in ("message_field_role", "message_field_content"):
                mapping = out.setdefault("message_property_mappings", {})
                mapping[field_key.removeprefix("message_field_")] = value
            elif field_key not in inventory()["dataset_keys"]:
                self.drop(f"{key}[{i}].{field_key}", UNKNOWN_DATASET_KEY, where)
            else:
                self.refuse(f"{key}[{i}].{field_key}", "a dataset option with no counterpart here", where)
                return None
        self.global_dataset_keys(out, f"{key}[{i}]")
        if out["type"] == "alpaca" and self.given.get("train_on_inputs"):
            out["train_on_prompt"] = True
        return out

    def sharegpt_options(self, key: str, i: int, entry: dict[str, Any]) -> dict[str, Any] | None:
        """Axolotl's own migration of a sharegpt entry (types it has removed): chat data with
        conversations/from/value, rendered by the template `conversation:` names (chatml by default);
        None (refused) for a FastChat template with no identical built-in here."""
        conversation = entry.get("conversation") or "chatml"
        if conversation not in ("chatml", "llama3"):
            self.refuse(
                f"{key}[{i}].conversation",
                f"FastChat conversation template {_short(conversation)} (old sharegpt types) has no built-in "
                "here with the same text (chatml and llama3 have)",
                (key, i, "conversation"),
            )
            return None
        self.caveats.append(
            f"{key}[{i}]: type {entry.get('type')}: current Axolotl rejects sharegpt types and says to use "
            f"chat_template with conversations/from/value; carried so, with the {conversation} template"
        )
        return {"chat_template": conversation}

    def preference_dataset(self, key: str, i: int, entry: dict[str, Any], kind: Any) -> dict[str, Any] | None:
        """A dataset entry of a preference/reward config: Axolotl's transform for its type, as our
        preference or kto formatter with the columns it reads and the text it renders."""
        path, name, method = (key, i), f"{key}[{i}].type", self.method
        if not isinstance(kind, str):
            self.refuse(name, f"method {method} needs a preference dataset type, got {_short(kind)}", path)
            return None
        prefix, _, function = kind.partition(".")
        options: tuple[str, ...] = ()  # entry keys read by the type beside the source keys
        out: dict[str, Any]
        caveat = ""
        if method == "kto" and prefix in ("chatml", "llama3") and function in FLAT_KTO:
            out = {"type": "kto", "prompt_field": FLAT_KTO[function], "chat_template": prefix}
            caveat = _caveat(prefix)
        elif method == "dpo" or method == "simpo":
            if kind == "chat_template.default":
                out = {"type": "preference"}
                options = ("field_messages", "field_chosen", "field_rejected", "message_property_mappings",
                           "message_field_role", "message_field_content", "roles", "chat_template",
                           "chat_template_jinja")  # fmt: skip
            elif prefix in ("chatml", "llama3") and function in FLAT_PAIRS:
                prompt, chosen, rejected = FLAT_PAIRS[function]
                out = {"type": "preference", "prompt_field": prompt, "chat_template": prefix}
                out.update({k: v for k, v in (("chosen_field", chosen), ("rejected_field", rejected))
                            if v != k.removesuffix("_field")})  # fmt: skip
                caveat = _caveat(prefix)
            elif prefix in ("chatml", "llama3") and function in NOT_FLAT:
                self.refuse(name, f"dataset type {kind}: {NOT_FLAT[function]}", (*path, "type"))
                return None
            else:
                return self._refuse_type(name, kind, path)
        elif method == "reward" and kind == "bradley_terry.chat_template":
            out = {"type": "preference", "prompt_field": "input"}
            options = ("chat_template", "chat_template_jinja")
        else:
            return self._refuse_type(name, kind, path)
        for field_key, value in entry.items():
            where = (*path, field_key)
            if field_key in ("type", "ds_type") or value is None:
                continue
            if field_key in ("path", "split", "name", "data_files", "revision"):
                out[field_key] = value
            elif field_key not in options:
                self.refuse(
                    f"{key}[{i}].{field_key}", f"a dataset option that {kind} data does not carry here", where
                )
                return None
        if options and not self.configurable_layout(key, i, entry, kind, out):
            return None
        if caveat:
            self.caveats.append(f"{key}[{i}]: {caveat}")
        return out

    def _refuse_type(self, name: str, kind: str, path: tuple[Any, ...]) -> dict[str, Any] | None:
        info: dict[str, Any] = next(
            (v for k, v in inventory().get("dataset_types", {}).items() if k and kind in k), {}
        )
        why = info.get("reason") or f"not a layout carried here for method {self.method}"
        self.refuse(name, f"dataset type {kind}: {why}", (*path, "type"))
        return None

    def configurable_layout(
        self, key: str, i: int, entry: dict[str, Any], kind: str, out: dict[str, Any]
    ) -> bool:
        """chat_template.default / bradley_terry.chat_template: the chat template (the entry's or the
        global one) and, for chat_template.default, the message columns; False when refused."""
        path = (key, i)
        template = entry.get("chat_template") or self.given.get("chat_template") or "tokenizer_default"
        if entry.get("chat_template") is None and self.given.get("chat_template") is not None:
            self.global_template_used = True
        jinja = entry.get("chat_template_jinja") or self.given.get("chat_template_jinja")
        if template not in TEMPLATES or (template == "jinja" and not jinja):
            where = (*path, "chat_template") if entry.get("chat_template") else ("chat_template",)
            self.refuse(f"{key}[{i}].chat_template", _template_reason(template), where)
            return False
        if kind.startswith("bradley_terry") and template != "llama3":
            self.refuse(
                f"{key}[{i}].type",
                f"{kind} with chat template '{template}': Axolotl scores the whole rendered conversation, "
                "text after the last end-of-turn marker included (ChatML's newline), ours ends each "
                "sequence at the marker, so the score would be read at another token (llama3 ends there)",
                (*path, "type"),
            )
            return False
        out["chat_template"] = self.template(template, f"{key}[{i}]")
        if template == "jinja":
            out["chat_template_jinja"] = jinja
        if kind.startswith("bradley_terry"):
            self.put(("too_long",), "truncate", "Axolotl cuts reward rows at sequence_len")
            return True
        out["prompt_field"] = entry.get("field_messages") or "messages"
        for axolotl, ours in (("field_chosen", "chosen_field"), ("field_rejected", "rejected_field")):
            if entry.get(axolotl) not in (None, ours.removesuffix("_field")):
                out[ours] = entry[axolotl]
        mapping = dict(entry.get("message_property_mappings") or {})
        for legacy in ("message_field_role", "message_field_content"):
            if entry.get(legacy) is not None:
                mapping[legacy.removeprefix("message_field_")] = entry[legacy]
        renamed = {k: v for k, v in mapping.items() if k != v}
        roles = entry.get("roles") or {}
        renamed_roles = {s: t for t, sources in roles.items() for s in _listed(sources) if s != t}
        if renamed or renamed_roles:
            self.refuse(
                f"{key}[{i}].{'message_property_mappings' if renamed else 'roles'}",
                f"renames message {'fields' if renamed else 'roles'} ({_short(renamed or renamed_roles)}): "
                "our preference formatter reads role and content, with the roles as they are",
                (*path, "message_property_mappings" if renamed else "roles"),
            )
            return False
        self.caveats.append(
            f"{key}[{i}]: a 'system' column beside the messages is read by ours (as the system turn when the "
            "messages have none), not by Axolotl's chat_template.default"
        )
        return True

    def preference_globals(self) -> None:
        """Axolotl's top-level chat keys in a preference config."""
        if self.has("chat_template") and "chat_template" not in self.done:
            if self.global_template_used:
                self._entry("chat_template", "carried", "-> the chat_template of the dataset entries")
            else:
                self.drop("chat_template", "not read by these dataset types, which render their own format")
        if self.has("chat_template_jinja") and not self.global_template_used:
            self.drop("chat_template_jinja", "not read by these dataset types")
        if "train_on_inputs" in self.given:
            self.drop("train_on_inputs", "not read for preference data: only the completions train")
        for key in ("eot_tokens", "default_system_message"):
            if self.has(key):
                self.refuse(key, f"not carried for preference data (method {self.method})")

    def template(self, name: str, where: str) -> str:
        """Our built-in for Axolotl's chat template `name`, with its caveat (if any) noted once."""
        caveat = TEMPLATE_CAVEATS.get(name)
        if caveat is not None and f"{where}: {caveat}" not in self.caveats:
            self.caveats.append(f"{where}: {caveat}")
        return TEMPLATES[name]

    def thinking_caveat(self, entry: dict[str, Any], where: str) -> None:
        """field_thinking other than the template's key: Axolotl 0.21 reads it only when the entry has
        no message_property_mappings, which its schema always fills (role, content); then the template
        gets the message's own template_thinking_key value. Ours reads field_thinking, as documented."""
        field = entry.get("field_thinking") or "reasoning_content"
        key = entry.get("template_thinking_key") or "reasoning_content"
        caveat = (
            f"field_thinking '{field}' differs from template_thinking_key '{key}': ours passes each "
            f"message's '{field}' to the template as '{key}'; Axolotl 0.21 passes the message's own "
            f"'{key}' (its schema always fills message_property_mappings, which disables field_thinking)"
        )
        if field != key and f"{where}: {caveat}" not in self.caveats:
            self.caveats.append(f"{where}: {caveat}")

    def global_dataset_keys(self, out: dict[str, Any], where: str) -> None:
        """Axolotl's top-level chat keys, which it applies to every dataset, onto this entry."""
        if out["type"] != "chat_template":
            return
        template = self.given.get("chat_template")
        if template is not None and "chat_template" not in out:
            if template not in TEMPLATES:
                self.refuse("chat_template", _template_reason(template))
                return
            out["chat_template"] = self.template(template, where)
        for key, ours in (("chat_template_jinja", "chat_template_jinja"), ("eot_tokens", "eot_tokens"),
                          ("default_system_message", "system_prompt")):  # fmt: skip
            if self.has(key) and ours not in out:
                out[ours] = self.given[key]
        if self.given.get("train_on_inputs"):
            out["roles_to_train"] = ["system", "user", "assistant"]
        if "roles" not in out:  # Axolotl's default role names; ours uses unlisted names as they are
            out["roles"] = {"user": ["human"], "assistant": ["gpt"]}

    def model_config_source(self) -> None:
        """`base_model_config` names where config.json is read; the same place as base_model (old
        configs wrote both) changes nothing."""
        value = self.given.get("base_model_config")
        if "base_model_config" in self.given and value in (None, self.given.get("base_model")):
            self.drop("base_model_config", "the same as base_model (where the model's config is read anyway)")

    def model_loading(self) -> None:
        """How the model and tokenizer load: config overrides, a quantized checkpoint's format,
        the tokenizer's flags, embedding rows padded to a multiple of 32."""
        from trainer.config.loading import QUANTIZATION_CONFIGS, quantization_problems

        for key in ("model_config", "overrides_of_model_config"):
            value = self.given.get(key)
            if key not in self.given:
                continue
            if not value:
                self.drop(key, "unset or empty: the model's own config")
            elif not isinstance(value, dict):
                self.refuse(key, "must be a mapping of config attributes")
            else:
                self.carry(
                    key, ("overrides_of_model_config",), value, "checked against the model's config at load"
                )
        name, kwargs = (
            self.given.get("model_quantization_config"),
            self.given.get("model_quantization_config_kwargs"),
        )
        if name is None:
            for key in ("model_quantization_config", "model_quantization_config_kwargs"):
                if key in self.given:
                    self.drop(
                        key,
                        "unset"
                        if key == "model_quantization_config" or not kwargs
                        else "read by Axolotl only with model_quantization_config",
                    )
        elif name not in QUANTIZATION_CONFIGS:
            self.refuse(
                "model_quantization_config", f"{_short(name)} is not one of {', '.join(QUANTIZATION_CONFIGS)}"
            )
        elif problems := quantization_problems(name, kwargs or {}):
            self.refuse(
                "model_quantization_config_kwargs" if kwargs else "model_quantization_config",
                "; ".join(f"{'.'.join(map(str, p.path))} {p.message}" for p in problems),
            )
            if kwargs:
                self.refuse(
                    "model_quantization_config", "its kwargs are refused (model_quantization_config_kwargs)"
                )
        else:
            self.carry("model_quantization_config", ("model_quantization_config",), name)
            if kwargs:
                self.carry("model_quantization_config_kwargs", ("model_quantization_config_kwargs",), kwargs)
            elif "model_quantization_config_kwargs" in self.given:
                self.drop("model_quantization_config_kwargs", "unset")
        if "tokenizer_use_fast" in self.given:
            self.drop(
                "tokenizer_use_fast",
                "Axolotl 0.21 runs transformers 5 (5.20.1), whose tokenizers have one "
                "(Rust-backed) implementation and whose AutoTokenizer ignores use_fast: no effect there",
            )
        if "tokenizer_legacy" in self.given:
            if self.given["tokenizer_legacy"] is None:
                self.drop("tokenizer_legacy", "unset (a null placeholder)")
            else:
                self.carry("tokenizer_legacy", ("tokenizer_legacy",), bool(self.given["tokenizer_legacy"]))
        if "resize_token_embeddings_to_32x" in self.given:
            if self.given["resize_token_embeddings_to_32x"]:
                self.carry("resize_token_embeddings_to_32x", ("pad_vocab_to_multiple_of",), 32)
            else:
                self.drop("resize_token_embeddings_to_32x", "unset or off")

    def peft_extras(self) -> None:
        """`peft:` holds LoftQ initialisation (Axolotl 0.21) or, in newer Axolotl, a torchao backend that
        quantizes the base: both change what is trained; each refusal names what the block asked for."""
        block = self.given.get("peft")
        if "peft" not in self.given or not block:
            return
        asked = []
        if block.get("loftq_config"):
            loftq = _short(block["loftq_config"])
            asked.append(f"loftq_config {loftq}: LoftQ initialisation of the LoRA weights")
        if block.get("backend") or block.get("weight_dtype"):
            asked.append(
                f"backend {_short(block.get('backend'))}, weight_dtype {_short(block.get('weight_dtype'))}: "
                "the base quantized by torchao (newer Axolotl)"
            )
        other = sorted(set(block) - {"loftq_config", "backend", "weight_dtype"})
        if asked:
            self.refuse("peft", "; ".join(asked) + "; no counterpart here")
        else:
            self.drop("peft", f"{', '.join(map(str, other)) or 'empty'}: not options Axolotl reads")

    def moe_experts(self) -> None:
        """MoE expert options of a LoRA / QLoRA run: lora_target_parameters, quantize_moe_experts
        (with a 4- or 8-bit base, as Axolotl requires) and llama4_linearized_experts. False / null /
        [] are left to the inventory (dropped as off or unset)."""
        block = self.out.config.get("adapter")
        if not isinstance(block, dict) or block.get("type") not in ("lora", "qlora"):
            return
        targets = self.given.get("lora_target_parameters")
        if targets:
            value = [targets] if isinstance(targets, str) else list(targets)
            self.carry("lora_target_parameters", ("adapter", "target_parameters"), value)
        if self.given.get("quantize_moe_experts") is True:
            if block["type"] == "qlora" or block.get("load_in_8bit"):
                bits = "4" if block["type"] == "qlora" else "8"
                self.carry(
                    "quantize_moe_experts", ("adapter", "quantize_moe_experts"), True, f"{bits}-bit experts"
                )
            else:
                self.refuse("quantize_moe_experts", "needs load_in_4bit or load_in_8bit (as in Axolotl)")
        if self.given.get("llama4_linearized_experts") is True:
            base = str(self.given.get("base_model", ""))
            if "linearized" in base.lower():
                self.refuse(
                    "llama4_linearized_experts",
                    f"base_model {base} is Axolotl's pre-linearized Llama 4 checkpoint, which transformers' "
                    "Llama 4 cannot load; trainer linearizes the original checkpoint after loading it: "
                    "set base_model to the original (e.g. meta-llama/Llama-4-Scout-17B-16E-Instruct) and "
                    "convert again",
                )
            else:
                self.carry("llama4_linearized_experts", ("adapter", "llama4_linearized_experts"), True)

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
            elif optimizer == "adamw_hf":  # transformers' own AdamW, removed in 5.x: torch's math
                self.carry(
                    "optimizer", ("optimizer",), "adamw_torch", "the same AdamW update as transformers'"
                )
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
                kwargs = {"min_lr_rate": ratio}
                self.put(("trainer_args", "lr_scheduler_kwargs"), kwargs, "cosine_min_lr_ratio")
                self._entry(
                    "cosine_min_lr_ratio", "carried", "-> trainer_args.lr_scheduler_kwargs.min_lr_rate"
                )
            elif scheduler in SCHEDULERS:
                self.carry("lr_scheduler", ("lr_scheduler",), scheduler)
            else:
                self.refuse("lr_scheduler", f"schedule '{scheduler}' (Axolotl's own) has no counterpart here")

    def qat(self) -> None:
        """`qat:` -> our `qat:` block (trainer.tools.axolotl.qat), or refused with Axolotl's reason."""
        if not self.given.get("qat"):
            if "qat" in self.given:
                self.drop("qat", "unset: no quantization-aware training")
            return
        from trainer.tools.axolotl.qat import convert as convert_qat

        block, note = convert_qat(self.given["qat"], self.given)
        if block is None:
            self.refuse("qat", note)
        else:
            self.carry("qat", ("qat",), block, note)

    def training_extras(self) -> None:
        """TrainingArguments switches Axolotl passes through as they are, lr_scheduler_kwargs,
        excess_length_strategy (-> too_long) and batch_flattening (-> padding_free)."""
        for key in ("dataloader_drop_last", "full_determinism", "greater_is_better"):
            if self.has(key):
                self.carry(key, ("trainer_args", key), self.given[key])
        if self.given.get("lr_scheduler_kwargs"):
            if self.has("cosine_min_lr_ratio"):
                self.refuse(
                    "lr_scheduler_kwargs",
                    "beside cosine_min_lr_ratio, whose own cosine schedule Axolotl builds",
                )
            else:
                self.carry("lr_scheduler_kwargs", ("trainer_args", "lr_scheduler_kwargs"),
                           self.given["lr_scheduler_kwargs"])  # fmt: skip
        strategy = self.given.get("excess_length_strategy")
        if strategy in ("drop", "truncate"):
            self.carry("excess_length_strategy", ("too_long",), strategy)
        elif strategy is not None:
            self.refuse(
                "excess_length_strategy",
                f"{_short(strategy)}: ours drops (too_long: drop) or truncates rows over sequence_len",
            )
        if self.given.get("batch_flattening") is True:
            self.carry("batch_flattening", ("padding_free",), True, "padding-free micro-batches")
        elif self.given.get("batch_flattening") == "auto":
            self.drop("batch_flattening", "auto: ours turns padding_free on where the attention reads it")

    def sampling(self) -> None:
        """curriculum_sampling (Axolotl's SequentialSampler) -> sampler: sequential, and the row order
        Axolotl gives it: one dataset unshuffled, several concatenated and shuffled once unless
        shuffle_merged_datasets is false (shuffle_before_merging_datasets then has no counterpart)."""
        if not self.given.get("curriculum_sampling"):
            return
        entries = self.given.get("datasets")
        single = isinstance(entries, list) and len(entries) == 1
        merged = self.given.get("shuffle_merged_datasets") is not False
        if not single and not merged and self.given.get("shuffle_before_merging_datasets"):
            self.refuse(
                "shuffle_before_merging_datasets",
                "with curriculum_sampling and shuffle_merged_datasets: false, each dataset is shuffled on "
                "its own and the datasets kept in turn; ours shuffles all training rows together or none",
            )
            return
        shuffled = merged and not single
        how = "the datasets' order"
        if shuffled:
            how = "the merged datasets shuffled once, then in that order"
        self.carry("curriculum_sampling", ("sampler",), "sequential", how)
        if not shuffled:
            origin = "curriculum_sampling" + ("" if single else ", shuffle_merged_datasets")
            self.put(("shuffle",), False, origin)
            if "shuffle_merged_datasets" in self.given:
                self._entry("shuffle_merged_datasets", "carried", "-> shuffle: false")

    def defaults(self) -> None:
        """Axolotl's defaults where ours differ, written out so the run does what Axolotl's did."""
        config = self.out.config
        if self.given.get("fp16") and "bf16" not in config:  # Axolotl: fp16 turns bf16's auto off
            self.put(("bf16",), False, "fp16 (Axolotl turns bf16: auto off when fp16 is set)")
        if self.given.get("save_steps") and config.get("save_strategy") != "steps":
            self.put(("save_strategy",), "steps", "save_steps (Axolotl saves by steps whenever it is set)")
        evals = self.has("test_datasets") or self.given.get("val_set_size", 0) != 0
        if evals and self.given.get("eval_steps") and config.get("eval_strategy") not in ("steps", "no"):
            self.put(("eval_strategy",), "steps", "eval_steps (Axolotl evaluates by steps when it is set)")
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


def _dataset_type_info(kind: str) -> dict[str, Any]:
    """The inventory's dataset_types entry that lists `kind` ('a / a.load_x / load_y' entries: a
    bare load_y is a function of the first entry's module)."""
    types: dict[str, Any] = inventory().get("dataset_types", {})
    if kind in types:
        return dict(types[kind])
    for listed, info in types.items():
        parts = [part.split(" (")[0].strip() for part in str(listed).split(" / ")]
        module = parts[0].split(".")[0]
        if kind in {f"{module}.{part}" if part.startswith("load") else part for part in parts}:
            return dict(info)
    return {}


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _dotted(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _caveat(template: str) -> str:
    trim = "; ours trims whitespace around each content (llama3), Axolotl's text keeps it"
    return PREFERENCE_CAVEAT.format(template=template) + (trim if template == "llama3" else "")


def _template_reason(name: Any) -> str:
    if isinstance(name, str) and name.startswith("tokenizer_default_fallback_"):
        fallback = name.removeprefix("tokenizer_default_fallback_")
        return (
            f"'{name}' means the tokenizer's template, else {fallback}: no counterpart (which one applies "
            f"depends on the tokenizer); choose tokenizer_default or {fallback}"
        )
    return (
        f"Axolotl has no chat template named {_short(name)} (nor has this converter a built-in of that "
        "name); give its Jinja with chat_template: jinja and chat_template_jinja"
    )


def convert(path: str) -> Conversion:
    """Convert the Axolotl config at `path` (ConvertError when it is not a readable mapping)."""
    try:
        data, source = load_yaml(path, last_wins=True)  # as Axolotl's yaml.safe_load reads it
    except Exception as err:  # OSError, YAML syntax: the message says where
        raise ConvertError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: an Axolotl config is a mapping of keys")
    conversion = _Converter(data, source, path).run()
    for where, first, last in source.duplicates:
        note = f"written again at line {last}: the last value wins, as Axolotl's yaml.safe_load reads it"
        conversion.entries.append(Entry(_dotted(where), f"{path}:{first}", "dropped", note))
    return conversion
