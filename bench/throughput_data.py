"""The model and the data of bench/throughput.py: seeded prompt/completion rows with log-normal
lengths (ASCII, one character a token), and a Llama with the byte-level tokenizer of
scripts/make_tiny_model.py (its tiny one, or a given shape), built in a child process.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from benchlib import SCRIPTS, run_child
from throughput_common import self_command


class Words:
    """Seeded ASCII text of an exact number of characters (= tokens for the byte-level tokenizer)."""

    def __init__(self, rng: random.Random):
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.rng = rng
        self.vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(3000)]
        self.weights = [1 / (rank + 1) for rank in range(len(self.vocab))]  # Zipf-like

    def text(self, n_chars: int) -> str:
        parts: list[str] = []
        size = -1  # the joined length: words and the spaces between them
        while size < n_chars:
            word = self.rng.choices(self.vocab, self.weights)[0]
            parts.append(word)
            size += len(word) + 1
        return " ".join(parts)[:n_chars]


def write_rows(path: Path, n: int, seq_len: int, median: float, sigma: float, seed: int) -> dict[str, Any]:
    """`n` prompt/completion rows whose total tokens (BOS + prompt + completion + EOS) are log-normal,
    clipped to [8, seq_len]; the completion gets 30-80% of the text."""
    rng = random.Random(seed)
    words = Words(rng)
    lengths = []
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(n):
            total = min(seq_len, max(8, round(rng.lognormvariate(math.log(median), sigma))))
            text = total - 2  # BOS and EOS are added by both sides
            prompt = min(text - 1, max(1, round(rng.uniform(0.2, 0.7) * text)))
            row = {"prompt": words.text(prompt), "completion": words.text(text - prompt)}
            assert len(row["prompt"]) + len(row["completion"]) == text
            handle.write(json.dumps(row) + "\n")
            lengths.append(total)
    ordered = sorted(lengths)
    return {
        "examples": n,
        "tokens": sum(lengths),
        "median": statistics.median(lengths),
        "mean": statistics.fmean(lengths),
        "p90": ordered[int(0.9 * (n - 1))],
        "max": ordered[-1],
        "at_cap": sum(x == seq_len for x in lengths),
    }


def make_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: build and save a model with the byte-level tokenizer of scripts/make_tiny_model.py.
    `shape` None: make_tiny_model's own tiny Llama (its defaults, with `--pad-token`); otherwise a
    Llama of that shape, random weights, in `dtype`. Returns parameter counts."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    import make_tiny_model
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_model.build_tokenizer(pad_token=True)
    shape, positions = spec["shape"], spec["positions"]
    if shape is None:
        model = make_tiny_model.build_model(tokenizer, seed=0)
    else:
        config = LlamaConfig(
            vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
            num_key_value_heads=shape["kv_heads"], max_position_embeddings=positions, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if positions > model.config.max_position_embeddings:  # RoPE: the weights do not depend on it
        model.config.max_position_embeddings = positions
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.to(getattr(torch, spec["dtype"])).save_pretrained(spec["out"])
    tokenizer.save_pretrained(spec["out"])
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()  # counted once more when tied: it is a matmul
    return {
        "params": params,
        "matmul_params": params - embedding + (head if model.config.tie_word_embeddings else 0),
        "hidden": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
        "heads": model.config.num_attention_heads,
        "kv_heads": model.config.num_key_value_heads,
        "intermediate": model.config.intermediate_size,
        "vocab": model.config.vocab_size,
        "positions": model.config.max_position_embeddings,
    }


def build_model(work: Path, name: str, shape: dict[str, int] | None, positions: int, dtype: str) -> dict:
    """Build and save the model `work/name` in a child process (`--child-model`); its parameter counts."""
    spec_file, result = work / f"{name}.model.json", work / f"{name}.model.result.json"
    spec_file.write_text(
        json.dumps({"out": str(work / name), "shape": shape, "positions": positions, "dtype": dtype}),
        encoding="utf-8",
    )
    run_child(self_command("--child-model", spec_file, result), dict(os.environ), work / f"{name}.model.log")
    return json.loads(result.read_text(encoding="utf-8"))
