"""`python -m trainer.cli.merge RUN_DIR [--out DIR] [--dtype ...]`: fold an adapter run's
adapter (LoRA, DoRA, QLoRA, IA3, ... any adapter PEFT can merge) into its base model and write a
standalone Hugging Face model (safetensors + the run's tokenizer).

The base model is the one named in the run's adapter_config.json, loaded unquantized in --dtype (for a
QLoRA run: the adapter was trained against a 4-bit base and is merged into the full-precision weights,
the standard dequantized merge). The output goes to a temporary folder that is renamed to --out
(default: RUN_DIR-merged, beside the run); an existing non-empty --out is never overwritten. Then the
written model is reloaded with AutoModelForCausalLM and greedily generates a few tokens (skip with
--no-smoke-test).
"""

from __future__ import annotations

import argparse
import sys
import time

from trainer.cli.common import USER_ERROR, run
from trainer.tools.merge import DTYPES, MergeError, check_out, default_out, inspect_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.cli.merge",
        description="Fold an adapter run's adapter (LoRA, DoRA, QLoRA, IA3, ...) into its base model and "
        "write a standalone Hugging Face model (safetensors + the run's tokenizer + generation_config).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished adapter run (its output_dir)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the merged model (default: RUN_DIR-merged); must not exist or be empty",
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="dtype to load the base in, merge and save (auto: the base checkpoint's own dtype)",
    )
    p.add_argument("--base-model", help="the base model, when the path in adapter_config.json has moved")
    p.add_argument("--prompt", default="Hello", help="smoke-test prompt (chat template applied if any)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="tokens the smoke test generates")
    p.add_argument("--no-smoke-test", action="store_true", help="skip reloading and generating")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return _merge(args)
    except MergeError as err:
        print(f"merge: error: {err}", file=sys.stderr)
        return USER_ERROR


def _merge(args: argparse.Namespace) -> int:
    info = inspect_run(args.run_dir, args.base_model)
    out = check_out(args.out if args.out else default_out(args.run_dir))
    start = time.perf_counter()

    print(f"run:      {info.run_dir}")
    print(f"adapter:  {info.describe()}")
    print(f"base:     {info.base_model} (loaded unquantized, dtype {args.dtype})")
    if info.trust_remote_code:  # the run's config.resolved.yml says so
        print(
            f"warning:  trust_remote_code is on (from the run's config): the model's own Python code "
            f"from {info.base_model} will run on this machine"
        )
    for note in info.notes:
        print(f"note:     {note}")
    if info.quantized_bits:
        print(
            f"note:     the adapter was trained against a {info.quantized_bits}-bit quantized base; it is "
            "merged into the full-precision base weights (dequantized merge, the standard way), so the "
            "merged model's outputs differ slightly from the quantized model it was trained with"
        )

    import warnings

    from trainer.tools.merge import merge, smoke_test

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    result = merge(info, out, args.dtype)
    if result.vocab_resized:
        before, after = result.vocab_resized
        print(
            f"resized:  embeddings {before} -> {after} rows (the run's tokenizer / adapter has more tokens)"
        )
    print(f"merged:   {result.parameters:,} parameters, {result.dtype}")
    print(f"wrote:    {result.out} ({', '.join(result.files)}) in {time.perf_counter() - start:.1f}s")

    if args.no_smoke_test:
        return 0
    try:
        prompt, completion = smoke_test(
            result.out, args.prompt, args.max_new_tokens, trust_remote_code=info.trust_remote_code
        )
    except Exception as err:  # the model is written; say what failed and exit non-zero
        print(
            f"smoke test FAILED reloading/generating from {result.out}: {type(err).__name__}: {err}",
            file=sys.stderr,
        )
        return 1
    if completion.startswith("score "):
        print("smoke test (reloaded with AutoModelForSequenceClassification, the reward model's score):")
        print(f"  text:   {prompt!r}")
        print(f"  {completion}")
        return 0
    print(f"smoke test (reloaded with AutoModelForCausalLM, greedy, {args.max_new_tokens} new tokens):")
    print(f"  prompt:     {prompt!r}")
    print(f"  completion: {completion!r}")
    return 0


if __name__ == "__main__":
    run(main)
