"""Build a deterministic, tiny, randomly initialised Llama model and its tokenizer.

The result is a regular Hugging Face model directory (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``) that loads with ``AutoModelForCausalLM`` and
``AutoTokenizer``. Everything is built offline: nothing is downloaded.

The tokenizer is a byte-level tokenizer without merges, i.e. one token per
UTF-8 byte (so every letter of a word is its own token and any text
round-trips exactly), plus the special tokens ``<unk>``, ``<s>`` and ``</s>``.
A TemplateProcessing post-processor prepends ``<s>`` when called normally; no
``</s>`` is appended. By default there is no pad token (downstream code is
expected to fall back to EOS); ``--pad-token`` adds a distinct ``<pad>``.

Usage::

    python scripts/make_tiny_model.py --out models/tiny-llama [--seed 0] [--pad-token]
        [--hidden-size 256] [--intermediate-size 768] [--num-layers 2] [--num-heads 4]

The output is byte-for-byte identical across runs with the same arguments
(and the same library versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"

# Default model dimensions (~1.8M parameters): large enough to learn the toy
# reverse task reliably, small enough to train in ~1-2 minutes on 2 CPU cores.
HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 768
NUM_LAYERS = 2
NUM_HEADS = 4
MAX_POSITIONS = 512


def build_tokenizer(pad_token: bool = False) -> PreTrainedTokenizerFast:
    """Return a byte-level (one token per byte) fast tokenizer.

    Ids: ``<unk>``=0, ``<s>``=1, ``</s>``=2, the 256 byte symbols 3..258 in
    byte order, and, with ``pad_token=True``, ``<pad>``=259.
    """
    specials = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    for symbol in _bytes_to_unicode():
        vocab[symbol] = len(vocab)
    if pad_token:
        vocab[PAD_TOKEN] = len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    special_list = [*specials, PAD_TOKEN] if pad_token else specials
    tok.add_special_tokens(special_list)

    kwargs: dict[str, str] = {}
    if pad_token:
        kwargs["pad_token"] = PAD_TOKEN
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
        **kwargs,
    )
    return hf_tok


def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level symbols, indexed by byte value (as used by ``ByteLevel``)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    symbols: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    *,
    hidden_size: int = HIDDEN_SIZE,
    intermediate_size: int = INTERMEDIATE_SIZE,
    num_layers: int = NUM_LAYERS,
    num_heads: int = NUM_HEADS,
) -> LlamaForCausalLM:
    """Return a randomly initialised (seeded) tiny ``LlamaForCausalLM`` for ``tokenizer``.

    The vocabulary size is ``len(tokenizer)``; the special token ids of the
    tokenizer go into the config and the generation config (pad falls back to
    EOS in the generation config when the tokenizer has no pad token).
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ),
    )
    return model


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point; returns the output directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny-llama"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pad-token",
        action="store_true",
        help="add a distinct <pad> token (default: none)",
    )
    parser.add_argument("--hidden-size", type=int, default=HIDDEN_SIZE)
    parser.add_argument("--intermediate-size", type=int, default=INTERMEDIATE_SIZE)
    parser.add_argument("--num-layers", type=int, default=NUM_LAYERS)
    parser.add_argument("--num-heads", type=int, default=NUM_HEADS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(pad_token=args.pad_token)
    model = build_model(
        tokenizer,
        seed=args.seed,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out} ({n_params / 1e6:.2f}M params, vocab {len(tokenizer)}, "
        f"pad={tokenizer.pad_token!r}) in {time.perf_counter() - start:.1f}s"
    )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
