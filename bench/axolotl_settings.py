"""Do converted configs train with the settings Axolotl itself would use? Key by key, on 10 examples.

For each of the Axolotl example configs in `CONFIGS` (LoRA, QLoRA, full fine-tune, FSDP 1 and 2,
DeepSpeed, chat_template datasets, sample packing), the script

1. writes a copy with the paths swapped for local ones: `base_model` -> the tiny Llama of
   `scripts/make_tiny_model.py` (given a small chat template, for datasets that use the tokenizer's
   own), each dataset's `path` -> a small local jsonl of the shape its `type` reads (`data_files`,
   `split`, `name` removed), `deepspeed` -> the JSON's absolute path, `output_dir` and
   `dataset_prepared_path` -> the work directory. Nothing else changes; both sides read this copy.
2. Axolotl's side, in Axolotl's own venv (`bench/peers.py`'s, created on first use; Axolotl 0.19.0,
   the newest that installs on Python 3.11), offline: `axolotl.cli.config.load_cfg` (load,
   validate, `normalize_config`), its `load_lora` on the tiny model (the modules LoRA really wraps,
   `lora_target_linear` resolved), and its tokenizer + dataset wrapper on the first dataset for the
   labels of the first row (`bench/axolotl_settings_child.py`).
3. Our side, in this environment: `trainer.cli.convert` on the copy, `load_config` on the result,
   `decide_auto` for `bf16`/`tf32` on this machine, the adapter's PEFT config applied to the tiny
   model, and the first row as `preprocess --show` encodes it.
4. Compares the effective settings key by key and prints a table per config; with `--markdown` the
   tables also go to a file (bench/results/axolotl_settings.md, which docs/axolotl.md includes).

    python bench/axolotl_settings.py --axolotl-env /tmp/axo/env --markdown bench/results/axolotl_settings.md
    python bench/axolotl_settings.py --only llama-3/lora-1b.yml          # one config

Exit status 0 when every config ran on both sides (differences are reported, not failures); 1 when
a side failed on a config, 2 when a difference has no recorded explanation in `EXPLAINED`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parent))

from benchlib import REPO, SCRIPTS, work_dir
from peers import FIXED_ENV, axolotl_env, ensure_axolotl, side_versions

if str(REPO) not in sys.path:  # ours runs in this process: the checkout's trainer package
    sys.path.insert(0, str(REPO))

CHILD = Path(__file__).resolve().parent / "axolotl_settings_child.py"
EXAMPLES = Path("/work/shared/axolotl-configs")
IGNORE = -100
CONFIGS = (  # example (under examples/), what it covers
    ("llama-3/lora-1b.yml", "LoRA, alpaca, packing"),
    ("llama-3/qlora-1b.yml", "QLoRA, alpaca, packing"),
    ("llama-3/instruct-lora-8b.yml", "LoRA 8-bit, chat_template llama3, lora_target_linear"),
    ("deepcogito/cogito-v1-preview-llama-3B-lora.yml", "LoRA 8-bit, chat_template (tokenizer's), packing"),
    ("mistral/lora.yml", "LoRA 8-bit, target_linear + modules, packing"),
    ("llama-3/fft-8b-liger-fsdp.yaml", "full, FSDP 1, Liger, chat_template field mappings, packing"),
    ("llama-2/qlora-fsdp.yml", "QLoRA, FSDP 1, alpaca"),
    ("qwen2/qlora-fsdp.yaml", "QLoRA, FSDP 1, packing, tf32"),
    ("archived/dbrx/fft-ds-zero3.yaml", "full (unfrozen_parameters), DeepSpeed ZeRO-3"),
    ("qat_nvfp4/Qwen2.5-72B_baseline.yml", "full, FSDP 2, Liger, bf16: true, packing"),
)
TEMPLATE = (  # each turn ends with the EOS token, so both sides find the end-of-turn marker
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
# a difference that is not a converter bug: key, or (example, key) -> why; others are UNEXPLAINED
SPACES = (
    "the swap, not the converter: `tokenizer_type: LlamaTokenizer` (dropped by convert: the same "
    "tokens as AutoTokenizer on a real Llama/Mistral tokenizer) makes Axolotl load the byte-level "
    "tiny tokenizer as a Llama one, which drops its spaces; the trained part is the same: `5</s>`"
)
EXPLAINED: dict[Any, str] = {
    "precision": "machine-dependent: on this CPU Axolotl resolves `bf16: auto` to fp16 (its "
    "resolve_dtype falls back to fp16 where no GPU has bf16), ours to fp32 (fp16 needs a GPU); on a "
    "bf16 GPU both resolve to bf16",
    ("mistral/lora.yml", "row_tokens"): SPACES,
    ("mistral/lora.yml", "row_trained"): SPACES,
    ("llama-2/qlora-fsdp.yml", "row_tokens"): SPACES,
    ("llama-2/qlora-fsdp.yml", "row_trained"): SPACES,
    ("llama-3/instruct-lora-8b.yml", "row_trained"): "the swap: the tiny tokenizer has no `<|eot_id|>` "
    "token, so llama3's end-of-turn marker is 10 byte tokens; ours trains them after each assistant "
    "turn (train_on_eos: turn, marker found in the rendered template), Axolotl trains none (its "
    "end-of-turn is the EOS token `</s>`, which the template never writes); with Llama-3-Instruct's "
    "own tokenizer `<|eot_id|>` is its EOS and both train it",
}


# --- the work directory: tiny model, rows, swapped copies -------------------------------------


def make_model(work: Path) -> Path:
    """The tiny Llama in `work/model`, its tokenizer given a ChatML template (for datasets that use
    the tokenizer's own template)."""
    model = work / "model"
    if not (model / "model.safetensors").is_file():
        subprocess.run(
            [sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--out", str(model)],
            check=True, capture_output=True,
        )  # fmt: skip
        config_file = model / "tokenizer_config.json"
        tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
        tokenizer_config["chat_template"] = TEMPLATE
        config_file.write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    return model


def rows_for(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Four rows of the shape `spec` (an Axolotl dataset entry) reads; the first has every part."""
    kind = spec.get("type")
    if kind == "alpaca":
        return [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a color.", "input": "", "output": "Blue."},
        ] * 2
    if kind == "completion":
        field = spec.get("field") or "text"
        return [{field: "The cat sat on the mat."}, {field: "Dogs bark."}] * 2
    if kind == "chat_template":
        roles = {"role": "role", "content": "content", **(spec.get("message_property_mappings") or {})}
        names = {"system": "system", "user": "user", "assistant": "assistant"}
        if roles["role"] == "from":  # ShareGPT-style data names its roles too
            names = {"system": "system", "user": "human", "assistant": "gpt"}
        turns = [("system", "Be brief."), ("user", "Name a color."), ("assistant", "Blue."),
                 ("user", "Another?"), ("assistant", "Red.")]  # fmt: skip
        messages = [{roles["role"]: names[r], roles["content"]: text} for r, text in turns]
        return [{spec.get("field_messages") or "messages": messages}] * 4
    raise ValueError(f"no local rows for dataset type {kind!r}")


def swapped(given: dict[str, Any], name: str, work: Path, model: Path, root: Path) -> dict[str, Any]:
    """`given` with its model, data, DeepSpeed and output paths swapped for local ones."""
    config = dict(given)
    config["base_model"] = str(model)
    for key in ("base_model_config", "tokenizer_config", "hub_model_id"):
        config.pop(key, None)
    config["output_dir"] = str(work / "out" / name)
    if config.get("dataset_prepared_path"):
        config["dataset_prepared_path"] = str(work / "prepared" / name)
    if isinstance(config.get("deepspeed"), str):
        config["deepspeed"] = str((root / config["deepspeed"]).resolve())
    datasets = []
    for index, spec in enumerate(given.get("datasets") or []):
        spec = {k: v for k, v in spec.items() if k not in ("data_files", "split", "name")}
        path = work / "data" / f"{name}-{index}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows_for(spec)), encoding="utf-8")
        spec["path"] = str(path)
        datasets.append(spec)
    config["datasets"] = datasets
    return config


def ensure_deepspeed(python: Path, version: str) -> None:
    """DeepSpeed in Axolotl's venv (its validation imports it for a `deepspeed:` config); peers.py's
    venv lacks it. Installed without building its ops (DS_BUILD_OPS=0): nothing here runs them."""
    env = axolotl_env(python, {**os.environ, "DS_BUILD_OPS": "0"})
    if subprocess.run([str(python), "-c", "import deepspeed"], capture_output=True, env=env).returncode == 0:
        return
    print(f"installing deepspeed=={version} into Axolotl's venv ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "-q", f"deepspeed=={version}"]
    subprocess.run(pip, check=True, env=env)


# --- the two sides ----------------------------------------------------------------------------


def axolotl_side(python: Path, config: Path, model: Path, out: Path, log: Path) -> dict[str, Any]:
    """Axolotl's raw settings for `config` (bench/axolotl_settings_child.py in its venv)."""
    # as `axolotl preprocess` sets it: DeepSpeed's setup then starts no NCCL process group (no GPU here)
    extra = {"HF_DATASETS_OFFLINE": "1", "AXOLOTL_IS_PREPROCESS": "1"}
    env = axolotl_env(python, {**os.environ, **FIXED_ENV, **extra})
    with log.open("w", encoding="utf-8") as handle:
        done = subprocess.run(
            [str(python), str(CHILD), str(config), str(model), str(out)],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=config.parent,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"Axolotl failed on {config.name}; see {log}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def axolotl_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Axolotl's raw dump as the comparable settings (see `KEYS`)."""
    ratio = raw.get("cosine_min_lr_ratio")
    scheduler = raw["lr_scheduler"] or "cosine"
    if scheduler == "cosine" and ratio is not None:
        scheduler = f"cosine (min lr ratio {ratio})"
    adapter = raw.get("adapter") or "full"
    if adapter == "lora" and raw.get("load_in_8bit"):
        adapter = "lora 8-bit"
    elif adapter == "qlora" or (adapter == "lora" and raw.get("load_in_4bit")):
        adapter = "qlora 4-bit"
    first = (raw.get("datasets") or [{}])[0]
    if first.get("type") == "chat_template":  # the strategy's defaults where a key is absent
        roles = first.get("roles_to_train", ["assistant"])
        loss_on = f"roles {roles or []}, eos {first.get('train_on_eos', 'turn')}"
        if raw.get("train_on_inputs"):
            loss_on += " + inputs"
    else:
        loss_on = "prompt and completion" if raw.get("train_on_inputs") else "completion"
    peft = raw.get("peft") or {}
    stage = raw.get("deepspeed_stage")
    distributed = f"deepspeed zero{stage}" if stage is not None else "none"
    if raw.get("fsdp"):
        distributed = f"fsdp{raw.get('fsdp_version') or 1}"
    return {
        "learning_rate": float(raw["learning_rate"]),
        "lr_scheduler": scheduler,
        "warmup": warmup(raw.get("warmup_ratio"), raw.get("warmup_steps")),
        "micro_batch_size": raw["micro_batch_size"],
        "gradient_accumulation_steps": raw["gradient_accumulation_steps"],
        "effective_batch_size": raw["batch_size"],
        "training_length": length(raw.get("num_epochs"), raw.get("max_steps")),
        "sequence_len": raw["sequence_len"],
        "sample_packing": bool(raw.get("sample_packing")),
        "pad_to_sequence_len": bool(raw.get("pad_to_sequence_len")),
        "adapter": adapter,
        "lora_r": peft.get("r"),
        "lora_alpha": peft.get("alpha"),
        "lora_dropout": peft.get("dropout"),
        "lora_modules": raw.get("lora_modules"),
        "unfrozen_parameters": raw.get("unfrozen_parameters"),
        "optimizer": raw["optimizer"],
        "weight_decay": float(raw.get("weight_decay") or 0.0),
        "precision": precision(raw.get("bf16"), raw.get("fp16"), raw.get("tf32")),
        "distributed": distributed,
        "loss_on": loss_on,
        **row_settings(raw["row"]["input_ids"], raw["row"]["labels"]),
    }


def ours_side(config: Path, model: Path, out: Path) -> dict[str, Any]:
    """Our settings for the Axolotl config `config`: convert it to `out`, resolve, encode a row."""
    import io
    from contextlib import redirect_stderr

    from trainer.cli import convert

    errors = io.StringIO()
    with redirect_stderr(errors):
        status = convert.main([str(config), "-o", str(out), "--quiet"])
    if status != 0:
        raise RuntimeError(f"convert exited {status} on {config.name}:\n{errors.getvalue()}")
    here = os.getcwd()
    os.chdir(config.parent)  # relative paths of the converted config, as convert checked them
    try:
        return ours_settings(out, model)
    finally:
        os.chdir(here)


def ours_settings(path: Path, model: Path) -> dict[str, Any]:
    """The comparable settings of our config at `path` (see `KEYS`)."""
    from trainer.data import show
    from trainer.data.encode import Encoded
    from trainer.data.pipeline import prepare_formatters
    from trainer.resolve.precision import decide_auto
    from trainer.resolve.validate import load_config
    from trainer.runtime.build import contributions, load_tokenizer

    resolved = load_config(str(path), skip_machine_checks=True)
    config, _ = decide_auto(resolved.config)
    chosen_adapter = resolved.chosen.get("adapter")
    kind = chosen_adapter.entry.name if chosen_adapter else "full"
    adapter = chosen_adapter.plugin.options if chosen_adapter else None
    if kind == "lora" and getattr(adapter, "load_in_8bit", False):
        kind = "lora 8-bit"
    elif kind == "qlora":
        kind = "qlora 4-bit"
    scheduler = config.lr_scheduler
    min_rate = (config.trainer_args.get("lr_scheduler_kwargs") or {}).get("min_lr_rate")
    if scheduler == "cosine_with_min_lr" and min_rate is not None:
        scheduler = f"cosine (min lr ratio {min_rate})"
    peft_configs = [c.peft_config for _, c in contributions(resolved) if c.peft_config is not None]
    modules = None
    if peft_configs:
        modules = wrapped_modules(model, peft_configs[0])
    first = resolved.formatters[0].plugin.options
    if config.datasets[0].type == "chat_template":
        loss_on = f"roles {list(first.roles_to_train)}, eos {first.train_on_eos}"
    else:
        loss_on = "prompt and completion" if getattr(first, "train_on_inputs", False) else "completion"
    distributed = resolved.chosen.get("distributed")
    options: Any = distributed.plugin.options if distributed else None
    plugin_name = distributed.entry.name if distributed else None
    where = "none"
    if plugin_name == "fsdp":
        where = f"fsdp{options.version}"
    elif plugin_name == "deepspeed":
        stage = json.loads(Path(options.config_file).read_text(encoding="utf-8"))["zero_optimization"][
            "stage"
        ]
        where = f"deepspeed zero{stage}"
    tokenizer = load_tokenizer(resolved.config)
    prepare_formatters(resolved, tokenizer)
    example = next(item for _, item in show.preview(resolved, tokenizer, 1))
    if isinstance(example, Encoded):
        row = row_settings(list(example.input_ids), list(example.labels))
    else:  # dropped: the reason stands in for the row
        row = {"row_tokens": str(example), "row_trained": "none (the row is dropped)"}
    return {
        "learning_rate": config.learning_rate,
        "lr_scheduler": scheduler,
        "warmup": warmup(config.warmup_ratio, config.warmup_steps),
        "micro_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "effective_batch_size": config.micro_batch_size * config.gradient_accumulation_steps,
        "training_length": length(config.num_epochs, config.max_steps),
        "sequence_len": config.sequence_len,
        "sample_packing": config.sample_packing,
        "pad_to_sequence_len": config.pad_to_sequence_len,
        "adapter": kind,
        "lora_r": getattr(adapter, "r", None) if peft_configs else None,
        "lora_alpha": getattr(adapter, "alpha", None) if peft_configs else None,
        "lora_dropout": getattr(adapter, "dropout", None) if peft_configs else None,
        "lora_modules": modules,
        "unfrozen_parameters": list(getattr(adapter, "unfrozen_parameters", None) or []) or None,
        "optimizer": config.optimizer,
        "weight_decay": config.weight_decay,
        "precision": precision(config.bf16, config.fp16, config.tf32),
        "distributed": where,
        "loss_on": loss_on,
        **row,
    }


def wrapped_modules(model: Path, peft_config: Any) -> list[str]:
    """The short names of the tiny model's modules PEFT wraps with `peft_config`."""
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model))
    wrapped = get_peft_model(base, copy.deepcopy(peft_config))
    return sorted({n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")})


# --- comparable forms -------------------------------------------------------------------------


def warmup(ratio: Any, steps: Any) -> str:
    if ratio:
        return f"ratio {float(ratio):g}"
    if steps:
        return f"{int(steps)} steps"
    return "none"


def length(epochs: Any, max_steps: Any) -> str:
    if max_steps and int(max_steps) > 0:
        return f"max_steps {int(max_steps)}"
    return f"{float(epochs):g} epochs"


def precision(bf16: Any, fp16: Any, tf32: Any) -> str:
    mode = "bf16" if bf16 is True else "fp16" if fp16 is True else "fp32"
    return f"{mode}, tf32 {'on' if tf32 is True else 'off'}"


def spans(labels: list[int]) -> str:
    """The positions with a loss as ranges: `153-158` (`none` when every label is masked)."""
    out: list[str] = []
    start = None
    for i, label in enumerate([*labels, IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            out.append(f"{start}-{i - 1}" if i - 1 > start else str(start))
            start = None
    return ", ".join(out) or "none"


def row_settings(input_ids: list[int], labels: list[int]) -> dict[str, str]:
    """The first row's tokens (count and a digest) and which of them have a loss."""
    digest = hashlib.sha1(json.dumps(input_ids).encode()).hexdigest()[:8]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    wrong = [i for i in trained if labels[i] != input_ids[i]]  # labels are the ids, unshifted
    masked = f"trained {len(trained)}: {spans(labels)}" + (
        f" (labels differ from ids at {wrong})" if wrong else ""
    )
    return {"row_tokens": f"{len(input_ids)} tokens, ids {digest}", "row_trained": masked}


KEYS = (  # compared key: what it means
    ("learning_rate", "learning rate"),
    ("lr_scheduler", "scheduler (min lr ratio)"),
    ("warmup", "warmup (ratio or steps)"),
    ("micro_batch_size", "micro batch size"),
    ("gradient_accumulation_steps", "gradient accumulation"),
    ("effective_batch_size", "effective batch (1 process)"),
    ("training_length", "epochs / max_steps"),
    ("sequence_len", "sequence length"),
    ("sample_packing", "sample packing"),
    ("pad_to_sequence_len", "pad to sequence_len"),
    ("adapter", "adapter"),
    ("lora_r", "LoRA r"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("lora_modules", "LoRA modules wrapped (tiny Llama)"),
    ("unfrozen_parameters", "unfrozen parameters"),
    ("optimizer", "optimizer"),
    ("weight_decay", "weight decay"),
    ("precision", "precision on this machine"),
    ("distributed", "distributed"),
    ("loss_on", "loss on (first dataset)"),
    ("row_tokens", "first row: tokens"),
    ("row_trained", "first row: positions with a loss"),
)


def compare(
    axolotl: dict[str, Any], ours: dict[str, Any], explained: dict[Any, str], config: str = ""
) -> list[dict[str, Any]]:
    """One row per key of `KEYS`: the two values, whether they are the same, and why not (from
    `explained`, by (config, key) or by key)."""
    rows = []
    for key, label in KEYS:
        a, o = axolotl.get(key), ours.get(key)
        same = a == o
        if isinstance(a, (int, float)) and isinstance(o, (int, float)) and not isinstance(a, bool):
            same = abs(float(a) - float(o)) <= 1e-12 * max(1.0, abs(float(a)))
        why = "" if same else explained.get((config, key), explained.get(key, "UNEXPLAINED"))
        rows.append({"key": key, "label": label, "axolotl": a, "ours": o, "same": same, "why": why})
    return rows


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of `compare`'s rows."""
    lines = ["| setting | Axolotl | ours | same? |", "|---|---|---|---|"]
    for r in rows:
        verdict = "yes" if r["same"] else f"**no**: {r['why']}"
        lines.append(f"| {r['label']} | {cell(r['axolotl'])} | {cell(r['ours'])} | {verdict} |")
    return lines


def report(results: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    """The markdown report: how it was made, a summary line per config, then a table per config."""
    lines = [
        f"Made by `python bench/axolotl_settings.py` on {info['date']} ({info['machine']}): Axolotl "
        f"{info['axolotl']} (the newest release that installs on this machine's Python "
        f"{info['python']}; 0.21 needs 3.12) in its own venv, ours at {info['ours']}. Both sides read "
        "the same copy of each example with the model swapped for the tiny Llama of "
        "`scripts/make_tiny_model.py` and the datasets for small local jsonl files of the same shape. "
        f"The whole run took {info['seconds']:.0f} s.",
        "",
        "| example | covers | keys compared | same | different |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        rows = result["rows"]
        differ = [r["label"] for r in rows if not r["same"]]
        lines.append(
            f"| `{result['config']}` | {result['covers']} | {len(rows)} | {len(rows) - len(differ)} | "
            f"{', '.join(differ) or '—'} |"
        )
    for result in results:
        lines += ["", f"### `{result['config']}`", "", *table(result["rows"])]
    return lines


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=Path, default=EXAMPLES, help="the folder holding examples/")
    p.add_argument("--only", action="append", help="run only this example (repeatable)")
    p.add_argument("--axolotl-version", default="0.19.0")
    p.add_argument("--torch-version", default="2.13.0", help="torch installed first into its venv")
    p.add_argument("--deepspeed-version", default="0.19.8", help="installed into Axolotl's venv if missing")
    p.add_argument("--axolotl-env", type=Path, help="Axolotl's venv, created if missing (peers.py's default)")
    p.add_argument("--work-dir", type=Path, help="keep the model, data, configs and logs here")
    p.add_argument("--markdown", type=Path, help="also write the report here")
    p.add_argument("--json", type=Path, help="also write every value here")
    args = p.parse_args(argv)
    if args.axolotl_env is None:
        args.axolotl_env = Path.home() / ".cache" / "trainer-bench" / f"axolotl-{args.axolotl_version}"
    return args


def ours_version() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return f"commit {done.stdout.strip()}" if done.returncode == 0 else "this checkout"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    os.environ.update(FIXED_ENV)
    python = ensure_axolotl(
        args.axolotl_env.expanduser().absolute(), args.axolotl_version, args.torch_version
    )
    ensure_deepspeed(python, args.deepspeed_version)
    found = side_versions(python, ("axolotl", "transformers", "peft", "deepspeed"))
    chosen = [c for c in CONFIGS if not args.only or c[0] in args.only]
    results, failed, unexplained = [], 0, 0
    with work_dir(args.work_dir, "trainer-axolotl-settings-") as work:
        model = make_model(work)
        for sub in ("configs", "logs"):
            (work / sub).mkdir(exist_ok=True)
        for relative, covers in chosen:
            name = relative.replace("/", "__").rsplit(".", 1)[0]
            given = yaml.safe_load((args.examples / "examples" / relative).read_text(encoding="utf-8"))
            copy = work / "configs" / f"{name}.axolotl.yml"
            copy.write_text(yaml.safe_dump(swapped(given, name, work, model, args.examples), sort_keys=False))
            try:
                raw = axolotl_side(
                    python, copy, model, work / "logs" / f"{name}.json", work / "logs" / f"{name}.log"
                )
                axolotl = axolotl_settings(raw)
                ours_file = work / "configs" / f"{name}.ours.yml"
                ours_file.unlink(missing_ok=True)
                ours = ours_side(copy, model, ours_file)
            except Exception as err:  # a side that fails is reported, and the next config runs
                failed += 1
                print(f"{relative}: FAILED: {err}", flush=True)
                continue
            rows = compare(axolotl, ours, EXPLAINED, relative)
            unexplained += sum(r["why"] == "UNEXPLAINED" for r in rows)
            results.append({"config": relative, "covers": covers, "rows": rows})
            print(f"\n### {relative} ({covers})", *table(rows), sep="\n", flush=True)
    info = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "axolotl": found["axolotl"],
        "python": platform.python_version(),
        "ours": ours_version(),
        "seconds": time.monotonic() - start,
    }
    lines = report(results, info)
    print("", *lines, sep="\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "versions": found, "results": results}, indent=1, default=str)
        )
    return 1 if failed else 2 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
