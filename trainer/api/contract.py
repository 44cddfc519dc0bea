"""The plugin contracts: one small base class per kind, and the `Contribution` a plugin returns.

A plugin is a class with a `name`, an `Options` pydantic model (extra="forbid") and the few
methods of its kind. Module-level imports stay light (no torch): heavy imports go inside methods,
so that `trainer.cli.validate` can check a config without importing torch.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict

from trainer.api.base_model import BaseModelInfo
from trainer.config.kinds import PLUGIN_KINDS
from trainer.config.schema import TrainConfig


class Options(BaseModel):
    """Base for a plugin's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_BaseOptions = Options


@dataclass
class Contribution:
    """What one plugin adds to a run. The core merges these; two plugins setting one key differently
    is an error naming both.

    - model_kwargs: keyword arguments for `AutoModelForCausalLM.from_pretrained`
    - sft_args: `trl.SFTConfig` fields
    - peft_config: a `peft.PeftConfig` (at most one plugin may give one)
    - callbacks: `transformers.TrainerCallback` instances
    - data_collator: a collator (at most one plugin may give one)
    - trainable_dtype: "float32" keeps the trainable weights in fp32 once the trainer is built (TRL
      casts a quantized model's trainable weights to bfloat16, which rounds the adapters of a
      float32 or fp16 run)
    - convert_initialised_adapter: the PEFT adapter's init rewrote the targeted base weights (PiSSA,
      OLoRA): the final save converts it to a plain adapter that loads on the original base
    - weights_from_process_0: the distributed backend copies process 0's weights into every
      process when it shards the model (FSDP's cpu_ram_efficient_loading): only process 0 reads the
      checkpoint, the others build the model from its config on the meta device
      (trainer.runtime.meta_loading)
    """

    model_kwargs: dict[str, Any] = field(default_factory=dict)
    sft_args: dict[str, Any] = field(default_factory=dict)
    peft_config: Any = None
    callbacks: list[Any] = field(default_factory=list)
    data_collator: Any = None
    trainable_dtype: str | None = None
    convert_initialised_adapter: bool = False
    weights_from_process_0: bool = False


OptionsT = TypeVar("OptionsT", bound=Options)


class Plugin(Generic[OptionsT]):
    """Common base of every plugin kind, generic over its options: `class Lora(Adapter[LoraOptions])`
    makes `self.options` a `LoraOptions` and sets `Options = LoraOptions` (the model the core
    validates the block with)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[_BaseOptions]] = _BaseOptions
    requires: ClassVar[dict[str, str]] = {}
    """Importable modules this plugin needs, mapped to the pip extra that provides them."""
    options: OptionsT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            for arg in get_args(base):
                if isinstance(arg, type) and issubclass(arg, _BaseOptions):
                    cls.Options = arg
                    return

    def __init__(self, options: OptionsT | None = None):
        self.options = options if options is not None else self.Options()  # type: ignore[assignment]

    def missing_requirements(self) -> list[str]:
        """One line per missing optional dependency, naming the extra to install. A machine check
        (what is installed here), like `check_machine()`."""
        return [
            f"needs the '{module}' package: pip install 'trainer[{extra}]'"
            for module, extra in self.requires.items()
            if importlib.util.find_spec(module) is None
        ]

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        """Problems with the config itself for this plugin — wrong wherever it runs — found at
        validate time and when a run starts: a message, or (option name, message) to point at one
        of the plugin's options. What depends on the machine goes in `check_machine()`."""
        return []

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        """Problems of running this plugin under `config` on this machine: its hardware (no CUDA GPU,
        a compute capability too old) or what is installed on it (a GPU-only package missing).
        Called after `check()`, at validate time and when the run starts; `validate
        --skip-machine-checks` prints these as notes instead of errors, for a config written on one
        machine to train on another. Same form as `check()`; torch may be imported here (only when
        the answer needs it, so that a config that asks nothing of the hardware validates without
        torch)."""
        return []

    def contribute(self, config: TrainConfig) -> Contribution:
        """What this plugin adds to the run."""
        return Contribution()


@dataclass
class Segment:
    """A piece of a formatted example: `text` (or already-tokenized `ids`), trained on or not."""

    text: str = ""
    train: bool = False
    ids: list[int] | None = None


@dataclass
class Preference:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) completion: the rows of
    DPO, ORPO, SimPO and reward models. Prompt segments are context; every completion token is trained."""

    prompt: list[Segment]
    chosen: list[Segment]
    rejected: list[Segment]


@dataclass
class Judged:
    """A prompt and one completion judged desirable or not: KTO's unpaired rows."""

    prompt: list[Segment]
    completion: list[Segment]
    desirable: bool


@dataclass
class PromptOnly:
    """A prompt the model completes during training (GRPO); `columns` are passed to the reward
    functions by name, with the prompts and completions."""

    prompt: list[Segment]
    columns: dict[str, Any] = field(default_factory=dict)


DATA_SHAPES: dict[str, str] = {
    "sft": "segments of trained and untrained text (a list of Segment)",
    "preference": "prompt + chosen + rejected (Preference)",
    "unpaired": "prompt + completion + desirable label (Judged)",
    "prompt": "a prompt to complete, with columns for the reward functions (PromptOnly)",
}
"""What a formatter's `format()` returns, by its `data` name; a method lists the shapes it trains on."""


class RowError(ValueError):
    """A data row a formatter cannot use; `field` names the culprit. The core adds file and line."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Formatter(Plugin[OptionsT]):
    """Turns one data row into segments; the core tokenizes each segment, masks untrained ones with
    -100, and fits the result to `sequence_len`.

    - `add_bos`/`add_eos`: whether the tokenizer's BOS is prepended and EOS appended (EOS is
      trained, so the model learns to stop). A formatter whose text already holds them (a chat
      template) sets both False.
    - `split_long`: examples longer than `sequence_len` are cut into consecutive chunks (raw text)
      instead of being dropped or truncated by the config's `too_long` policy.
    """

    add_bos: bool = True
    add_eos: bool = True
    split_long: bool = False
    data: ClassVar[str] = "sft"
    """The shape `format()` returns (a key of DATA_SHAPES): a list of Segment for "sft", a
    Preference, a Judged or a PromptOnly."""

    def prepare(self, tokenizer: Any) -> None:
        """Called once with the run's tokenizer before any row is formatted. A formatter may keep
        the tokenizer (to render a chat template) or set its `chat_template`, which is then saved
        with the model."""

    def format(self, row: dict[str, Any]) -> Any:
        """One row as this formatter's `data` shape (a list of Segment for "sft")."""
        raise NotImplementedError

    @staticmethod
    def field(row: dict[str, Any], name: str, *, optional: bool = False) -> str:
        """Read a text field, raising RowError when missing or not a string."""
        value = row.get(name)
        if value is None:
            if optional:
                return ""
            raise RowError(f"missing field '{name}'", field=name)
        if not isinstance(value, str):
            raise RowError(f"field '{name}' must be a string, got {type(value).__name__}", field=name)
        return value


@dataclass(frozen=True)
class TrainedTensor:
    """One tensor that trains (it gets a gradient and optimizer state), as the memory estimate
    counts it."""

    name: str
    shape: tuple[int, ...]
    bytes_per_value: float
    """As it trains: PEFT keeps adapter weights in fp32 (4); a base weight its loaded dtype."""
    added: bool = False
    """Not one of the base model's weights (an adapter matrix, a trainable copy in modules_to_save):
    it adds to the weights held."""
    embedding: bool = False
    """An embedding matrix (bitsandbytes optimizers keep 32-bit state for these)."""
    projected_rank: int | None = None
    """GaLore / APOLLO optimizers keep this matrix's state on a projection of this rank."""


@dataclass
class Training:
    """What an adapter trains and what the loaded base model weighs, for the memory estimate."""

    trainable: list[TrainedTensor]
    base_weight_bytes: float
    """Bytes of the base model's weights as the adapter loads them (16-bit, 8-bit, 4-bit...)."""
    notes: list[str] = field(default_factory=list)


def full_training(base: BaseModelInfo, select: Callable[[str], bool] | None = None) -> Training:
    """Every base weight (or those `select(name)` keeps) trains, in the dtype it loads in."""
    trainable = [
        TrainedTensor(name, shape, base.dtype_bytes, embedding=bool(re.search(r"embed|wte|wpe", name)))
        for name, shape in base.tensors.items()
        if select is None or select(name)
    ]
    return Training(trainable, base_weight_bytes=float(base.num_params * base.dtype_bytes))


class Adapter(Plugin[OptionsT]):
    """Decides which weights train: model-load kwargs, a PEFT config, or freezing."""

    peft: ClassVar[bool] = False
    """It trains a PEFT adapter on frozen base weights (its `contribute()` gives a `peft_config`), so
    the model with the adapter switched off is the untrained base: preference methods use that as
    their reference instead of holding a second copy."""
    sets_optim_target_modules: ClassVar[bool] = False
    """It gives transformers' `optim_target_modules` (the matrices a GaLore optimizer projects), so
    a `galore_*` optimizer may run under it."""

    def quantized_bits(self) -> int | None:
        """Bits per base linear weight when this adapter loads the base model quantized (8, 4), or
        None. Backends that cannot partition quantized weights ask this."""
        return None

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        """Which tensors train and what the base weights cost, from the base model's shapes alone
        (no torch). Used by the memory estimate; the default counts every weight as trained, and
        says so in the estimate's notes."""
        training = full_training(base)
        training.notes.append(
            f"adapter '{self.name}' does not say what it trains (Adapter.training): counted as full training"
        )
        return training

    def prepare_model(self, model: Any, config: TrainConfig) -> Any:
        """Adjust the loaded model before it reaches SFTTrainer (default: unchanged)."""
        return model

    def create_optimizer(self, model: Any, args: Any) -> Any | None:
        """An optimizer for the model as SFTTrainer wrapped it (PEFT applied), or None for the one
        `optimizer:` names. LoRA+ uses this for its per-matrix learning rates."""
        return None


class Attention(Plugin[OptionsT]):
    """Chooses the attention kernel (usually a model-load kwarg).

    `packed_inputs` says how a packed row's examples are kept from attending to each other:
    "mask_4d" (a block-diagonal 4D mask; `additive_mask` for kernels that add it to the scores) or
    "position_ids" (a flattened batch whose restarting position ids the kernel reads, as
    flash-attention's varlen path does). None: the kernel cannot isolate them, and
    `sample_packing` is refused with it. `keeps_scores`: the kernel materialises each layer's
    sequence x sequence attention scores for the backward pass (eager does; fused kernels do not),
    which the memory estimate counts.
    """

    packed_inputs: ClassVar[str | None] = None
    additive_mask: ClassVar[bool] = False
    keeps_scores: ClassVar[bool] = False


@dataclass(frozen=True)
class Sharding:
    """How a distributed backend splits the model state over its processes, in the ZeRO paper's
    terms: which of the weights, gradients and optimizer state each process holds only a 1/`over`
    share of (stage 1: optimizer; 2: + gradients; 3: + weights), and what lives in CPU RAM instead
    of on the device. The default is a full replica per process (DDP, one process)."""

    weights: bool = False
    gradients: bool = False
    optimizer: bool = False
    over: int = 1
    """Processes the sharded parts are split over (the world size, or one node's for hybrid)."""
    optimizer_offloaded: bool = False
    weights_offloaded: bool = False
    fp32_partitions: bool = False
    """DeepSpeed's ZeRO optimizer (stages 1-3): the module is cast to the training dtype (16-bit under
    bf16/fp16), so the weights and their gradients are held in it, and the optimizer steps an fp32
    copy of this process's 1/over partition of the trainable weights, made in every precision (fp32
    too): deepspeed/runtime/zero/stage_1_and_2.py `single_partition_of_fp32_groups`, stage3.py
    `fp32_partitioned_groups_flat`. The ZeRO paper (Rajbhandari et al. 2020, sec. 3.1) counts that
    copy in its K = 12 bytes of mixed-precision Adam state. Stages 1-2 cut the partitions from the
    flattened weights; a tensor a boundary cuts keeps its whole gradient in each partition holding
    part of it (`grads_in_partition` is sized by `params_in_partition`)."""
    resting_shard: bool = False
    """FSDP SHARD_GRAD_OP: the weights are whole from the forward through the backward pass (gathered)
    and kept as this process's 1/over shard besides (the shard is what the optimizer steps, in the
    checkpoint's dtype): each process holds the whole weights plus its shard."""

    @property
    def stage(self) -> int:
        return 3 if self.weights else 2 if self.gradients else 1 if self.optimizer else 0


class Distributed(Plugin[OptionsT]):
    """Chooses how many processes run and how they talk."""

    def world_size(self) -> int:
        """Processes the run wants in total (1 = single process)."""
        return 1

    def processes_per_node(self) -> int:
        """Processes this backend runs on each machine."""
        return 1

    def sharding(self) -> Sharding:
        """What each process holds of the model state (the memory estimate uses it)."""
        return Sharding()

    def apply_environment(self, environ: Mapping[str, str], given: set[str]) -> list[str]:
        """Take the launch settings a cluster's environment gives (torchrun's `NNODES`, `NODE_RANK`,
        ...) except those in `given` (set on the command line); one note per setting taken. Called
        before the train command starts the processes itself. Default: nothing to take."""
        return []

    def launcher_args(self) -> list[str]:
        """torchrun arguments that start the processes (used when not already launched)."""
        return []

    def init_processes(self) -> None:
        """Called in every process of a launched run once its process group is up, before the model
        loads (DeepSpeed sets up its own communication here, which ZeRO-3 needs to load sharded)."""


class Callback(Plugin[OptionsT]):
    """Adds `transformers.TrainerCallback`s to the run."""


class Kernel(Plugin[OptionsT]):
    """Swaps model modules or the loss for faster fused kernels.

    A kernel plugin contributes the switches that make transformers (or TRL) apply its kernels to
    the loaded model, e.g. `sft_args={"use_liger_kernel": True, ...}`; it does not patch anything
    at import time or in `contribute()`. Kernels are usually GPU-only: say so from `check_machine()`.
    """


class Method(Plugin[OptionsT]):
    """The training objective: which TRL trainer runs, on which data shapes, under which settings.

    The core prepares the data (one of `data`), loads the model (`model`), merges the other
    plugins' contributions and builds `trainer()`'s trainer with its config class filled from the
    config's own keys plus `trainer_args()`. Every combination a method cannot run is refused in
    `check()` (with the reason), at validate time.
    """

    data: ClassVar[tuple[str, ...]] = ("sft",)
    """The dataset shapes it trains on (DATA_SHAPES keys); a dataset whose formatter gives another
    is refused. KTO takes "preference" rows too (each pair becomes a desirable and an undesirable row)."""
    packing: ClassVar[bool] = False
    """It runs `sample_packing` / `padding_free` batches (each sequence attending only to itself)."""
    model: ClassVar[str] = "causal_lm"
    """"causal_lm" (AutoModelForCausalLM) or "sequence_classification" (a one-score head on the base)."""
    metrics: ClassVar[tuple[str, ...]] = ()
    """Logged metrics drawn in training_curves.png besides the loss (e.g. "rewards/margins")."""

    def trainer(self) -> tuple[type, type]:
        """(TRL trainer class, its config class), imported from where the installed TRL has them."""
        raise NotImplementedError

    def trainer_args(self, config: TrainConfig) -> dict[str, Any]:
        """Fields of the trainer's config class that this method's options set."""
        return {}

    def reference(self, peft: bool) -> str | None:
        """The reference model the objective compares the policy with, given whether the adapter is a
        PEFT adapter: "copy" (the core loads a frozen copy of the base as it loads the model, added
        tokens and all, and passes it as `ref_model`), "adapter_off" (the PEFT model with its
        adapter switched off), "before_training" (the model itself scores the data once before it
        trains) or None (reference-free)."""
        return None

    def prepare_columns(self, dataset: Any, args: Any) -> Any:
        """The prepared `datasets.Dataset` (the columns of the data shape, trainer.data.shapes) as
        the trainer reads it, given the trainer's config; default unchanged."""
        return dataset

    def rewards(self) -> list[str]:
        """Names of `trainer.rewards` entry points this method calls; the core loads each and passes
        the callables to the trainer as `reward_funcs`."""
        return []


class Reward:
    """The `trainer.rewards` kind: an entry point names a callable with TRL's reward-function
    signature, `fn(prompts, completions, **columns) -> list[float | None]` (a TRL user's function
    works as it is). No subclassing: a plain function is a reward plugin."""


class EvalContext:
    """What an eval plugin measures with, given by the core (training's `evals:` before and after
    training, or `trainer evaluate`): the model as it stands, its tokenizer, the run's config and
    the core's helpers, so that a plugin does not re-implement data encoding or generation."""

    config: TrainConfig
    model: Any
    tokenizer: Any

    def eval_rows(self) -> Any:
        """The run's eval split (`val_set_size` or `test_datasets`) encoded exactly as training
        encodes it (`input_ids`, `labels` with -100 where no loss); None when it has none."""
        raise NotImplementedError

    def loss(self, rows: Any, batch_size: int) -> tuple[float, int]:
        """(summed cross-entropy, trained tokens) of `rows` under the model: trained tokens only."""
        raise NotImplementedError

    def generate(
        self, prompts: list[Any], *, max_new_tokens: int, system: str | None = None, batch_size: int = 8
    ) -> list[str]:
        """Greedy answers to prompts (strings or chat messages), rendered as the run was trained."""
        raise NotImplementedError

    def metric(self, name: str) -> Callable[..., Any]:
        """The installed `trainer.metrics` function called `name`."""
        raise NotImplementedError

    def prompt_format(self, chat: bool | None = None) -> tuple[bool, list[str]]:
        """(whether prompts go through the chat template: as the run was trained unless `chat`
        says; the texts besides EOS that end an answer: the run's end-of-turn markers)."""
        raise NotImplementedError


class Eval(Plugin[OptionsT]):
    """One measurement of a model, listed under `evals:` (run before and after training) or run by
    `trainer evaluate`: `run()` returns {metric name: value}; `check()` validates at config time."""

    def run(self, context: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        """The `trainer.metrics` it calls, by name: the core checks each is installed (the
        option listing them is `metrics`)."""
        return []


class Metric:
    """The `trainer.metrics` kind: an entry point names a callable
    `fn(predictions, references, **columns) -> float | list[float]` (a list is averaged): the
    generation eval scores greedy answers against reference answers with it. No subclassing."""


def _bases() -> dict[str, type[Any]]:
    here = globals()
    return {kind.group: here[kind.base] for kind in PLUGIN_KINDS}


BASES: dict[str, type[Any]] = _bases()
"""Each kind's base class, by entry-point group (from trainer.config.kinds.PLUGIN_KINDS)."""
