"""Config -> plugin contributions -> one merge -> model, tokenizer, datasets, SFTConfig -> SFTTrainer.

Data flows one way; nothing here edits global state. Two plugins (or a plugin and `trainer_args`)
setting one key to different values is a config error naming both.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from trainer.api import Adapter, Contribution, Method
from trainer.api.resolved import Resolved
from trainer.config.errors import ConfigErrors, Problem
from trainer.config.schema import TrainConfig
from trainer.data.collate import PackedInputs
from trainer.resolve.precision import Machine, accelerator_type, decide_auto
from trainer.resolve.validate import config_fields, sft_config_fields
from trainer.runtime import meta_loading, model_loading
from trainer.runtime.launcher import CHECKED_ENV


@dataclass
class Merged(Contribution):
    """All contributions merged into one, with who set what (for conflict messages)."""

    owners: dict[str, str] = field(default_factory=dict)


def merge(contributions: list[tuple[str, Contribution]]) -> Merged:
    """Merge (owner, contribution) pairs; a key set twice with different values is an error."""
    merged = Merged()
    problems: list[Problem] = []

    def put(target: dict[str, Any], section: str, key: str, value: Any, owner: str) -> None:
        slot = f"{section}.{key}"
        if key in target and target[key] != value:
            problems.append(
                Problem(
                    (),
                    f"{slot} is set to {target[key]!r} by {merged.owners[slot]} and to {value!r} by {owner}",
                )
            )
            return
        target[key] = value
        merged.owners.setdefault(slot, owner)

    for owner, part in contributions:
        for key, value in part.model_kwargs.items():
            put(merged.model_kwargs, "model_kwargs", key, value, owner)
        for key, value in part.sft_args.items():
            put(merged.sft_args, "sft_args", key, value, owner)
        merged.convert_initialised_adapter |= part.convert_initialised_adapter
        merged.weights_from_process_0 |= part.weights_from_process_0
        for attr in ("peft_config", "data_collator", "trainable_dtype"):
            value = getattr(part, attr)
            if value is None:
                continue
            if getattr(merged, attr) is not None:
                problems.append(Problem((), f"{attr} is given by both {merged.owners[attr]} and {owner}"))
                continue
            setattr(merged, attr, value)
            merged.owners[attr] = owner
        merged.callbacks.extend(part.callbacks)
    if problems:
        raise ConfigErrors(problems)
    return merged


def contributions(resolved: Resolved) -> list[tuple[str, Contribution]]:
    """Every chosen plugin's contribution, then trainer_args (owner 'trainer_args')."""
    out = []
    for chosen in resolved.plugins():
        owner = f"{chosen.entry.kind} plugin '{chosen.entry.name}' ({chosen.entry.distribution})"
        out.append((owner, chosen.plugin.contribute(resolved.config)))
    out.append(("trainer_args", Contribution(sft_args=dict(resolved.config.trainer_args))))
    return out


def core_sft_args(config: TrainConfig) -> dict[str, Any]:
    """SFTConfig fields that come straight from the config's own keys."""
    warmup: float = 0
    if config.warmup_ratio is not None:
        warmup = config.warmup_ratio
    elif config.warmup_steps is not None:
        warmup = config.warmup_steps
    evaluating = config.eval_strategy != "no"
    # wandb / mlflow name the run by this
    run_name = config.run_name or os.path.basename(os.path.normpath(config.output_dir))
    args: dict[str, Any] = {
        "output_dir": config.output_dir,
        "per_device_train_batch_size": config.micro_batch_size,
        "per_device_eval_batch_size": config.eval_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_train_epochs": config.num_epochs,
        "max_steps": config.max_steps or -1,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": warmup,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "optim": config.optimizer,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": config.bf16,
        "fp16": config.fp16,
        "gradient_checkpointing": config.gradient_checkpointing,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "eval_strategy": config.eval_strategy,
        "eval_on_start": evaluating,
        "save_strategy": config.save_strategy,
        "save_total_limit": None,  # ours rotates (trainer.outputs.checkpoints), never deleting the newest
        "load_best_model_at_end": config.load_best_model_at_end,
        "report_to": config.report_to,
        "run_name": run_name,
        "max_length": config.sequence_len,
        "packing": False,  # ours, when sample_packing is on: see trainer.data.packing
        "remove_unused_columns": False,  # the collator picks the columns it needs
        # The data pipeline already tokenized, masked, fitted to sequence_len and dropped rows with
        # nothing to train: TRL's own pass over the prepared rows would only repeat that.
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "trust_remote_code": config.trust_remote_code,
    }
    if config.neftune_noise_alpha is not None:
        args["neftune_noise_alpha"] = config.neftune_noise_alpha
    if config.group_by_length:
        args["train_sampling_strategy"] = "group_by_length"  # reads the `length` column
    elif config.sampler == "sequential":
        args["train_sampling_strategy"] = "sequential"
    if accelerator_type() is None:
        # Tell accelerate this is a CPU run. Without it, under torchrun on CPU accelerate starts a
        # gloo process group but treats the run as not distributed: no DDP wrapper, no gradient
        # all-reduce, every process silently trains its own model.
        args["use_cpu"] = True
    if config.tf32:
        args["tf32"] = True
    if config.eval_steps is not None:
        args["eval_steps"] = config.eval_steps
    if config.save_steps is not None:
        args["save_steps"] = config.save_steps
    if config.metric_for_best_model is not None:
        args["metric_for_best_model"] = config.metric_for_best_model
    return args


def sft_config(config: TrainConfig, merged: Merged, method: Method[Any] | None = None) -> Any:
    """Build the trl.SFTConfig, or the TRL config class of a `method` (its options' fields added, the
    core's SFT-only fields left out); an argument it rejects becomes a ConfigErrors."""
    from trl import SFTConfig

    config_class: Any = SFTConfig
    args = core_sft_args(config)
    if method is not None and method.name != "sft":
        config_class = method.trainer()[1]
        fields = config_fields(config_class)
        args = {key: value for key, value in args.items() if key in fields or key == "gradient_checkpointing"}
        args.update(method.trainer_args(config))
    else:
        fields = sft_config_fields()
    if "activation_checkpointing" in fields:  # transformers' new name for it
        args["activation_checkpointing"] = args.pop("gradient_checkpointing")
    for key, value in merged.sft_args.items():
        if key in args and args[key] != value:
            owner = merged.owners[f"sft_args.{key}"]
            if owner != "trainer_args":  # a plugin may not silently override the user's keys
                raise ConfigErrors(
                    [Problem((), f"{owner} sets {key}={value!r}, which the config sets to {args[key]!r}")]
                )
        args[key] = value
    try:
        return config_class(**args)
    except (ValueError, TypeError) as err:
        raise ConfigErrors(
            [Problem(("trainer_args",), f"rejected by {config_class.__name__}: {err}")]
        ) from None


def remote_code_warning(config: TrainConfig) -> str | None:
    """The warning for `trust_remote_code: true`, or None when it is off (the default): transformers
    then imports and runs the Python files shipped with the model (and the tokenizer)."""
    if not config.trust_remote_code:
        return None
    sources = [config.base_model]
    if config.tokenizer and config.tokenizer != config.base_model:
        sources.append(config.tokenizer)
    return (
        "warning: trust_remote_code is on: the model's own Python code from "
        f"{' and '.join(sources)} will run on this machine"
    )


_warned: set[str] = set()


def warn_remote_code(config: TrainConfig) -> None:
    """Print `remote_code_warning` to stderr once per process and only on the main one: not on ranks
    other than 0, and not in the processes the train command started (it warned before starting them)."""
    text = remote_code_warning(config)
    if text is None or text in _warned:
        return
    _warned.add(text)
    if os.environ.get("RANK", "0") != "0" or os.environ.get(CHECKED_ENV) == "1":
        return
    print(text, file=sys.stderr, flush=True)


def check_remote_code(config: TrainConfig, merged: Merged) -> None:
    """Only the config's own `trust_remote_code` decides: a plugin's model_kwargs may not change it."""
    owner = merged.owners.get("model_kwargs.trust_remote_code")
    value = merged.model_kwargs.get("trust_remote_code", config.trust_remote_code)
    if owner is not None and value != config.trust_remote_code:
        raise ConfigErrors(
            [
                Problem(
                    ("trust_remote_code",),
                    f"{owner} sets trust_remote_code={value!r}, which the config sets to "
                    f"{config.trust_remote_code!r}",
                )
            ]
        )


def load_tokenizer(config: TrainConfig) -> Any:
    """The run's tokenizer, with the config's `special_tokens` and `tokens` added."""
    return load_tokenizer_and_new_ids(config)[0]


def load_tokenizer_and_new_ids(config: TrainConfig) -> tuple[Any, list[int]]:
    """The run's tokenizer and the ids of the tokens the config added to it (`special_tokens`,
    then `tokens`; ones the vocabulary already has are not new). Adapters use the ids to train those
    embedding rows."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    warn_remote_code(config)
    tokenizer = AutoTokenizer.from_pretrained(
        config.tokenizer or config.base_model,
        trust_remote_code=config.trust_remote_code,
        **model_loading.tokenizer_kwargs(config),
    )
    before = len(tokenizer)

    def added(token: str, special: bool) -> AddedToken:
        return AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=special)

    specials = config.special_tokens.model_dump(exclude_none=True) if config.special_tokens else {}
    if specials:
        tokenizer.add_special_tokens({key: added(value, True) for key, value in specials.items()})
    if config.tokens:
        tokenizer.add_tokens([added(token, False) for token in config.tokens])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels are explicit, so EOS stays trained
    wanted = [*specials.values(), *(config.tokens or [])]
    ids: list[int] = tokenizer.convert_tokens_to_ids(wanted)  # type: ignore[assignment]
    new_ids = sorted({i for i in ids if i >= before})
    return tokenizer, new_ids


def load_model(
    config: TrainConfig,
    merged: Merged,
    adapter: Adapter,
    tokenizer: Any = None,
    *,
    head: str = "causal_lm",
    for_training: bool = True,
) -> Any:
    """The base model with the plugins' load kwargs; its embeddings grown to the tokenizer when tokens
    were added (new rows mean-initialised, transformers' default), then the adapter's preparation
    (`for_training`; a frozen reference copy skips it). `head` "sequence_classification" loads a
    one-score head on the base (a reward model)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_remote_code(config, merged)
    warn_remote_code(config)
    kwargs = {"dtype": "auto", **merged.model_kwargs}
    kwargs.pop("trust_remote_code", None)  # equal to the config's (check_remote_code)
    kwargs.update(model_loading.load_kwargs(config, merged.model_kwargs))
    auto: Any = AutoModelForCausalLM
    if head == "sequence_classification":
        auto, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    if meta_loading.reads_weights(merged.weights_from_process_0):
        model = auto.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code, **kwargs)
    else:  # the backend brings process 0's weights when it shards the model
        model = meta_loading.empty_model(auto, config, kwargs)
    rows = int(model.get_input_embeddings().weight.shape[0])
    multiple = config.pad_vocab_to_multiple_of
    wanted = 0 if tokenizer is None else model_loading.embedding_rows(len(tokenizer), multiple)
    if wanted > rows:
        model.resize_token_embeddings(wanted)
    if head == "sequence_classification" and tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last real token
    if not for_training:
        model.eval()
        model.requires_grad_(False)
        return model
    model = adapter.prepare_model(model, config)
    if config.qat is not None:  # torchao's fake quantization in the linear layers (trainer.training.qat)
        from trainer.training.qat import prepare

        model = prepare(model, config.qat)
    if merged.peft_config is not None:  # LoRA on parameters the adapter quantized in place (MoE experts)
        from trainer.training.parametrized_lora import target_parametrized

        target_parametrized(model, merged.peft_config)
    return model


def train_new_token_rows(model: Any, peft_config: Any, owner: str) -> None:
    """Tokens the config added (`tokens`, `special_tokens`) under any PEFT adapter: the input and
    output embeddings join the PEFT config's `modules_to_save`, so they train in full and are saved
    with the adapter (tied ones stay tied). Called after the adapter's `prepare_model`, before
    SFTTrainer wraps the model with the config. Not PEFT's trainable_token_indices: TRL's fused LM
    head reads lm_head.weight directly, which bypasses PEFT's TrainableTokensWrapper."""
    if not hasattr(peft_config, "modules_to_save"):
        raise ConfigErrors(
            [
                Problem(
                    ("tokens",),
                    f"{owner} gives a {type(peft_config).__name__}, which cannot train whole modules "
                    "(it has no modules_to_save), so the added tokens' embedding rows would stay random",
                )
            ]
        )
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    wanted = [names[inputs]] + ([names[outputs]] if outputs is not None else [])
    peft_config.modules_to_save = sorted({*(peft_config.modules_to_save or []), *wanted})
    if outputs is not None and outputs.weight is inputs.weight:
        if hasattr(peft_config, "ensure_weight_tying"):
            peft_config.ensure_weight_tying = True
        else:
            print(
                f"note: {owner}'s {type(peft_config).__name__} cannot keep the tied input and output "
                "embeddings tied (PEFT has no ensure_weight_tying for it): they train as two copies, and "
                "a merged model has untied embeddings",
                file=sys.stderr,
            )


def packed_inputs_for(attention: Any, model_config: Any, sequence_len: int) -> PackedInputs:
    """How the collator keeps packed examples apart for this kernel and model. A model with
    sliding-window layers shorter than the rows gets restarting position ids without a mask:
    transformers then builds each layer's mask (sliding or full) with the examples kept apart,
    where one explicit 4D mask would make every layer full-attention."""
    mode: PackedInputs = attention.packed_inputs
    if mode == "mask_4d" and _has_sliding_window(model_config, sequence_len):
        return "position_ids_rows"
    return mode


def _has_sliding_window(model_config: Any, sequence_len: int) -> bool:
    window = getattr(model_config, "sliding_window", None)
    if not window or window >= sequence_len or getattr(model_config, "use_sliding_window", True) is False:
        return False
    layer_types = getattr(model_config, "layer_types", None)
    return layer_types is None or "sliding_attention" in layer_types


def collated_datasets(resolved: Resolved, data: Any, model: Any, tokenizer: Any) -> tuple[Any, Any, Any]:
    """The train and eval datasets as the trainer iterates them (packed rows with sample_packing,
    a `length` column with group_by_length) and the collator that batches them."""
    from trainer.data.collate import Collator
    from trainer.data.packing import PackedDataset, example_lengths

    config = resolved.config
    attention = resolved.attention.plugin
    train, evals = data.train, data.eval
    if config.sample_packing:
        train = PackedDataset(train, config.sequence_len, config.seed)
    if config.eval_sample_packing and evals is not None:
        evals = PackedDataset(evals, config.sequence_len, config.seed)
    if config.group_by_length:
        train = train.add_column("length", example_lengths(train))
    packed_inputs = packed_inputs_for(attention, model.config, config.sequence_len)
    collator = Collator(
        pad_token_id=tokenizer.pad_token_id,
        packed_inputs=packed_inputs,
        additive_mask=getattr(attention, "additive_mask", False),
        pad_to=config.sequence_len if config.pad_to_sequence_len else None,
        padding_free=config.padding_free is not False,  # the collator flattens only for "position_ids"
    )
    return train, evals, collator


@dataclass
class Built:
    """Everything a run needs, assembled."""

    trainer: Any
    tokenizer: Any
    train_dataset: Any
    eval_dataset: Any
    report: Any
    cache_dir: str | None
    args: Any
    parameters: tuple[int, int] = (0, 0)  # (trainable, total), counted before training wraps the model
    metrics: tuple[str, ...] = ()  # the method's logged metrics drawn in training_curves.png
    batches_per_epoch: int | None = None  # per process, where rows do not map to batches one to one


def for_this_machine(resolved: Resolved, machine: Machine | None = None) -> tuple[Resolved, dict[str, str]]:
    """`bf16: auto` / `tf32: auto` decided on this machine (trainer.resolve.precision.decide_auto): the
    run with booleans in their place, which is what every plugin and the trainer's arguments read
    from then on, and what each auto became and why ({} and the run as it is when nothing was auto)."""
    config, decided = decide_auto(resolved.config, machine)
    if not decided:
        return resolved, {}
    return dataclasses.replace(resolved, config=config), decided


def plan(resolved: Resolved) -> tuple[Merged, Any]:
    """Every plugin's contribution merged, and the trainer's config (SFTConfig, DPOConfig, ...):
    cheap, and fails fast on bad input. An `auto` precision is decided for this machine first."""
    resolved, _ = for_this_machine(resolved)
    merged = merge(contributions(resolved))
    check_remote_code(resolved.config, merged)
    return merged, sft_config(resolved.config, merged, resolved.method.plugin)


def build_trainer(resolved: Resolved, planned: tuple[Merged, Any] | None = None) -> Built:
    """Assemble the SFTTrainer for a resolved config (from `plan(resolved)` when given)."""
    from accelerate import PartialState

    from trainer.data.pipeline import build_datasets
    from trainer.training.sft import SFTTrainer

    resolved, _ = for_this_machine(resolved)  # decided already when train() planned it
    config = resolved.config
    merged, args = planned or plan(resolved)
    if resolved.method.plugin.data[0] != "sft":
        return build_method_trainer(resolved, merged, args)
    tokenizer, new_ids = load_tokenizer_and_new_ids(config)
    with PartialState().main_process_first():
        data = build_datasets(resolved, tokenizer)
    adapter: Adapter = resolved.adapter.plugin
    model = load_model(config, merged, adapter, tokenizer)
    if new_ids and merged.peft_config is not None:
        train_new_token_rows(model, merged.peft_config, merged.owners.get("peft_config", "the adapter"))
    if merged.data_collator is not None and (config.sample_packing or config.eval_sample_packing):
        owner = merged.owners["data_collator"]
        raise ConfigErrors(
            [
                Problem(
                    ("sample_packing",),
                    f"{owner} gives its own data collator, which cannot batch packed rows",
                )
            ]
        )
    train, evals, collator = collated_datasets(resolved, data, model, tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,  # TRL accepts only `datasets` datasets here; packed views go in below
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=merged.peft_config,
        data_collator=merged.data_collator or collator,
        **run_features(config, merged),
    )
    trainer.train_dataset, trainer.eval_dataset = train, evals
    add_evals(trainer, resolved, tokenizer, data.eval)
    parameters = finish(trainer, adapter, args)
    return Built(trainer, tokenizer, train, evals, data.report, data.cache_dir, args, parameters)


def run_features(config: TrainConfig, merged: Merged) -> dict[str, Any]:
    """The constructor arguments of every method's trainer that come from the run: the plugins'
    callbacks and the adapter's (in the constructor: they act at on_init_end), early stopping,
    checkpoint rotation and the guard's watchdogs (trainer.training.run_features)."""
    from trainer.training import peft_support

    callbacks = list(merged.callbacks)
    if merged.trainable_dtype is not None:
        callbacks.append(peft_support.KeepTrainableDtype(merged.trainable_dtype))
    if merged.convert_initialised_adapter:
        callbacks.append(peft_support.ConvertToPlainAdapter())
    if config.qat is not None and config.qat.fake_quant_after_n_steps:
        from trainer.training.qat import FakeQuantAfter

        callbacks.append(FakeQuantAfter(config.qat.fake_quant_after_n_steps))
    if config.early_stopping_patience is not None:
        from trainer.training.early_stopping import EarlyStopping

        callbacks.append(EarlyStopping(config.early_stopping_patience, config.early_stopping_threshold))
    watchdog = {
        "threshold": config.loss_watchdog_threshold,
        "patience": config.loss_watchdog_patience,
        "spike_factor": config.grad_norm_spike_factor,
    }
    return {"callbacks": callbacks or None, "save_total_limit": config.save_total_limit, "watchdog": watchdog}


def add_evals(trainer: Any, resolved: Resolved, tokenizer: Any, eval_dataset: Any) -> None:
    """The config's `evals:`, run before and after training (trainer.evaluation.run)."""
    from trainer.evaluation.run import evals_callback

    callback = evals_callback(resolved, tokenizer, eval_dataset)
    if callback is not None:
        trainer.add_callback(callback)


def finish(trainer: Any, adapter: Adapter, args: Any) -> tuple[int, int]:
    """Our progress bar (tokens/s) and peak-memory record on a built trainer, the adapter's own
    optimizer when it makes one; returns the (trainable, total) parameter count."""
    from transformers.trainer_callback import ProgressCallback

    from trainer.outputs.run_report import PeakMemory, count_parameters
    from trainer.training.progress import TokenProgress

    meta_loading.materialize_trainable(trainer.model)  # before any optimizer maps its parameters
    if trainer.pop_callback(ProgressCallback) is not None:  # ours adds tokens/s; none under disable_tqdm
        trainer.add_callback(TokenProgress())
    trainer.add_callback(PeakMemory())
    # An adapter may build the optimizer itself (LoRA+ learning-rate groups), from the model as the
    # trainer wrapped it; Trainer.create_optimizer keeps an optimizer that is already set.
    optimizer = adapter.create_optimizer(trainer.model, args)
    if optimizer is not None:
        trainer.optimizer = optimizer
    return count_parameters(trainer.model)


def build_method_trainer(resolved: Resolved, merged: Merged, args: Any) -> Built:
    """Assemble the TRL trainer of a preference or RL method (`method:`) for a resolved config: the
    data in the method's shape, the model (and a frozen reference copy when the method wants one),
    the rewards it calls, and our subclass of the method's TRL trainer (trainer.training.methods)."""
    from accelerate import PartialState

    from trainer.data.collate import Ungrouped
    from trainer.data.packing import PackedGroups
    from trainer.data.pipeline import build_datasets
    from trainer.outputs.run_report import PREFERENCE_ACCURACY
    from trainer.resolve.registry import default_registry
    from trainer.training.methods import PairPreference, flatten_padded_batches, method_trainer

    config = resolved.config
    method: Method[Any] = resolved.method.plugin
    tokenizer, new_ids = load_tokenizer_and_new_ids(config)
    with PartialState().main_process_first():
        data = build_datasets(resolved, tokenizer)
    train = method.prepare_columns(data.train, args)
    evals = method.prepare_columns(data.eval, args) if data.eval is not None else None
    adapter: Adapter = resolved.adapter.plugin
    model = load_model(config, merged, adapter, tokenizer, head=method.model)
    peft_config = merged.peft_config
    if peft_config is not None and method.model == "sequence_classification":
        peft_config.task_type = "SEQ_CLS"  # PEFT then trains and saves the score head in full
    if new_ids and peft_config is not None:
        train_new_token_rows(model, peft_config, merged.owners.get("peft_config", "the adapter"))
    kwargs: dict[str, Any] = {}
    if method.reference(peft=peft_config is not None) == "copy":
        kwargs["ref_model"] = load_model(
            config, merged, adapter, tokenizer, head=method.model, for_training=False
        )
    if method.rewards():
        registry = default_registry()
        kwargs["reward_funcs"] = [registry.get("rewards", name) for name in method.rewards()]
    if merged.data_collator is not None:
        kwargs["data_collator"] = merged.data_collator
    trainer = method_trainer(method.trainer()[0])(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        peft_config=peft_config,
        **kwargs,
        **run_features(config, merged),
    )
    attention = resolved.attention.plugin
    if method.packing and attention.packed_inputs == "position_ids" and config.padding_free is not False:
        flatten_padded_batches(trainer.model, getattr(trainer, "ref_model", None))
    if config.sample_packing:  # groups of whole rows; a pair's two sequences count together
        capacity = (2 if "chosen_ids" in train.column_names else 1) * config.sequence_len
        trainer.train_dataset = PackedGroups(trainer.train_dataset, capacity, config.seed)
        if config.eval_sample_packing and trainer.eval_dataset is not None:
            trainer.eval_dataset = PackedGroups(trainer.eval_dataset, capacity, config.seed)
        trainer.data_collator = Ungrouped(trainer.data_collator)
    if data.eval is not None and "chosen_ids" in data.eval.column_names:
        trainer.add_callback(PairPreference(trainer, data.eval, tokenizer.pad_token_id, method.model))
    add_evals(trainer, resolved, tokenizer, data.eval)
    parameters = finish(trainer, adapter, args)
    metrics = (*method.metrics, PREFERENCE_ACCURACY)
    batches = len(trainer.get_train_dataloader()) if method.rewards() else None  # GRPO repeats prompts
    return Built(
        trainer, tokenizer, trainer.train_dataset, trainer.eval_dataset, data.report, data.cache_dir, args,
        parameters, metrics=metrics, batches_per_epoch=batches,
    )  # fmt: skip
