"""`ia3`: IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning") through PEFT: one learned scaling vector per targeted linear layer, nothing else.

    adapter:
      type: ia3
      target_modules: [k_proj, v_proj, down_proj]   # linear layers to scale (PEFT's name rule)
      feedforward_modules: [down_proj]              # those among them scaled on their input

A targeted layer's output is multiplied by its vector (out_features values); a feedforward layer's
input is (in_features values). The vectors start at 1 (the base model's own outputs), train in fp32,
and are saved as a PEFT adapter (`adapter_model.safetensors`, a few KB) that
`peft.PeftModel.from_pretrained(base, output_dir)` loads and `python -m trainer.cli.merge` folds
into the weights.
"""

from __future__ import annotations

import re

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

# Embedding matrices are 2-D too, but IA3 scales linear layers only (PEFT refuses an Embedding).
EMBEDDING = re.compile(r"(^|\.)(embed_tokens|embed_positions|word_embeddings|wte|wpe)$")


class Ia3Options(Options):
    target_modules: list[str] = Field(
        ["k_proj", "v_proj", "down_proj"],
        min_length=1,
        description="Linear layers IA3 scales: a module's full name or its last dotted parts (PEFT's rule)",
    )
    feedforward_modules: list[str] = Field(
        ["down_proj"],
        description="Those among target_modules that are MLP layers: scaled on their input, not output",
    )


def scalable_layers(base: BaseModelInfo) -> dict[str, tuple[int, int]]:
    """module name -> (in, out) of every layer IA3 can scale: each 2-D `.weight` but the embeddings
    (the output layer included, unlike `BaseModelInfo.linear_layers()`)."""
    layers = {}
    for name, shape in base.tensors.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if not EMBEDDING.search(module):
            layers[module] = (shape[1], shape[0])
    return layers


def is_feedforward(module: str, feedforward_modules: list[str]) -> bool:
    """PEFT's IA3 rule for a feedforward layer: its full name ends with an entry (no dot needed)."""
    return any(module.endswith(entry) for entry in feedforward_modules)


class Ia3(Adapter[Ia3Options]):
    """IA3: learned scaling vectors on a few linear layers (PEFT); the base weights stay frozen."""

    name = "ia3"
    peft = True

    def check(self, config: TrainConfig) -> list[str | tuple[str, str]]:
        opts = self.options
        problems: list[str | tuple[str, str]] = [
            ("feedforward_modules", f"'{m}' is not in target_modules (PEFT needs a subset)")
            for m in opts.feedforward_modules
            if m not in opts.target_modules
        ]
        info = describe_base_model(config.base_model)  # None: the files are not on this machine
        if info is None:
            return problems
        layers = scalable_layers(info)
        names = sorted({module.rsplit(".", 1)[-1] for module in layers})
        named = f"{config.base_model}'s linear layers are named {', '.join(names)}"
        for target in opts.target_modules:
            if not info.selects(target):
                problems.append(("target_modules", f"'{target}' matches no module; {named}"))
            elif not any(info.selects_module(module, target) for module in layers):
                problems.append(
                    (
                        "target_modules",
                        f"'{target}' is not a linear layer (IA3 scales linear layers); {named}",
                    )
                )
        return problems

    def contribute(self, config: TrainConfig) -> Contribution:
        from peft import IA3Config  # heavy import: inside the method

        opts = self.options
        return Contribution(
            peft_config=IA3Config(
                task_type="CAUSAL_LM",
                target_modules=list(opts.target_modules),
                feedforward_modules=list(opts.feedforward_modules),
            )
        )

    def training(self, base: BaseModelInfo, config: TrainConfig) -> Training:
        """For the memory estimate: one fp32 vector per targeted layer, `(1, in)` for a feedforward
        layer and `(out, 1)` otherwise (PEFT's shapes); the base loads as it is and stays frozen."""
        opts = self.options
        trainable = [
            TrainedTensor(
                f"{module}.ia3_l",
                (1, inp) if is_feedforward(module, opts.feedforward_modules) else (out, 1),
                4,  # PEFT keeps adapter weights in fp32, even on a 16-bit base
                added=True,
            )
            for module, (inp, out) in scalable_layers(base).items()
            if any(base.selects_module(module, target) for target in opts.target_modules)
        ]
        values = sum(t.shape[0] * t.shape[1] for t in trainable)
        notes = [f"ia3: {len(trainable)} scaling vectors, {values} values"]
        if not trainable:
            notes = ["ia3: no linear layer matches target_modules"]
        return Training(trainable, base_weight_bytes=float(base.num_params * base.dtype_bytes), notes=notes)
