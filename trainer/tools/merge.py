"""Merge an adapter run (LoRA, DoRA, QLoRA) into its base model: one standalone Hugging Face folder.

`inspect_run` and `check_out` look at files only (no torch import), so user mistakes are reported
fast; `merge` loads the base model unquantized, applies the adapter, folds it into the weights and
writes model + tokenizer + generation_config into a temporary folder that is then renamed into
place; `smoke_test` reloads the result with the plain Auto classes and generates a few tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.api import Adapter
from trainer.config.errors import ConfigErrors
from trainer.config.loading import apply_overrides
from trainer.config.paths import looks_local
from trainer.outputs.adapter_files import describe_adapter, embedding_rows
from trainer.outputs.output_dir import RESOLVED_NAME
from trainer.resolve.validate import plugin_for_block

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_CONFIG = "tokenizer_config.json"
FULL_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
DTYPES = ("float32", "bfloat16", "float16", "auto")
MERGE_INFO = "merge_info.json"
# PEFT methods that add virtual tokens instead of changing weights: there is nothing to merge.
PROMPT_LEARNING = {
    "PROMPT_TUNING",
    "MULTITASK_PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "ADAPTION_PROMPT",
    "CPT",
}

Log = Callable[[str], None]


class MergeError(Exception):
    """A user mistake (wrong directory, missing files, --out not empty): reported without traceback."""


@dataclass
class RunInfo:
    """What an adapter run holds, read from its files."""

    run_dir: Path
    base_model: str
    adapter_config: dict[str, Any]
    adapter_weights: Path
    resolved: dict[str, Any]
    trust_remote_code: bool = False
    quantized_bits: int | None = None  # trained against a quantized base (QLoRA): 4 or 8
    notes: list[str] = field(default_factory=list)

    @property
    def peft_type(self) -> str:
        return str(self.adapter_config.get("peft_type", "LORA")).upper()

    @property
    def use_dora(self) -> bool:
        return bool(self.adapter_config.get("use_dora"))

    @property
    def scores(self) -> int:
        """A reward model's number of scores (its adapter's task is sequence classification), else 0."""
        if str(self.adapter_config.get("task_type", "")).upper() != "SEQ_CLS":
            return 0
        from safetensors import safe_open

        with safe_open(str(self.adapter_weights), "pt") as weights:
            names = list(weights.keys())  # a safetensors handle is not iterable
            heads = [name for name in names if re.search(r"\.(score|classifier)\.", name)]
            return int(weights.get_slice(heads[0]).get_shape()[0]) if heads else 1

    def describe(self) -> str:
        """E.g. 'QLoRA (LoRA trained on a 4-bit base; r=8, alpha=16)' or 'DoRA (r=8, alpha=16)'."""
        return describe_adapter(self.adapter_config, self.quantized_bits)


@dataclass
class MergeResult:
    out: Path
    parameters: int
    dtype: str
    vocab_resized: tuple[int, int] | None
    files: list[str]


def default_out(run_dir: str | os.PathLike[str]) -> Path:
    """RUN_DIR-merged, beside the run (not inside it: re-running the training with
    overwrite_output_dir replaces the whole run folder)."""
    path = Path(run_dir)
    return path.parent / f"{path.resolve().name}-merged"


def _read_resolved(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESOLVED_NAME
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise MergeError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise MergeError(f"{path} is not a mapping; is this a trainer run?")
    return data


def adapter_block(resolved: dict[str, Any]) -> dict[str, Any]:
    """The run's `adapter:` block as a mapping ({'type': 'full'} when unset, as the config's default)."""
    block = resolved.get("adapter", "full")
    if isinstance(block, str):
        return {"type": block}
    return dict(block) if isinstance(block, dict) else {"type": str(block)}


def quantized_bits(block: dict[str, Any]) -> int | None:
    """8 or 4 when the run's adapter trained against a quantized base, as its plugin says; None
    when not, or when the block no longer resolves (a plugin since uninstalled)."""
    adapter = plugin_for_block("adapters", block)
    return adapter.quantized_bits() if isinstance(adapter, Adapter) else None


def inspect_run(run_dir: str | os.PathLike[str], base_model: str | None = None) -> RunInfo:
    """Check RUN_DIR is a finished adapter run and read what it says; MergeError otherwise."""
    path = Path(run_dir)
    if not path.exists():
        raise MergeError(f"{path}: no such directory")
    if not path.is_dir():
        raise MergeError(f"{path}: not a directory (give the run's output_dir)")
    names = set(os.listdir(path))
    has_resolved = RESOLVED_NAME in names

    if ADAPTER_CONFIG not in names:
        block = adapter_block(_read_resolved(path)) if has_resolved else {}
        if names & set(FULL_MODEL_FILES) or block.get("type") == "full":
            what = "a full fine-tune (adapter: full)" if has_resolved else "a full model"
            raise MergeError(
                f"{path} is {what}, not an adapter run: its model is already standalone and loads "
                "with AutoModelForCausalLM.from_pretrained; there is nothing to merge"
            )
        if has_resolved:
            checkpoints = sorted(n for n in names if n.startswith("checkpoint-"))
            hint = f" (checkpoints: {', '.join(checkpoints)}; merge one of them)" if checkpoints else ""
            raise MergeError(
                f"{path} has no {ADAPTER_CONFIG}: the run (adapter: {block.get('type')}) did not finish"
                + hint
            )
        raise MergeError(f"{path} is not an adapter run: no {ADAPTER_CONFIG} and no {RESOLVED_NAME}")

    missing = []
    weights = next((path / n for n in ADAPTER_WEIGHTS if n in names), None)
    if weights is None:
        missing.append(" or ".join(ADAPTER_WEIGHTS))
    if TOKENIZER_CONFIG not in names:
        missing.append(f"the tokenizer ({TOKENIZER_CONFIG})")
    if not has_resolved:
        missing.append(RESOLVED_NAME)
    if missing:
        raise MergeError(f"{path} is missing {', '.join(missing)}; is it a finished trainer adapter run?")
    assert weights is not None

    try:
        adapter_config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot read {path / ADAPTER_CONFIG}: {err}") from None
    if not isinstance(adapter_config, dict):
        raise MergeError(f"{path / ADAPTER_CONFIG} is not a JSON object")
    resolved = _read_resolved(path)
    info = RunInfo(
        run_dir=path,
        base_model="",
        adapter_config=adapter_config,
        adapter_weights=weights,
        resolved=resolved,
        trust_remote_code=bool(resolved.get("trust_remote_code", False)),
        quantized_bits=quantized_bits(adapter_block(resolved)),
    )
    if info.peft_type in PROMPT_LEARNING:
        raise MergeError(
            f"{path} holds a {info.peft_type} adapter (virtual tokens, no weight change): it cannot be "
            "merged into the base weights; load it with PeftModel.from_pretrained instead"
        )

    named = adapter_config.get("base_model_name_or_path")
    info.base_model = base_model or named or ""
    if not info.base_model:
        raise MergeError(f"{path / ADAPTER_CONFIG} names no base_model_name_or_path; pass --base-model")
    if base_model is None and looks_local(info.base_model) and not os.path.isdir(info.base_model):
        raise MergeError(
            f"the base model '{info.base_model}' named in {ADAPTER_CONFIG} does not exist "
            "(moved?); pass --base-model PATH"
        )
    if base_model is not None and named and base_model != named:
        info.notes.append(f"base model overridden: {base_model} (the adapter names {named})")
    return info


def check_out(out: str | os.PathLike[str]) -> Path:
    """--out must not exist, or be an empty folder: a merge never overwrites."""
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise MergeError(f"--out {path} exists and is not a directory; refusing to overwrite it")
        if any(path.iterdir()):
            raise MergeError(
                f"--out {path} exists and is not empty; refusing to overwrite it (remove it or pick "
                "another --out)"
            )
    return path


def _eos_ids(base: Any, tokenizer_eos: int | None) -> Any:
    """The base's EOS id(s) with the tokenizer's EOS first: generation stops where the tokenizer ends."""
    ids = [] if base is None else (list(base) if isinstance(base, list | tuple) else [base])
    if tokenizer_eos is not None:
        ids = [tokenizer_eos, *[i for i in ids if i != tokenizer_eos]]
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else ids


def merge(info: RunInfo, out: Path, dtype: str = "auto", log: Log = print) -> MergeResult:
    """Load the base unquantized in `dtype`, apply the adapter, merge_and_unload, write `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    remote = info.trust_remote_code
    head: dict[str, Any] = {}  # from_pretrained arguments: the run's config overrides, a score head
    tokenizer = AutoTokenizer.from_pretrained(str(info.run_dir), trust_remote_code=remote)
    try:
        base_config = AutoConfig.from_pretrained(info.base_model, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot load the base model config '{info.base_model}': {err}") from None
    overrides = info.resolved.get("overrides_of_model_config")
    if overrides:  # the run trained the base with these set on its config
        try:
            apply_overrides(base_config, overrides)
        except ConfigErrors as err:
            raise MergeError(
                f"the run's overrides_of_model_config do not fit '{info.base_model}': {err}"
            ) from None
        head["config"] = base_config
    if getattr(base_config, "quantization_config", None):
        raise MergeError(
            f"the base model '{info.base_model}' is a pre-quantized checkpoint; a merge needs the "
            "full-precision weights: pass --base-model with the unquantized model"
        )
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    auto: Any = AutoModelForCausalLM
    if info.scores:  # a reward model (method: reward): the score head is saved with the adapter
        from transformers import AutoModelForSequenceClassification

        auto, head["num_labels"] = AutoModelForSequenceClassification, info.scores
    try:
        model: Any = auto.from_pretrained(
            info.base_model, dtype=torch_dtype, trust_remote_code=remote, **head
        )
    except (OSError, ValueError) as err:
        raise MergeError(f"cannot load the base model '{info.base_model}': {err}") from None

    resized = None
    rows = int(model.get_input_embeddings().weight.shape[0])
    wanted = max(len(tokenizer), embedding_rows(info.adapter_weights) or 0)
    if wanted > rows:
        model.resize_token_embeddings(wanted)
        resized = (rows, wanted)

    try:
        peft_model = PeftModel.from_pretrained(model, str(info.run_dir), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise MergeError(
            f"cannot apply the adapter in {info.run_dir} to '{info.base_model}' (the wrong base?): {err}"
        ) from None
    merged = peft_model.merge_and_unload()
    leftovers = [k for k in merged.state_dict() if "lora_" in k or ".base_layer." in k]
    if leftovers:
        raise RuntimeError(f"merge left adapter weights behind: {leftovers[:5]}")

    # Special token ids consistent with the run's tokenizer (which may have added tokens / a new EOS).
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    for config in {id(c): c for c in (merged.config, merged.config.get_text_config())}.values():
        config.eos_token_id = _eos_ids(getattr(config, "eos_token_id", None), eos)
        config.pad_token_id = pad
        if tokenizer.bos_token_id is not None:
            config.bos_token_id = tokenizer.bos_token_id
    if not info.scores:  # a language model generates; a reward model only scores
        try:
            generation = GenerationConfig.from_pretrained(info.base_model)
        except (OSError, ValueError):
            generation = GenerationConfig.from_model_config(merged.config)
        generation.eos_token_id = _eos_ids(generation.eos_token_id, eos)
        generation.pad_token_id = pad
        if tokenizer.bos_token_id is not None:
            generation.bos_token_id = tokenizer.bos_token_id
        merged.generation_config = generation
    merged.config.name_or_path = str(out)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        provenance = {
            "merged_from": str(info.run_dir.resolve()),
            "base_model": info.base_model,
            "adapter": info.describe(),
            "dtype": str(merged.dtype).removeprefix("torch."),
            "dequantized_merge": bool(info.quantized_bits),
        }
        (staging / MERGE_INFO).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        files = sorted(os.listdir(staging))
        check_out(out)  # still empty / absent (nobody wrote there meanwhile)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parameters = sum(p.numel() for p in merged.parameters())
    return MergeResult(out, parameters, str(merged.dtype).removeprefix("torch."), resized, files)


def smoke_test(
    out: Path, prompt: str = "Hello", max_new_tokens: int = 8, trust_remote_code: bool = False
) -> tuple[str, str]:
    """Reload `out` with the plain Auto classes and greedily generate a few tokens.

    Returns (the prompt as fed, the completion). The chat template is used when the tokenizer has one.
    `trust_remote_code` is the run's own (RunInfo.trust_remote_code), never on by default.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=trust_remote_code)
    architectures = (
        AutoConfig.from_pretrained(str(out), trust_remote_code=trust_remote_code).architectures or []
    )
    if any(name.endswith("ForSequenceClassification") for name in architectures):  # a reward model
        scorer: Any = AutoModelForSequenceClassification.from_pretrained(
            str(out), dtype="auto", trust_remote_code=trust_remote_code
        ).eval()
        with torch.no_grad():
            score = scorer(**tokenizer(prompt, return_tensors="pt")).logits[0].tolist()
        return prompt, f"score {', '.join(f'{value:.4f}' for value in score)}"
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(out), dtype="auto", trust_remote_code=trust_remote_code
    )
    model.eval()
    text = prompt
    special = True
    if tokenizer.chat_template:
        try:
            text = str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
            )
            special = False  # the template writes its own BOS
        except Exception:  # a template that wants other roles: fall back to the plain prompt
            text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=special)
    with torch.no_grad():
        ids = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.generation_config.pad_token_id,
        )
    completion = str(tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False))
    return text, completion
