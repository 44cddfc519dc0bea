"""Evaluate a causal LM (full model or PEFT adapter) on a prompt/generation JSONL file.

Two metrics:

* ``eval_loss`` -- mean token-level cross-entropy over the completion tokens
  only. The prompt is tokenised with the tokenizer's normal call (so with BOS),
  the completion without special tokens followed by EOS; the loss covers the
  completion tokens and that EOS, pooled over the whole file.
* ``exact_match`` -- greedy generation (``do_sample=False``) from the prompt,
  stopped at EOS, decoded with ``skip_special_tokens=True`` and compared, after
  ``.strip()``, to the reference ``generation`` field (also stripped).

``MODEL_DIR`` is either a full model directory (loaded with
``AutoModelForCausalLM``) or a PEFT adapter directory (it contains
``adapter_config.json``): then the base model comes from ``--base`` or the
adapter config's ``base_model_name_or_path`` and the adapter is applied with
``peft.PeftModel.from_pretrained``. The tokenizer is read from ``MODEL_DIR``
when it has one, otherwise from the base model directory.

Usage::

    python scripts/evaluate.py MODEL_DIR data/toy/eval.jsonl [--base BASE_DIR]
        [--max-new-tokens 16] [--limit N] [--batch-size 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from plugins.callbacks.generation_eval import score

PROMPT_FIELD = "prompt"
COMPLETION_FIELDS = ("generation", "completion")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """Read ``{"prompt", "generation"}`` records (``completion`` is accepted too)."""
    records: list[dict[str, str]] = []
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            field = next((k for k in COMPLETION_FIELDS if k in obj), None)
            if PROMPT_FIELD not in obj or field is None:
                raise ValueError(f"{path}:{line_no}: expected 'prompt' and 'generation' fields")
            records.append({"prompt": obj[PROMPT_FIELD], "generation": obj[field]})
            if limit is not None and len(records) >= limit:
                break
    return records


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def load_model_and_tokenizer(
    model_dir: str | Path, base: str | Path | None = None, device: str | None = None
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a full model or base + PEFT adapter, plus its tokenizer, in eval mode."""
    model_path = Path(model_dir)
    adapter_config = model_path / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel

        base_name = str(base) if base is not None else None
        if base_name is None:
            base_name = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        if not base_name:
            raise ValueError(f"{adapter_config} names no base model; pass --base")
        base_model = AutoModelForCausalLM.from_pretrained(base_name)
        model: torch.nn.Module = PeftModel.from_pretrained(base_model, str(model_path))
        tok_source = str(model_path) if _has_tokenizer(model_path) else base_name
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_path))
        tok_source = str(model_path)
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    return model, tokenizer


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict[str, str]],
    max_new_tokens: int = 16,
    batch_size: int = 64,
    num_samples: int = 5,
) -> dict[str, Any]:
    """Compute ``eval_loss`` and ``exact_match`` for an already loaded model, with the same scoring
    as the ``generation_eval`` callback plugin (answer-token loss, greedy generation to EOS)."""
    pairs = [(r["prompt"], r["generation"]) for r in records]
    result = score(model, tokenizer, pairs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    n = result["total"]
    return {
        "eval_loss": result["loss"],
        "exact_match": result["exact_match"] if n else math.nan,
        "num_correct": result["correct"],
        "num_examples": n,
        "samples": [
            {
                "prompt": s["prompt"],
                "reference": s["expected"],
                "prediction": s["generated"],
                "correct": s["generated"] == s["expected"].strip(),
            }
            for s in result["samples"][:num_samples]
        ],
    }


def evaluate(
    model_dir: str | Path,
    data_path: str | Path,
    base: str | Path | None = None,
    max_new_tokens: int = 16,
    limit: int | None = None,
    batch_size: int = 64,
    num_samples: int = 5,
    device: str | None = None,
) -> dict[str, Any]:
    """Load ``model_dir`` (full model or adapter) and evaluate it on ``data_path``."""
    model, tokenizer = load_model_and_tokenizer(model_dir, base=base, device=device)
    records = read_jsonl(data_path, limit=limit)
    return evaluate_model(model, tokenizer, records, max_new_tokens, batch_size, num_samples)


def format_result(result: dict[str, Any]) -> str:
    """One summary line, e.g. ``eval_loss 3.412  exact_match 0.0% (0/200)``."""
    return (
        f"eval_loss {result['eval_loss']:.3f}  exact_match {100 * result['exact_match']:.1f}% "
        f"({result['num_correct']}/{result['num_examples']})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="full model dir or PEFT adapter dir")
    parser.add_argument("data", type=Path, help="JSONL with 'prompt' and 'generation'")
    parser.add_argument("--base", default=None, help="base model for an adapter dir")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="only the first N records")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=5, help="sample generations to print")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    result = evaluate(
        args.model_dir,
        args.data,
        base=args.base,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        num_samples=args.samples,
    )
    print(format_result(result))
    for s in result["samples"]:
        mark = "ok " if s["correct"] else "BAD"
        print(f"  [{mark}] {s['prompt']!r} -> {s['prediction']!r} (ref {s['reference']!r})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
