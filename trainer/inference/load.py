"""Load a run folder for generation, as it was trained: a full fine-tune, a LoRA / DoRA adapter on
its base (no merge), a QLoRA adapter on its 4-bit base (the dequantized base when bitsandbytes cannot
load it here, said so), a merged model, a `checkpoint-N` of any of these, or a plain Hugging Face
model folder or hub id.

`inspect` reads files only (fast, torch-free) and raises LoadError for user mistakes; `load` then
builds the model and tokenizer. The prompt format follows the run: its chat template when the run's
tokenizer has one and the run's data went through a chat-capable formatter, raw text otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.config.paths import looks_local
from trainer.outputs.output_dir import RESOLVED_NAME

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PROBE = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]


class LoadError(Exception):
    """A user mistake (no such folder, an unfinished run, a reward model to generate with):
    reported without a traceback, exit status 2."""


@dataclass
class Source:
    """What a path holds, read from its files."""

    path: str
    kind: str  # "adapter" | "model" | "hub"
    base_model: str | None = None  # adapters: the base they apply to
    tokenizer_path: str = ""
    resolved: dict[str, Any] | None = None  # the run's config.resolved.yml, when it is a run
    adapter_config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The model's name as the server lists it: the folder's name (a checkpoint with its run's)."""
        if self.kind == "hub":
            return self.path
        path = Path(self.path).resolve()
        return f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint-") else path.name

    @property
    def trust_remote_code(self) -> bool:
        return bool((self.resolved or {}).get("trust_remote_code", False))


@dataclass
class Loaded:
    """A model ready to generate, with everything the commands need to talk to it."""

    model: Any
    tokenizer: Any
    source: Source
    description: str
    chat: bool  # prompts go through the chat template
    stop_token_ids: list[int]
    stop_strings: list[str]  # end-of-turn markers that are not one token in this vocabulary
    context_length: int | None
    device: Any
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise LoadError(f"cannot read {path}: {err}") from None
    return data if isinstance(data, dict) else None


def run_folder(path: Path) -> Path | None:
    """The run folder of `path`: itself, or its parent for a checkpoint-N inside a run."""
    for folder in (path, path.parent):
        if (folder / RESOLVED_NAME).is_file():
            return folder
    return None


def inspect(path: str, base_model: str | None = None) -> Source:
    """What `path` holds (files only); LoadError when it holds nothing loadable."""
    folder = Path(path)
    if not folder.exists():
        if looks_local(path):
            raise LoadError(f"{path}: no such directory")
        return Source(path=path, kind="hub", tokenizer_path=path)
    if not folder.is_dir():
        raise LoadError(f"{path}: not a directory (give a run's output_dir or a model folder)")
    names = set(os.listdir(folder))
    run = run_folder(folder)
    resolved = _read_yaml(run / RESOLVED_NAME) if run else None
    tokenizer_dir = next(
        (str(d) for d in (folder, run) if d is not None and (d / TOKENIZER_CONFIG).is_file()), ""
    )
    if ADAPTER_CONFIG in names:
        if not names & set(ADAPTER_WEIGHTS):
            weights = " or ".join(ADAPTER_WEIGHTS)
            raise LoadError(f"{path} has {ADAPTER_CONFIG} but no adapter weights ({weights})")
        try:
            adapter_config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LoadError(f"cannot read {folder / ADAPTER_CONFIG}: {err}") from None
        if str(adapter_config.get("task_type", "")).upper() == "SEQ_CLS":
            raise LoadError(
                f"{path} is a reward model (a sequence-classification adapter): it scores text, it does "
                "not generate"
            )
        named = adapter_config.get("base_model_name_or_path")
        if named and base_model is None and run is not None and resolved is not None:
            named = from_training_folder(named, run, resolved)
        base = base_model or named
        if not base:
            raise LoadError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; pass --base-model")
        if base_model is None and looks_local(base) and not os.path.isdir(base):
            raise LoadError(
                f"the base model '{base}' named in {ADAPTER_CONFIG} does not exist (moved?); "
                "pass --base-model PATH"
            )
        source = Source(
            path=path,
            kind="adapter",
            base_model=base,
            tokenizer_path=tokenizer_dir or base,
            resolved=resolved,
            adapter_config=adapter_config,
        )
        if base_model is not None and named and base_model != named:
            source.notes.append(f"base model overridden: {base_model} (the adapter names {named})")
        return source
    if MODEL_CONFIG in names and names & set(MODEL_WEIGHTS):
        try:
            config = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LoadError(f"cannot read {folder / MODEL_CONFIG}: {err}") from None
        architectures = config.get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise LoadError(
                f"{path} is a sequence-classification model (a reward model): it scores text, "
                "it does not generate"
            )
        return Source(path=path, kind="model", tokenizer_path=tokenizer_dir or path, resolved=resolved)
    if resolved is not None:
        checkpoints = sorted((n for n in names if n.startswith("checkpoint-")), key=_step)
        hint = f"; its checkpoints: {', '.join(checkpoints)} (give one of them)" if checkpoints else ""
        raise LoadError(f"{path} holds no model or adapter weights: the run did not finish{hint}")
    raise LoadError(
        f"{path} is neither a trainer run nor a model folder (no {ADAPTER_CONFIG}, "
        f"no {MODEL_CONFIG} with weights)"
    )


def from_training_folder(name: str, run: Path, resolved: dict[str, Any]) -> str:
    """A relative local path a run recorded (its base model), made absolute against the folder the
    run was started from, found as the run folder's path less the `output_dir` it was given
    (`/home/me/proj/runs/a` with output_dir `runs/a`: `/home/me/proj`). Used from any folder, the
    run then finds its own base, not one that happens to sit at the same relative path here."""
    output_dir = resolved.get("output_dir")
    if not isinstance(output_dir, str) or os.path.isabs(name):
        return name
    parts = Path(os.path.normpath(output_dir)).parts
    folder = run.resolve()
    if os.path.isabs(output_dir) or ".." in parts or folder.parts[-len(parts) :] != parts:
        return name
    root = Path(*folder.parts[: -len(parts)])
    candidate = root / name
    return str(candidate) if candidate.exists() else name


def _step(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def chat_by_default(source: Source, tokenizer: Any) -> tuple[bool, str]:
    """Whether prompts go through the chat template, and why. The template is used when the
    tokenizer has one, except for a run whose datasets all went through formatters that have no
    chat template option (raw-text formats such as prompt_completion or alpaca): that model was
    trained on raw prompts, whatever template its base tokenizer carries."""
    if not getattr(tokenizer, "chat_template", None):
        return False, "raw text (the tokenizer has no chat template)"
    datasets = (source.resolved or {}).get("datasets") or []
    if (
        source.resolved is not None
        and datasets
        and all(isinstance(d, dict) and "chat_template" not in d for d in datasets)
    ):
        types = ", ".join(sorted({str(d.get("type")) for d in datasets}))
        return False, f"raw text (the run trained on {types} rows, not chat; --chat to use the template)"
    return True, "the chat template of the run's tokenizer"


def end_of_turn(source: Source, tokenizer: Any, chat: bool) -> tuple[list[int], list[str]]:
    """What ends an answer: the tokenizer's EOS, the run's `eot_tokens`, and under a chat template
    the marker it writes right after an assistant message (a probe render). Markers that are one
    token stop by id; the others (ChatML's `<|im_end|>` spelled in characters) as stop strings."""
    markers: list[str] = []
    for dataset in (source.resolved or {}).get("datasets") or []:
        if isinstance(dataset, dict) and isinstance(dataset.get("eot_tokens"), list):
            markers += [str(token) for token in dataset["eot_tokens"]]
    if chat:
        markers += _probe_end_of_turn(tokenizer)
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[m] for m in markers if m in vocab]
    strings = [m for m in markers if m not in vocab]
    return list(dict.fromkeys(ids)), list(dict.fromkeys(strings))


def _probe_end_of_turn(tokenizer: Any) -> list[str]:
    """The special token right after the answer in a probe render; with none, the whole (short)
    text the template writes after an assistant message (`<|im_end|>` in a vocabulary without it)."""
    try:
        text = tokenizer.apply_chat_template(PROBE, tokenize=False)
    except Exception:  # a template that cannot render the probe: no marker from it
        return []
    answer = PROBE[1]["content"]
    at = text.rfind(answer)
    if at < 0:
        return []
    rest = text[at + len(answer) :].lstrip()
    specials = {str(t) for t in tokenizer.all_special_tokens}
    specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    found = [token for token in specials if token and not token.isspace() and rest.startswith(token)]
    if found:
        return [max(found, key=len)]
    suffix = rest.strip()
    return [suffix] if suffix and len(suffix) <= 32 and "\n" not in suffix else []


def _quantization(source: Source, quantize: bool) -> tuple[Any, str | None]:
    """(the BitsAndBytesConfig the run trained its base with, or None; a note when it is not used)."""
    if source.resolved is None:
        return None, None
    from trainer.api import Adapter
    from trainer.config.schema import TrainConfig
    from trainer.resolve.validate import plugin_for_block

    block = source.resolved.get("adapter", "full")
    adapter = plugin_for_block("adapters", block)
    bits = adapter.quantized_bits() if isinstance(adapter, Adapter) else None
    if not bits or adapter is None:
        return None, None
    if not quantize:
        return None, f"trained on a {bits}-bit base; --no-quantize: uses the base dequantized"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # bitsandbytes missing or failing to load its library here
        return None, (
            f"trained on a {bits}-bit base, but bitsandbytes cannot load here ({type(err).__name__}: "
            f"{err}): uses the base dequantized (full precision), so outputs may differ slightly"
        )
    try:
        config = TrainConfig.model_validate(source.resolved)
        kwargs = adapter.contribute(config).model_kwargs
    except Exception as err:  # the run's config no longer validates (a plugin changed)
        return None, f"trained on a {bits}-bit base; its quantization cannot be rebuilt ({err}): dequantized"
    return kwargs.get("quantization_config"), None


def _overridden_config(base_model: str, overrides: dict[str, Any], remote: bool) -> Any:
    from trainer.config.errors import ConfigErrors
    from trainer.config.loading import overridden_config

    try:
        return overridden_config(base_model, overrides, remote)
    except (OSError, ValueError, ConfigErrors) as err:
        raise LoadError(f"cannot set the run's overrides_of_model_config on '{base_model}': {err}") from None


def _embedding_rows(folder: str) -> int | None:
    """Rows of a full embedding / output matrix saved with the adapter (a run that added tokens)."""
    from trainer.outputs.adapter_files import embedding_rows

    weights = next((Path(folder) / n for n in ADAPTER_WEIGHTS if (Path(folder) / n).is_file()), None)
    return embedding_rows(weights) if weights is not None else None


def pick_device(device: str | None) -> Any:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def in_memory(
    model: Any, tokenizer: Any, resolved: dict[str, Any] | None, name: str, chat: bool | None = None
) -> Loaded:
    """A model already in memory (training's evals, before and after) as a `Loaded`: the prompt
    format and end-of-turn markers follow `resolved` (the run's config) as for a loaded run, unless
    `chat` chooses the format."""
    source = Source(path=name, kind="model", tokenizer_path="", resolved=resolved)
    return _ready(model, tokenizer, source, "the model being trained", chat, [])


def _ready(
    model: Any, tokenizer: Any, source: Source, description: str, chat: bool | None, notes: list[str]
) -> Loaded:
    """The `Loaded` of a model and tokenizer: its prompt format (the run's, or `chat` when given),
    the markers that end an answer, its context length and device."""
    use_chat, why = chat_by_default(source, tokenizer)
    if chat is not None:
        use_chat, why = chat, ("the chat template (--chat)" if chat else "raw text (--raw)")
    stop_ids, stop_strings = end_of_turn(source, tokenizer, use_chat)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        source=source,
        description=description,
        chat=use_chat,
        stop_token_ids=stop_ids,
        stop_strings=stop_strings,
        context_length=int(context) if context else None,
        device=next(model.parameters()).device,
        notes=[*notes, f"prompt format: {why}"],
    )


def load(
    path: str,
    *,
    base_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    quantize: bool = True,
    chat: bool | None = None,
    trust_remote_code: bool | None = None,
) -> Loaded:
    """Load `path` for generation (see the module docstring); `chat` None follows the run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a command's output
    source = inspect(path, base_model)
    remote = source.trust_remote_code if trust_remote_code is None else trust_remote_code
    notes = list(source.notes)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_path, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load the tokenizer from {source.tokenizer_path}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched prompts end where generation starts
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    target = pick_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    quantization = None
    if source.kind == "adapter":
        quantization, note = _quantization(source, quantize)
        if note:
            notes.append(note)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
            if target.type != "cpu":
                kwargs["device_map"] = {"": target.index or 0}
    weights_from = str(source.base_model) if source.kind == "adapter" else source.path
    overrides = (source.resolved or {}).get("overrides_of_model_config")
    if source.kind == "adapter" and overrides:  # the run trained its base with these on its config
        kwargs["config"] = _overridden_config(weights_from, overrides, remote)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(weights_from, trust_remote_code=remote, **kwargs)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load the model '{weights_from}': {err}") from None
    description = "model"
    if source.kind == "adapter":
        from peft import PeftModel

        from trainer.outputs.adapter_files import describe_adapter

        rows = int(model.get_input_embeddings().weight.shape[0])
        wanted = max(len(tokenizer), _embedding_rows(source.path) or 0)
        if wanted > rows:
            model.resize_token_embeddings(wanted)
        try:
            model = PeftModel.from_pretrained(model, source.path, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise LoadError(
                f"cannot apply the adapter in {source.path} to '{source.base_model}' (the wrong base?): {err}"
            ) from None
        quantized = None
        if quantization is not None:
            quantized = 4 if getattr(quantization, "load_in_4bit", False) else 8
        description = f"{describe_adapter(source.adapter_config, quantized)} on {source.base_model}"
    elif source.resolved is not None:
        description = "full fine-tune"
    if quantization is None:
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise LoadError(f"--chat: the tokenizer of {path} has no chat template")
    return _ready(model, tokenizer, source, description, chat, notes)
