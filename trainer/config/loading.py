"""The model-loading keys `model_quantization_config` (+ `_kwargs`) and `overrides_of_model_config`
(Axolotl's model_config): the checks validate makes without torch, and `apply_overrides`, which every
loader of a run's base model uses (training, merge, inference).

transformers' quantization config classes cannot be imported without torch, so their arguments are
listed here (a test keeps them equal to the installed classes' signatures); an argument they do not
name is refused (the classes themselves would swallow it in **kwargs and ignore it).
"""

from __future__ import annotations

from typing import Any

from trainer.config.errors import ConfigErrors, Problem

QUANTIZATION_CONFIGS: dict[str, tuple[str, ...]] = {
    "Mxfp4Config": ("modules_to_not_convert", "dequantize"),
    "FineGrainedFP8Config": ("activation_scheme", "weight_block_size", "dequantize", "modules_to_not_convert",
                             "modules_to_convert", "scale_fmt", "expert_dtype"),
}  # fmt: skip
"""transformers 5.25 quantization config class -> the arguments of its __init__ (not **kwargs)."""


def quantization_problems(name: str | None, kwargs: dict[str, Any]) -> list[Problem]:
    """A kwarg the chosen class does not take, or kwargs with no class."""
    key = "model_quantization_config_kwargs"
    if name is None:
        if kwargs:
            return [Problem((key,), "has no effect without model_quantization_config")]
        return []
    known = QUANTIZATION_CONFIGS[name]
    problems = []
    for arg, value in kwargs.items():
        if arg not in known:
            problems.append(
                Problem((key, arg), f"is not an argument of {name} (it takes {', '.join(known)})")
            )
        elif arg == "dequantize" and not isinstance(value, bool):
            problems.append(Problem((key, arg), f"must be true or false (got {value!r})"))
    if name == "Mxfp4Config" and kwargs.get("dequantize") is not True:
        problems.append(
            Problem(
                (key,),
                "MXFP4 weights cannot be trained as they are (transformers marks them not trainable): "
                "give {dequantize: true} to load them unpacked to the training dtype",
            )
        )
    return problems


def override_problems(overrides: dict[str, Any] | None) -> list[Problem]:
    """A key of `overrides_of_model_config` that cannot name a config attribute. Whether the model's
    config has it is known only from its class (importing it imports torch), so the load checks that
    (trainer.runtime.model_loading.apply_overrides), before any weight is read."""
    return [
        Problem(("overrides_of_model_config", key), "is not a config attribute name")
        for key in overrides or {}
        if not key.isidentifier()
    ]


def apply_overrides(loaded: Any, overrides: dict[str, Any]) -> None:
    """Set each override on `loaded` (a transformers config); ConfigErrors naming every key it lacks
    (setting one would change nothing)."""
    missing = [key for key in overrides if not hasattr(loaded, key)]
    if missing:
        name = type(loaded).__name__
        raise ConfigErrors(
            [
                Problem(
                    ("overrides_of_model_config", key),
                    f"is not an attribute of the model's {name}, so setting it would change nothing"
                    + _hint(loaded, key),
                )
                for key in missing
            ]
        )
    for key, value in overrides.items():
        setattr(loaded, key, value)


def overridden_config(base_model: str, overrides: dict[str, Any], trust_remote_code: bool) -> Any:
    """`base_model`'s transformers config with `overrides` set on it (see apply_overrides)."""
    from transformers import AutoConfig

    loaded = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    apply_overrides(loaded, overrides)
    return loaded


def _hint(loaded: Any, key: str) -> str:
    rope = getattr(loaded, "rope_parameters", None)
    if isinstance(rope, dict) and key in rope:
        return (
            f" (transformers 5 keeps it in rope_parameters: give the whole rope_parameters mapping: {rope})"
        )
    return ""
