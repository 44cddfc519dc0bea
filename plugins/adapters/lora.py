"""`lora`: low-rank adapters through PEFT; the output is a PEFT adapter that loads on the base.

adapter:
  type: lora
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: all-linear      # or a list like [q_proj, v_proj], or a regex string
  use_dora: false
  use_rslora: false
  init: default                   # gaussian, pissa, olora
  loraplus_lr_ratio: 16           # LoRA+: B matrices train at learning_rate * 16
  layers_to_transform: [0, 1]
  load_in_8bit: false             # bitsandbytes 8-bit base

Tokens added by the config's `tokens` / `special_tokens` train automatically: the input and output
embeddings join `modules_to_save` (trained in full, saved with the adapter; tied ones stay tied).
Reload with the saved tokenizer: `base.resize_token_embeddings(len(tokenizer))`, then
`PeftModel.from_pretrained(base, output_dir)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import Field

from trainer.api import (
    Adapter,
    BaseModelInfo,
    Contribution,
    Options,
    TrainConfig,
    TrainedTensor,
    Training,
    describe_base_model,
)

ALL_LINEAR = "all-linear"

# init -> LoraConfig.init_lora_weights
INIT_WEIGHTS: dict[str, Any] = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# Inits that rewrite the targeted base weights into a residual: the final adapter is converted back
# to a plain LoRA (rank 2r) so that it loads on the original base.
MUTATING_INITS = ("pissa", "olora")


class LoraOptions(Options):
    r: int = Field(16, gt=0, description="Rank of the update matrices")
    alpha: float = Field(32, gt=0, description="Scaling numerator (scale = alpha / r, or alpha / sqrt(r))")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input")
    target_modules: list[str] | str = Field(
        ALL_LINEAR,
        description="'all-linear', module names such as [q_proj, v_proj], or one regex string matched "
        "against the full module name (PEFT's rule), e.g. '.*\\.(q_proj|v_proj)'",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train")
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter, e.g. [lm_head]"
    )
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (a trained magnitude vector)")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r")
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = Field(
        "default",
        description="Adapter init: default (B = 0), gaussian, pissa or olora (start from the weights' "
        "principal / orthonormal directions; the output is converted to a plain LoRA of rank 2r). "
        "loftq is refused: its quantized residual base cannot be saved yet",
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: the B matrices train at learning_rate * this ratio (e.g. 16)"
    )
    layers_to_transform: list[int] | None = Field(
        None, description="Only these layer indices get adapters (not with a regex target_modules)"
    )
    load_in_8bit: bool = Field(
        False, description="Load the base model in 8 bits with bitsandbytes (kbit-training prepared)"
    )


def targeted_linears(targets: list[str] | str, base: BaseModelInfo) -> dict[str, tuple[int, int]]:
    """The linear layers (name -> (in, out)) target_modules selects, by PEFT's rules: 'all-linear'
    (every linear but the output layer), a regex string (fullmatch), or names."""
    linears = base.linear_layers()
    if targets == ALL_LINEAR:
        return linears
    if isinstance(targets, str):
        return {m: s for m, s in linears.items() if re.fullmatch(targets, m)}
    return {m: s for m, s in linears.items() if any(base.selects_module(m, t) for t in targets)}


def kbit_base_bytes(base: BaseModelInfo, linear_bytes: Callable[[tuple[int, ...]], float]) -> float:
    """A base loaded quantized by bitsandbytes and prepared by PEFT's prepare_model_for_kbit_training:
    each linear weight costs `linear_bytes(shape)`, every other weight (norms, embeddings) 4 bytes per
    value, as the preparation upcasts them to fp32."""
    linear = {f"{module}.weight" for module in base.linear_layers()}
    return float(
        sum(
            linear_bytes(shape) if name in linear else 4 * math.prod(shape)
            for name, shape in base.tensors.items()
        )
    )


def _is_regex(target: list[str] | str) -> bool:
    return isinstance(target, str) and target != ALL_LINEAR


def unmatched_targets(targets: list[str] | str, base_model: str) -> list[str | tuple[str, str]]:
    """target_modules entries that match no module of the base model, as PEFT matches them (a name
    equal to the entry or ending in ".entry"; a regex string must fullmatch a module name). Checked
    when the model's files are on this machine; a misspelt entry would otherwise train the rest."""
    info = describe_base_model(base_model)
    if info is None or targets == ALL_LINEAR:
        return []
    modules = info.modules()
    layers = sorted({name.rsplit(".", 1)[-1] for name in info.linear_layers()})
    named = f"{base_model}'s linear layers are named {', '.join(layers)}"
    if isinstance(targets, str):
        if any(re.fullmatch(targets, module) for module in modules):
            return []
        return [("target_modules", f"the regex '{targets}' matches no module name; {named}")]
    return [("target_modules", f"'{t}' matches no module; {named}") for t in targets if not info.selects(t)]


LoraOptionsT = TypeVar("LoraOptionsT", bound=LoraOptions)


class Lora(Adapter[LoraOptionsT]):
    name = "lora"
    peft = True
    Options = LoraOptions

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        opts = self.options
        problems: list[str | tuple[str, str]] = []
        if isinstance(opts.target_modules, str) and _is_regex(opts.target_modules):
            try:
                re.compile(opts.target_modules)
            except re.error as err:
                problems.append(("target_modules", f"not a valid regular expression: {err}"))
            if opts.layers_to_transform is not None:
                problems.append(
                    ("layers_to_transform", "cannot be used with a regex target_modules (PEFT's rule)")
                )
        elif isinstance(opts.target_modules, list) and not opts.target_modules:
            problems.append(("target_modules", "must name at least one module"))
        if opts.layers_to_transform is not None and any(i < 0 for i in opts.layers_to_transform):
            problems.append(("layers_to_transform", "layer indices must be >= 0"))
        if opts.init == "loftq":
            problems.append(
                (
                    "init",
                    "loftq rewrites the base weights into a quantized residual that its adapter needs, and "
                    "trainer cannot save that base yet, so the output would not load on base_model; use "
                    "pissa or olora (converted to a plain LoRA on save) or default",
                )
            )
        if opts.init in MUTATING_INITS and opts.load_in_8bit:
            problems.append(("init", f"{opts.init} needs full-precision base weights, not load_in_8bit"))
        if opts.init in MUTATING_INITS and opts.use_dora:
            problems.append(("init", f"{opts.init} cannot be converted back to a plain LoRA with use_dora"))
        if opts.loraplus_lr_ratio is not None and opts.loraplus_lr_ratio < 1:
            problems.append(("loraplus_lr_ratio", "should be >= 1 (the B matrices learn faster than A)"))
        if not any(isinstance(p, tuple) and p[0] == "target_modules" for p in problems):
            problems += unmatched_targets(opts.target_modules, config.base_model)
        return problems

    def check_machine(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        import importlib.util

        if getattr(self.options, "load_in_8bit", False) and importlib.util.find_spec("bitsandbytes") is None:
            return [("load_in_8bit", "needs the 'bitsandbytes' package: pip install 'trainer[qlora]'")]
        return []

    def contribute(self, config: TrainConfig) -> Contribution:
        from peft import LoraConfig

        opts = self.options
        target = opts.target_modules if isinstance(opts.target_modules, str) else list(opts.target_modules)
        peft_config = LoraConfig(
            r=opts.r,
            lora_alpha=opts.alpha,  # type: ignore[arg-type]
            lora_dropout=opts.dropout,
            target_modules=target,
            bias=opts.bias,
            modules_to_save=list(opts.modules_to_save) if opts.modules_to_save else None,
            use_dora=opts.use_dora,
            use_rslora=opts.use_rslora,
            init_lora_weights=INIT_WEIGHTS.get(opts.init, True),
            layers_to_transform=list(opts.layers_to_transform) if opts.layers_to_transform else None,
            task_type="CAUSAL_LM",
        )
        contribution = Contribution(peft_config=peft_config)
        if opts.load_in_8bit:
            from transformers import BitsAndBytesConfig

            contribution.model_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        contribution.convert_initialised_adapter = opts.init in MUTATING_INITS
        return contribution

    def quantized_bits(self) -> int | None:
        return 8 if self.options.load_in_8bit else None

    def base_weight_bytes(self, base: BaseModelInfo, config: TrainConfig) -> float:
        """The base as loaded: with load_in_8bit each linear weight is 1 byte plus an fp32 scale per
        row (bitsandbytes LLM.int8), everything else as kbit_base_bytes says."""
        if not self.options.load_in_8bit:
            return float(base.num_params * base.dtype_bytes)
        return kbit_base_bytes(base, lambda shape: math.prod(shape) + 4 * shape[0])

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        """Only the adapters train: r*(in+out) per targeted linear, in fp32 (PEFT upcasts them), plus
        DoRA's magnitude vector; biases as `bias` says; `modules_to_save` as trainable copies."""
        opts = self.options
        targeted = targeted_linears(opts.target_modules, base)
        trainable: list[TrainedTensor] = []
        for module, (inp, out) in targeted.items():
            trainable += [
                TrainedTensor(f"{module}.lora_A", (opts.r, inp), 4, added=True),
                TrainedTensor(f"{module}.lora_B", (out, opts.r), 4, added=True),
            ]
            if opts.use_dora:
                trainable.append(TrainedTensor(f"{module}.lora_magnitude", (out,), 4, added=True))
        saved = list(opts.modules_to_save or [])
        for name, shape in base.tensors.items():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".bias") and (
                opts.bias == "all" or (opts.bias == "lora_only" and module in targeted)
            ):
                trainable.append(TrainedTensor(name, shape, base.dtype_bytes))
            if any(module == m or module.endswith("." + m) for m in saved):
                trainable.append(TrainedTensor(name, shape, base.dtype_bytes, added=True))  # a trainable copy
        notes = [] if targeted else ["no linear layer matches target_modules"]
        return Training(trainable, self.base_weight_bytes(base, config), notes)

    def prepare_model(self, model: Any, config: TrainConfig) -> Any:
        opts = self.options
        if opts.load_in_8bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.gradient_checkpointing
            )
        return model

    def create_optimizer(self, model: Any, args: Any) -> Any:
        """LoRA+ (when `loraplus_lr_ratio` is set): the configured optimizer with the B matrices at
        learning_rate * ratio. None = the trainer's usual optimizer."""
        opts = self.options
        if opts.loraplus_lr_ratio is None:
            return None
        from peft.optimizers import create_loraplus_optimizer
        from transformers import Trainer

        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        kwargs = dict(kwargs)
        lr = kwargs.pop("lr", args.learning_rate)
        return create_loraplus_optimizer(
            model,
            optimizer_cls,
            lr=lr,
            loraplus_lr_ratio=opts.loraplus_lr_ratio,
            loraplus_weight_decay=args.weight_decay,
            **kwargs,
        )
