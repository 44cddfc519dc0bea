"""What a plugin's contribution asks of a PEFT model around the trainer, done here so that plugins
need no framework internals: keep the trainable weights in a dtype (`trainable_dtype`), and convert
an adapter whose init rewrote the base weights back to a plain one on the final save
(`convert_initialised_adapter`)."""

from __future__ import annotations

import functools
import shutil
import tempfile
import weakref
from typing import Any

from transformers import TrainerCallback


class KeepTrainableDtype(TrainerCallback):
    """Puts the trainable weights back in `dtype` once the trainer is built. TRL's SFTTrainer casts
    the trainable weights of a quantized model to bfloat16 (the QLoRA recipe for bf16 runs); in a
    float32 or fp16 run that rounds the adapters for nothing, and the saved adapter, which PEFT
    loads in float32, would then not compute what the trained model did. `on_init_end` comes after
    that cast and before the optimizer exists (or loads a checkpoint)."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import torch

        wanted = getattr(torch, self.dtype)
        for param in model.parameters() if model is not None else ():
            if param.requires_grad and param.dtype != wanted and param.dtype.is_floating_point:
                # torch 2.x: assigning .data keeps the Parameter object the optimizer will be built on
                param.data = param.data.to(wanted)


class ConvertToPlainAdapter(TrainerCallback):
    """Saves the freshly initialised adapter (PiSSA, OLoRA), and makes the final save convert the
    trained one into a plain LoRA (rank 2r) that loads on the original base, with PEFT's
    `path_initial_model_for_weight_conversion`. Checkpoints stay unconverted: resuming needs them
    as trained."""

    def __init__(self) -> None:
        self.initial: str | None = None

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        folder = tempfile.mkdtemp(prefix="adapter-init-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        self.initial = f"{folder}/initial"
        model.save_pretrained(self.initial)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # transformers 5.x Trainer._save calls model.save_pretrained(dir, state_dict=..., ...) with no
        # way to pass PEFT's conversion argument, so the final save's method is bound with it.
        model.save_pretrained = functools.partial(
            type(model).save_pretrained, model, path_initial_model_for_weight_conversion=self.initial
        )
