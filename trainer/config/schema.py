"""`TrainConfig`: the whole YAML file as a pydantic model, with Axolotl's key names.

Every level forbids unknown keys. Plugin blocks (`adapter`, `attention`, `distributed`,
`callbacks`, `kernels`, and each dataset's formatter options) are kept as plain dicts here and checked
against the chosen plugin's own `Options` model by `trainer.resolve.validate`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr

from trainer.config.kinds import LIST_PLUGIN_FIELDS, PLUGIN_FIELDS, PLUGIN_KINDS
from trainer.config.loading import QUANTIZATION_CONFIGS
from trainer.config.optimizers import OPTIMIZERS as OPTIMIZER_TABLE

__all__ = ["LIST_PLUGIN_FIELDS", "PLUGIN_FIELDS"]  # re-exported: the kind table's config keys

OPTIMIZERS = tuple(OPTIMIZER_TABLE)
"""transformers' OptimizerNames values, from trainer/config/optimizers.py (a test keeps them equal to
the enum)."""

QUANTIZATION_NAMES = tuple(QUANTIZATION_CONFIGS)
"""transformers quantization config classes `model_quantization_config` names."""

SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)  # fmt: skip
"""transformers' SchedulerType values (kept equal to the installed enum by a test)."""

Strategy = Literal["no", "steps", "epoch"]
PluginSpec = str | dict[str, Any]
"""A plugin block: `{type: name, ...options}`, or a bare name meaning `{type: name}`."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSpec(BaseModel):
    """One training file or dataset; keys other than these are the formatter's options."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(
        description="Local file (.jsonl/.jsonl.gz/.json/.csv/.parquet/.arrow), directory, glob, or hub name"
    )
    type: str = Field(description="Formatter plugin that turns a row into prompt/answer segments")
    split: str = Field("train", description="Split to read (hub datasets and directories)")
    name: str | None = Field(None, description="Hub dataset configuration name")
    data_files: str | list[str] | None = Field(None, description="Files inside a hub dataset")
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit)")
    weight: float | None = Field(
        None,
        gt=0,
        description="Mixing weight: this dataset's share of the training rows is weight / sum of weights "
        "(1 where unset); a dataset is repeated or subsampled to its share",
    )


class Filters(Strict):
    """Row filters applied after formatting and tokenizing; dropped rows are counted in the report."""

    dedupe: bool = Field(False, description="Drop exact duplicates (same tokens and same loss mask)")
    drop_regex: list[str] = Field(
        default_factory=list, description="Drop rows whose formatted text matches any of these regexes"
    )
    min_length: int | None = Field(None, gt=0, description="Drop rows shorter than this many tokens")
    max_length: int | None = Field(None, gt=0, description="Drop rows longer than this many tokens")


class SpecialTokens(Strict):
    """Special tokens to set (added to the vocabulary when new), Axolotl's `special_tokens`."""

    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None
    sep_token: str | None = None
    cls_token: str | None = None
    mask_token: str | None = None


QAT_DTYPES = ("int4", "int8", "fp8", "nvfp4", "mxfp4")
"""The number formats `qat:` fake-quantizes to (torchao's QAT; trainer.resolve.qat has the pairs)."""
QatDtype = Literal["int4", "int8", "fp8", "nvfp4", "mxfp4"]


class Qat(Strict):
    """Quantization-aware training: torchao fake-quantizes the linear layers' weights (and
    activations) in the forward pass, so the model learns weights that survive real quantization
    later. The saved model is an ordinary full-precision one (docs/qat.md)."""

    weight_dtype: QatDtype = Field(description="Format the weights are fake-quantized to")
    activation_dtype: QatDtype | None = Field(
        None, description="Format the linear layers' inputs are fake-quantized to (null: weights only)"
    )
    group_size: int | None = Field(
        None,
        gt=0,
        description="Weights per quantization scale (default: int4/int8 32, fp8+int4 128, nvfp4 16, "
        "mxfp4 32; fp8 weights are scaled per row and take none)",
    )
    quantize_embedding: bool = Field(
        False, description="Fake-quantize the input embeddings' weights too (int4/int8 weights)"
    )
    fake_quant_after_n_steps: int | None = Field(
        None,
        ge=0,
        description="Train the first N optimizer steps without fake quantization, then switch it on",
    )


class TrainConfig(Strict):
    """The whole config file."""

    # model
    base_model: str = Field(description="Local directory or hub id of the model to fine-tune")
    tokenizer: str | None = Field(None, description="Tokenizer location (default: base_model)")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint")
    special_tokens: SpecialTokens | None = Field(
        None,
        description="Set the tokenizer's special tokens, e.g. {pad_token: '<pad>'}; a token not in the "
        "vocabulary is added, the embeddings grow and its rows train (under LoRA too)",
    )
    tokens: list[str] | None = Field(
        None,
        description="New tokens to add to the tokenizer (each kept whole); the embeddings grow and the "
        "new rows train (under LoRA too)",
    )
    pad_vocab_to_multiple_of: int | None = Field(
        None,
        gt=0,
        description="When tokens are added, grow the embeddings to a multiple of this many rows (e.g. 32 or "
        "64, Axolotl's resize_token_embeddings_to_32x); the extra rows belong to no token",
    )
    tokenizer_legacy: bool | None = Field(
        None,
        description="The tokenizer's `legacy` flag (SentencePiece tokenizers built from a .model file: how "
        "text after a special token is split); default: the tokenizer's own",
    )
    overrides_of_model_config: dict[str, Any] | None = Field(
        None,
        validation_alias=AliasChoices("overrides_of_model_config", "model_config"),
        description="Values set on the model's config before its weights load, e.g. {rope_theta: 50000, "
        "max_position_embeddings: 8192}; each key must be one of the config's own (Axolotl's "
        "model_config). Saved with the model",
    )
    model_quantization_config: Literal[QUANTIZATION_NAMES] | None = Field(  # type: ignore[valid-type]
        None,
        description="Load a checkpoint stored in this transformers quantization format: Mxfp4Config "
        "(gpt-oss) or FineGrainedFP8Config; with model_quantization_config_kwargs {dequantize: true} its "
        "weights are unpacked to the training dtype",
    )
    model_quantization_config_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of the model_quantization_config class, e.g. {dequantize: true}",
    )
    # data
    datasets: list[DatasetSpec] = Field(
        min_length=1, description="Training data: concatenated, or mixed when a dataset sets weight"
    )
    test_datasets: list[DatasetSpec] = Field(
        default_factory=list, description="Evaluation data (instead of val_set_size)"
    )
    val_set_size: float = Field(
        0.0, ge=0, description="Held-out share (0 < x < 1) or row count (x >= 1) for evaluation"
    )
    shuffle: bool = Field(True, description="Shuffle the prepared training rows (by seed)")
    dataset_prepared_path: str | None = Field(
        None, description="Directory for the tokenized-dataset cache (reused when nothing changed)"
    )
    dataset_num_proc: int = Field(1, gt=0, description="Processes that format and tokenize rows")
    on_bad_rows: Literal["fail", "skip"] = Field(
        "fail", description="A malformed row stops the run (fail) or is skipped and counted (skip)"
    )
    sequence_len: int = Field(2048, gt=0, description="Max tokens per example")
    too_long: Literal["drop", "truncate"] = Field(
        "drop",
        description="Examples over sequence_len are dropped and counted, or truncated (raw-text "
        "formatters such as completion split them into chunks instead)",
    )
    filters: Filters = Field(
        default_factory=lambda: Filters.model_validate({}), description="Row filters (dedupe, regex, length)"
    )
    max_train_samples: int | None = Field(
        None, gt=0, description="Use only the first N training rows (after shuffling, when shuffle is on)"
    )
    max_eval_samples: int | None = Field(None, gt=0, description="Use only the first N eval rows")
    # packing and padding
    sample_packing: bool = Field(
        False,
        description="Pack examples into rows of sequence_len (best-fit decreasing, per epoch by seed); "
        "each example attends only to itself and the loss equals the unpacked one",
    )
    eval_sample_packing: bool | None = Field(None, description="Pack eval rows too (default: sample_packing)")
    pad_to_sequence_len: bool = Field(
        False, description="Pad every row to sequence_len (fixed shapes) instead of the batch's longest"
    )
    padding_free: bool | None = Field(
        None,
        description="Without packing: each micro-batch's examples run as one row without padding, "
        "each attending only to itself (the loss equals the padded batch's). Default: on where the "
        "attention kernel reads such rows (sdpa, flex_attention, flash_attention_2/3; not eager)",
    )
    group_by_length: bool = Field(
        False,
        description="Without packing: put examples of similar length in the same batches to cut padding",
    )
    sampler: Literal["random", "sequential"] = Field(
        "random",
        description="Order of the training rows in each epoch: random (a new order every epoch, by seed) or "
        "sequential (the prepared order, the same every epoch: with shuffle: false, the datasets' own "
        "order, a curriculum; Axolotl's curriculum_sampling)",
    )
    # batch and schedule
    micro_batch_size: int = Field(
        1, gt=0, description="Examples (packed rows with sample_packing) per device per forward pass"
    )
    eval_batch_size: int | None = Field(None, gt=0, description="Default: micro_batch_size")
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after N optimizer steps")
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler: Literal[SCHEDULERS] = "cosine"  # type: ignore[valid-type]
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warmup as a share of steps")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup as a number of steps")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    seed: int = Field(42, ge=0, lt=2**32, description="Seed for shuffling, packing and initialization")
    # precision and memory
    bf16: bool | Literal["auto"] = Field(
        False,
        description="bfloat16 mixed precision; auto: on where the machine that trains has a GPU with bf16 "
        "(decided when the run starts, recorded in config.resolved.yml), else fp32",
    )
    fp16: bool = Field(False, description="float16 mixed precision (needs a GPU); not with bf16")
    tf32: bool | Literal["auto"] = Field(
        False,
        description="TF32 matmuls on NVIDIA Ampere or newer; auto: on where the GPU that trains has them, "
        "else off (decided when the run starts)",
    )
    gradient_checkpointing: bool = False
    qat: Qat | None = Field(
        None,
        description="Quantization-aware training with torchao fake quantization: {weight_dtype: int4, "
        "activation_dtype: int8, group_size: 32}; the saved model stays full precision",
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: uniform noise of this scale on the input embeddings in training"
    )
    # logging, evaluation, saving
    logging_steps: float = Field(10, gt=0, description="Steps between logs; 0 < x < 1 = ratio")
    eval_strategy: Strategy | None = Field(
        None, description="Default: 'steps' when eval_steps is set, else 'epoch' with a val set"
    )
    eval_steps: float | None = Field(None, gt=0, description="Steps between evals; 0<x<1 = ratio")
    save_strategy: Strategy = "epoch"
    save_steps: float | None = Field(None, gt=0, description="Steps between saves; 0<x<1 = ratio")
    save_total_limit: int | None = Field(None, gt=0)
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop training when metric_for_best_model (default eval_loss) has not improved for this "
        "many evaluations in a row (needs evaluation: val_set_size or test_datasets)",
    )
    early_stopping_threshold: float = Field(
        0.0,
        ge=0,
        description="With early_stopping_patience: an evaluation improves only when it beats the best so "
        "far by more than this",
    )
    report_to: str | list[str] = Field("none", description="'none', 'wandb', 'tensorboard', 'mlflow', ...")
    training_curves: bool = Field(
        True, description="Draw output_dir/training_curves.png (loss, eval loss, lr, grad norm) at the end"
    )
    run_name: str | None = Field(
        None, description="Run name for wandb / mlflow / tensorboard (default: output_dir's folder name)"
    )
    # watchdogs
    loss_watchdog_threshold: float | None = Field(
        None,
        gt=0,
        description="Stop when the training loss stays above this for loss_watchdog_patience steps "
        "(a nan or inf loss always counts)",
    )
    loss_watchdog_patience: int = Field(
        3,
        gt=0,
        description="Steps in a row with a bad loss (nan, inf or above the threshold) that stop the run",
    )
    grad_norm_spike_factor: float | None = Field(
        10.0,
        gt=1,
        description="Warn when a step's gradient norm exceeds this many times the median of the last 20 "
        "steps (null: off)",
    )
    # output
    output_dir: str = Field(description="Where the final model, tokenizer and logs go")
    overwrite_output_dir: bool = Field(False, description="Replace an earlier run in output_dir")
    resume: str | None = Field(
        None,
        min_length=1,
        description="'auto': continue from the newest complete checkpoint in output_dir (start afresh "
        "when there is none), or a checkpoint directory",
    )
    _plugins: dict[str, Any] = PrivateAttr(default_factory=dict)

    def plugin(self, key: str) -> Any:
        """The plugin instance chosen for a plugin key (`config.plugin("distributed")`, a list for
        `callbacks`/`kernels`), with its typed options: what a plugin's `check()` reads for rules
        across plugins. Set by validation before any `check()` runs; None when not resolved."""
        return self._plugins.get(key)

    def bind_plugins(self, chosen: dict[str, Any]) -> None:
        """Record the chosen plugin instances by key (trainer.resolve.validate calls this)."""
        self._plugins = dict(chosen)

    # plugins: one key per row of trainer.config.kinds.PLUGIN_KINDS
    for _kind in PLUGIN_KINDS:
        if _kind.key is not None:
            __annotations__[_kind.key] = "list[PluginSpec]" if _kind.many else "PluginSpec"
            locals()[_kind.key] = (
                Field(default_factory=list, description=_kind.description)
                if _kind.many
                else Field(_kind.default, description=_kind.description)
            )
    del _kind
    # escape hatch
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other trl.SFTConfig field, checked against SFTConfig"
    )


RENAMED = {
    "resume_from_checkpoint": "resume: auto (the newest checkpoint in output_dir) or resume: PATH",
    "auto_resume_from_checkpoints": "resume: auto",
    "rl": "`method: {value}` (dpo, kto, orpo, simpo, grpo; ipo is method: {type: dpo, loss_type: ipo})",
    "reward_model": "`method: reward`",
    "dpo_beta": "`method: {type: dpo, beta: {value}}`",
    "rl_beta": "the method block's beta: `method: {type: ..., beta: {value}}`",
    "orpo_alpha": "`method: {type: orpo, beta: {value}}`",
    "simpo_gamma": "`method: {type: simpo, gamma: {value}}`",
    "cpo_alpha": "`method: {type: simpo, cpo_alpha: {value}}`",
    "dpo_label_smoothing": "`method: {type: dpo, label_smoothing: {value}}`",
    "kto_desirable_weight": "`method: {type: kto, desirable_weight: {value}}`",
    "kto_undesirable_weight": "`method: {type: kto, undesirable_weight: {value}}`",
    "trl": "the method block: `method: {type: grpo, num_generations: ..., rewards: [...]}`",
}
"""Keys other tools use (Axolotl, TRL) and what this tool calls them: named in the unknown-key error
(`{value}` stands for the value the config gave)."""
