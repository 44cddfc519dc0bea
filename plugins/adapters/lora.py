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
  fan_in_fan_out: false           # weights stored (in, out), as GPT-2's Conv1D (PEFT's fan_in_fan_out)
  load_in_8bit: false             # bitsandbytes 8-bit base
  unfrozen_parameters: ['model\\.norm\\.']  # base parameters trained in full beside the adapter
  target_parameters: [experts.gate_up_proj, experts.down_proj]  # LoRA on MoE experts' fused 3D weights
  quantize_moe_experts: false     # with load_in_8bit (or qlora's 4 bits): the expert weights too
  llama4_linearized_experts: false  # Llama 4: one nn.Linear per expert, reachable by target_modules

Mixture-of-experts models (transformers 5 holds experts as fused 3D parameters, not nn.Linear):
`target_parameters` puts PEFT's LoRA on raw parameters (PEFT's rule: a full parameter name or its
last dotted parts; `dropout` must be 0, its default then); `quantize_moe_experts` quantizes the
expert parameters after the load, as bitsandbytes does the linear layers; `llama4_linearized_experts`
rewrites Llama 4's fused experts as linear layers with the same outputs. See moe_experts.py.

Tokens added by the config's `tokens` / `special_tokens` train automatically: the input and output
embeddings join `modules_to_save` (trained in full, saved with the adapter; tied ones stay tied).
Reload with the saved tokenizer: `base.resize_token_embeddings(len(tokenizer))`, then
`PeftModel.from_pretrained(base, output_dir)`.

`unfrozen_parameters` (Axolotl's key, regexes searched in parameter names as under `full`): the base
parameters it matches train in full beside the adapter and are saved with it. PEFT trains and saves
whole modules (`modules_to_save`), so each match is mapped to the module that owns it, and a regex
that matches only some of a module's parameters is refused, as is a weight the base holds quantized
(qlora's 4-bit, load_in_8bit) or a module that already gets an adapter. Unfreezing a tied input
embedding or output layer trains both as one (PEFT's ensure_weight_tying).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import Field

from plugins.adapters.moe_experts import LINEARIZED_KEY, header_experts
from trainer.api import (
    Adapter,
    BaseModelInfo,
    ConfigErrors,
    Contribution,
    Options,
    Problem,
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
    fan_in_fan_out: bool = Field(
        False,
        description="PEFT's fan_in_fan_out: the targeted weights are stored (in, out), as GPT-2's Conv1D "
        "layers are (PEFT sets it for Conv1D and clears it for nn.Linear and bitsandbytes layers itself)",
    )
    load_in_8bit: bool = Field(
        False, description="Load the base model in 8 bits with bitsandbytes (kbit-training prepared)"
    )
    unfrozen_parameters: list[str] | None = Field(
        None,
        description="Regexes (re.search on base parameter names such as 'model.norm.weight'): the matching "
        "base parameters train in full beside the adapter and are saved with it (their modules join "
        "modules_to_save); a regex must match every parameter of the modules it touches",
    )
    target_parameters: list[str] | None = Field(
        None,
        description="Parameters (not modules) that get a LoRA update, e.g. the fused 3D expert weights of "
        "an MoE model: [experts.gate_up_proj, experts.down_proj] (PEFT's target_parameters: a full "
        "parameter name or its last dotted parts). Needs dropout 0 (its default then)",
    )
    quantize_moe_experts: bool = Field(
        False,
        description="Also quantize the MoE expert weights (3D parameters under a module named *expert*), "
        "which bitsandbytes' load leaves in 16 bits: 8 bits with load_in_8bit, 4 bits under qlora",
    )
    llama4_linearized_experts: bool = Field(
        False,
        description="Llama 4: rewrite each fused expert stack as one nn.Linear per expert "
        "(experts.gate_projs.N, up_projs.N, down_projs.N) after the load, so target_modules and qlora's "
        "4-bit quantization reach them",
    )

    def effective_dropout(self) -> float:
        """PEFT's parameter LoRA cannot drop its input out: with target_parameters an unset dropout is 0."""
        if self.target_parameters and "dropout" not in self.model_fields_set:
            return 0.0
        return self.dropout


def targeted_linears(targets: list[str] | str, base: BaseModelInfo) -> dict[str, tuple[int, int]]:
    """The linear layers (name -> (in, out)) target_modules selects, by PEFT's rules: 'all-linear'
    (every linear but the output layer), a regex string (fullmatch), or names."""
    linears = base.linear_layers()
    if targets == ALL_LINEAR:
        return linears
    if isinstance(targets, str):
        return {m: s for m, s in linears.items() if re.fullmatch(targets, m)}
    return {m: s for m, s in linears.items() if any(base.selects_module(m, t) for t in targets)}


def kbit_base_bytes(
    base: BaseModelInfo, linear_bytes: Callable[[tuple[int, ...]], float], experts: bool = False
) -> float:
    """A base loaded quantized by bitsandbytes and prepared by PEFT's prepare_model_for_kbit_training:
    each linear weight costs `linear_bytes(shape)`, every other weight (norms, embeddings) 4 bytes per
    value, as the preparation upcasts them to fp32. MoE expert weights (fused 3D parameters once
    loaded, which bitsandbytes' load leaves alone) count as linear weights only with `experts`
    (quantize_moe_experts), else as the other weights."""
    linear = {f"{module}.weight" for module in base.linear_layers()}
    held = set(header_experts(base.tensors))
    linear = linear | held if experts else linear - held
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


OUTPUT_LAYER = "lm_head"
"""The output layer's name in Hugging Face causal LMs: a tied one has no tensor in the checkpoint."""


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def unfrozen_modules(
    patterns: list[str],
    names: list[str],
    quantized: dict[str, str],
    adapted: set[str],
    tied: tuple[str, str] | None,
) -> tuple[list[str], list[str]]:
    """The modules `unfrozen_parameters` trains in full (for modules_to_save) and the problems.
    `names`: the base model's parameter names (a tied output layer's weight included); `quantized`:
    module -> how it is held (those cannot train in full); `adapted`: modules that get an adapter;
    `tied`: the (input embedding, output layer) module names when their weights are one tensor, both
    unfrozen when either is."""
    problems: list[str] = []
    matched: set[str] = set()
    for i, pattern in enumerate(patterns):
        hits = [name for name in names if re.search(pattern, name)]
        if not hits:
            problems.append(
                f"item {i} {pattern!r} matches no parameter of the base model, so it would train nothing; "
                f"names look like {names[:3] + names[-2:]}"
            )
        matched.update(hits)
    modules = sorted({_owner(name) for name in matched})
    for module in modules:
        own = [name for name in names if _owner(name) == module]
        missing = [name for name in own if name not in matched]
        if missing:
            problems.append(
                f"matches {sorted(set(own) - set(missing))} but not {missing} of the same module "
                f"'{module}': beside an adapter whole modules train and are saved (PEFT's "
                f"modules_to_save), so match all of its parameters (e.g. '{re.escape(module)}\\.')"
            )
        if module in quantized:
            problems.append(
                f"'{module}' is loaded {quantized[module]}: bitsandbytes holds its weight packed and frozen, "
                "so it cannot train in full (its LoRA adapter trains it: target_modules), or use adapter "
                "type lora without quantization"
            )
        elif module in adapted:
            problems.append(
                f"'{module}' already gets a LoRA adapter (target_modules): a module either trains through "
                "its adapter or in full, so leave it out of one of them"
            )
    if tied is not None and set(tied) & set(modules):
        modules = sorted({*modules, *tied})
    return modules, problems


def _adapted(opts: LoraOptions, base: BaseModelInfo) -> set[str]:
    """The linear layers that get an adapter (target_modules, layers_to_transform)."""
    targeted = set(targeted_linears(opts.target_modules, base))
    if opts.layers_to_transform is None:
        return targeted
    layers = set(opts.layers_to_transform)
    return {m for m in targeted if (hit := re.search(r"\.(\d+)\.", m)) is not None and int(hit[1]) in layers}


def _header_unfrozen(opts: LoraOptions, base: BaseModelInfo, bits: int | None) -> tuple[list[str], list[str]]:
    """unfrozen_modules from the checkpoint's header (validate time, the memory estimate)."""
    names = list(base.tensors)
    tied = None
    if base.tied_embeddings and f"{OUTPUT_LAYER}.weight" not in base.tensors:
        names.append(f"{OUTPUT_LAYER}.weight")  # one tensor in the file, two parameter names loaded
        embed = next((_owner(n) for n in base.tensors if re.search(r"embed_tokens|wte", n)), None)
        tied = (embed, OUTPUT_LAYER) if embed else None
    held = f"in {bits} bits" if bits else ""
    quantized = {module: held for module in base.linear_layers()} if bits else {}
    return unfrozen_modules(opts.unfrozen_parameters or [], names, quantized, _adapted(opts, base), tied)


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
            targets = opts.target_modules
            if opts.llama4_linearized_experts and isinstance(targets, list):  # modules made after the load
                targets = [t for t in targets if not re.search(r"(gate|up|down)_projs", t)]
            problems += unmatched_targets(targets, config.base_model)
        problems += self._check_unfrozen(config, sound_targets=not problems)
        problems += self._check_experts(config)
        return problems

    def _check_experts(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        """target_parameters, quantize_moe_experts and llama4_linearized_experts. Whether the named
        parameters and the experts exist is checked when the model is loaded: transformers fuses
        per-expert checkpoint tensors into 3D parameters on load, so the files' names are not the
        model's."""
        opts = self.options
        problems: list[str | tuple[str, str]] = []
        targets = opts.target_parameters
        if targets is not None:
            if not targets or any(not t.strip() for t in targets):
                problems.append(
                    ("target_parameters", "must name at least one parameter, e.g. experts.gate_up_proj")
                )
            if opts.effective_dropout():
                problems.append(
                    (
                        "dropout",
                        "must be 0 with target_parameters: PEFT's LoRA on a parameter cannot drop out its "
                        "input (leave dropout unset or set 0)",
                    )
                )
            if opts.use_dora:
                problems.append(("use_dora", "does not work with target_parameters (PEFT's ParamWrapper)"))
            if opts.fan_in_fan_out:
                problems.append(
                    ("fan_in_fan_out", "does not work with target_parameters (PEFT's ParamWrapper)")
                )
            if opts.init not in ("default", "gaussian"):
                problems.append(
                    ("init", f"{opts.init} reads a module's weight, which a targeted parameter has not: "
                     "use default or gaussian with target_parameters")
                )  # fmt: skip
        if opts.quantize_moe_experts and not self.quantized_bits():
            problems.append(
                (
                    "quantize_moe_experts",
                    "quantizes the experts as the rest of the base is: needs load_in_8bit: true, or adapter "
                    "type qlora (4 bits)",
                )
            )
        if opts.llama4_linearized_experts and self.quantized_bits() == 8:
            problems.append(
                (
                    "llama4_linearized_experts",
                    "cannot be combined with load_in_8bit (the new linear layers would stay 16-bit): use "
                    "adapter type qlora, or lora without load_in_8bit",
                )
            )
        if opts.llama4_linearized_experts and opts.quantize_moe_experts:
            problems.append(
                (
                    "quantize_moe_experts",
                    "with llama4_linearized_experts the experts are linear layers, which qlora quantizes "
                    "already: drop quantize_moe_experts",
                )
            )
        info = describe_base_model(config.base_model) if opts.llama4_linearized_experts else None
        if info is not None and any(LINEARIZED_KEY.search(name) for name in info.tensors):
            problems.append(
                (
                    "llama4_linearized_experts",
                    f"{config.base_model} already holds linearized experts (Axolotl's '-Linearized' Llama 4 "
                    "conversion), which transformers' Llama 4 cannot load: use the original checkpoint "
                    "(e.g. meta-llama/Llama-4-Scout-17B-16E-Instruct); trainer linearizes it after the load",
                )
            )
        elif info is not None and info.model_type not in ("llama4", "llama4_text"):
            problems.append(
                ("llama4_linearized_experts", f"is for Llama 4 (model_type llama4), not {info.model_type}")
            )
        return problems

    def _check_unfrozen(self, config: TrainConfig, sound_targets: bool) -> list[str | tuple[str, str]]:
        """unfrozen_parameters: valid regexes, and (when the model's files are on this machine) each
        one matches whole modules the base holds unquantized and no adapter targets."""
        patterns = self.options.unfrozen_parameters or []
        problems: list[str | tuple[str, str]] = []
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as err:
                problems.append(("unfrozen_parameters", f"item {i} {pattern!r} is not a valid regex: {err}"))
        info = describe_base_model(config.base_model) if patterns and not problems and sound_targets else None
        if info is not None:
            _, found = _header_unfrozen(self.options, info, self.quantized_bits())
            problems += [("unfrozen_parameters", message) for message in found]
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
            lora_dropout=opts.effective_dropout(),
            target_modules=target,
            target_parameters=list(opts.target_parameters) if opts.target_parameters else None,
            bias=opts.bias,
            modules_to_save=list(opts.modules_to_save) if opts.modules_to_save else None,
            use_dora=opts.use_dora,
            use_rslora=opts.use_rslora,
            init_lora_weights=INIT_WEIGHTS.get(opts.init, True),
            layers_to_transform=list(opts.layers_to_transform) if opts.layers_to_transform else None,
            fan_in_fan_out=opts.fan_in_fan_out,
            task_type="CAUSAL_LM",
        )
        self._peft_config = peft_config  # prepare_model adds the unfrozen_parameters' modules
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
        rows = lambda shape: math.prod(shape) // shape[-1]  # noqa: E731
        return kbit_base_bytes(
            base, lambda shape: math.prod(shape) + 4 * rows(shape), self.options.quantize_moe_experts
        )

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        """Only the adapters train: r*(in+out) per targeted linear, in fp32 (PEFT upcasts them), plus
        DoRA's magnitude vector; biases as `bias` says; `modules_to_save` and the modules of
        `unfrozen_parameters` as trainable copies (a tied embedding once)."""
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
        for name, shape in base.tensors.items():  # target_parameters: r per expert on each side
            if opts.target_parameters and any(
                name == t or name.endswith("." + t) for t in opts.target_parameters
            ):
                rank = opts.r * (shape[0] if len(shape) >= 3 else 1)
                trainable += [
                    TrainedTensor(f"{name}.lora_A", (rank, shape[-1]), 4, added=True),
                    TrainedTensor(f"{name}.lora_B", (shape[-2], rank), 4, added=True),
                ]
        saved = list(opts.modules_to_save or [])
        if opts.unfrozen_parameters:
            saved += _header_unfrozen(opts, base, self.quantized_bits())[0]
        copy_bytes = 4 if self.quantized_bits() else base.dtype_bytes  # kbit preparation upcasts them
        for name, shape in base.tensors.items():
            module = name.rsplit(".", 1)[0]
            if name.endswith(".bias") and (
                opts.bias == "all" or (opts.bias == "lora_only" and module in targeted)
            ):
                trainable.append(TrainedTensor(name, shape, base.dtype_bytes))
            if any(module == m or module.endswith("." + m) for m in saved):
                trainable.append(TrainedTensor(name, shape, copy_bytes, added=True))  # a trainable copy
        notes = [] if targeted or opts.target_parameters else ["no linear layer matches target_modules"]
        return Training(trainable, self.base_weight_bytes(base, config), notes)

    def prepare_model(self, model: Any, config: TrainConfig) -> Any:
        opts = self.options
        self._prepare_experts(model, config)
        if self.quantized_bits():
            from peft import prepare_model_for_kbit_training

            # Freezes the base, upcasts the non-quantized layers (norms, embeddings) to float32 and, with
            # gradient checkpointing, makes the inputs require grad so the adapters still get gradients.
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=config.gradient_checkpointing
            )
        if opts.unfrozen_parameters:
            self._unfreeze(model)
        return model

    def expert_quantization(self, config: TrainConfig) -> dict[str, Any]:
        """How the experts are quantized (quantize_moe_experts, linearized experts): 8 bits under lora."""
        return {"bits": 8}

    def _prepare_experts(self, model: Any, config: TrainConfig) -> None:
        """llama4_linearized_experts, quantize_moe_experts and the target_parameters check, on the
        loaded model before PEFT wraps it; a setting that finds nothing to act on is an error."""
        from plugins.adapters import moe_experts

        opts = self.options
        problems: list[Problem] = []
        quant = self.expert_quantization(config) if self.quantized_bits() else None
        if opts.llama4_linearized_experts:
            info = describe_base_model(config.base_model)  # downloaded by now: the validate-time check again
            if info is not None and any(LINEARIZED_KEY.search(name) for name in info.tensors):
                message = "the checkpoint already holds linearized experts, which the load left out"
                raise ConfigErrors([Problem(("adapter", "llama4_linearized_experts"), message)])
            if not moe_experts.linearize_llama4(model):
                problems.append(
                    Problem(
                        ("adapter", "llama4_linearized_experts"),
                        f"{type(model).__name__} has no Llama 4 fused experts (Llama4TextExperts) to "
                        "linearize",
                    )
                )
            elif quant is not None and quant["bits"] == 4:
                args = {k: quant[k] for k in ("quant_type", "double_quant", "compute_dtype", "storage")}
                moe_experts.quantize_linears_4bit(model, ".experts.", **args)
        if opts.quantize_moe_experts and quant is not None:
            args = {k: quant[k] for k in ("quant_type", "double_quant") if k in quant}
            if not moe_experts.quantize_experts(model, quant["bits"], **args):
                problems.append(
                    Problem(
                        ("adapter", "quantize_moe_experts"),
                        f"{type(model).__name__} has no expert weights to quantize (3D parameters under a "
                        "module named *expert*): its experts, if any, are linear layers, which the quantized "
                        "load handles already",
                    )
                )
        if opts.target_parameters and not problems:
            names = moe_experts.parameter_names(model)
            for target in moe_experts.unmatched_parameters(list(opts.target_parameters), names):
                experts = sorted(
                    {".".join(n.split(".")[-2:]) for n in names if moe_experts.EXPERT_MODULE.search(n)}
                )
                problems.append(
                    Problem(
                        ("adapter", "target_parameters"),
                        f"'{target}' names no parameter of {type(model).__name__} (a full name or its last "
                        f"dotted parts); its expert parameters: {', '.join(experts[:12]) or 'none'}",
                    )
                )
        if problems:
            raise ConfigErrors(problems)

    def _unfreeze(self, model: Any) -> None:
        """unfrozen_parameters on the loaded model (before PEFT wraps it): the owning modules join the
        PEFT config's modules_to_save by full name, so PEFT trains them in full and saves them with
        the adapter; a tied input embedding and output layer join together and stay tied."""
        names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
        quantized = {
            _owner(name): f"as {type(param).__name__} (bitsandbytes)"
            for name, param in model.named_parameters()
            if type(param).__name__ in ("Params4bit", "Int8Params")
        }
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
        tied = None
        if outputs is not None and outputs.weight is inputs.weight:
            by_module = {module: name for name, module in model.named_modules(remove_duplicate=False)}
            tied = (by_module[inputs], by_module[outputs])
        modules, problems = unfrozen_modules(
            self.options.unfrozen_parameters or [], names, quantized, set(), tied
        )
        if problems:
            raise ConfigErrors([Problem(("adapter", "unfrozen_parameters"), message) for message in problems])
        peft_config = self._peft_config
        peft_config.modules_to_save = sorted({*(peft_config.modules_to_save or []), *modules})
        if tied is not None and set(tied) & set(modules):
            peft_config.ensure_weight_tying = True

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
