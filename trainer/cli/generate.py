"""`python -m trainer.cli.generate RUN [--prompt TEXT | --file prompts.jsonl] [--out out.jsonl]`:
generate with a trained model, loaded as it was trained (see trainer.inference.load).

Prompts go through the run's chat template when it has one (`--raw` skips it). A prompts file holds
one JSON value per line: a string (a prompt), a list (chat messages), or an object whose
`--prompt-field` is either; each output row keeps the input row's fields and adds the generation
under `--output-field` (a list of texts with `--num-return-sequences` above 1). Greedy by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from trainer.cli.common import (
    USER_ERROR,
    add_model_args,
    add_sampling_args,
    load_from,
    run,
    sampling_from,
    write_whole,
)


class RowsError(ValueError):
    """A prompts file that cannot be read: FILE:LINE and what is wrong."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.cli.generate",
        description="Generate with a trained model (full, adapter or merged run, checkpoint, or "
        "model folder).",
    )
    add_model_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable)")
    source.add_argument("--file", metavar="JSONL", help="prompts, one JSON value per line (see above)")
    p.add_argument("--out", metavar="JSONL", help="write rows here (default: stdout); never overwritten")
    p.add_argument("--prompt-field", default="prompt", help="the prompt's field in object rows")
    p.add_argument("--output-field", default="generation", help="the field the generation is written to")
    p.add_argument("--system", help="a system message for chat prompts that have none")
    p.add_argument("--num-return-sequences", type=int, default=1, help="generations per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    add_sampling_args(p)
    return p


Prompt = str | list[dict[str, Any]]
Row = tuple[str, dict[str, Any], Prompt]


def read_rows(path: str, prompt_field: str) -> list[Row]:
    """(FILE:LINE, the row to write back, its prompt) for each non-blank line of `path`."""
    rows: list[Row] = []
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as err:
        raise RowsError(f"{path}: {err.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise RowsError(f"{where}  not a JSON value ({err.msg})") from None
            if isinstance(value, str):
                rows.append((where, {prompt_field: value}, value))
            elif isinstance(value, list):
                rows.append((where, {"messages": value}, _messages(value, where)))
            elif isinstance(value, dict):
                prompt = value.get(prompt_field, value.get("messages"))
                if isinstance(prompt, str):
                    rows.append((where, value, prompt))
                elif isinstance(prompt, list):
                    rows.append((where, value, _messages(prompt, where)))
                else:
                    raise RowsError(
                        f"{where}  needs a '{prompt_field}' field (a string, or a list of chat messages) "
                        f"or 'messages'; it has {', '.join(map(repr, value)) or 'no fields'}"
                    )
            else:
                raise RowsError(f"{where}  must be a string, a list of messages or an object")
    if not rows:
        raise RowsError(f"{path}: no prompts in it")
    return rows


def _messages(value: list[Any], where: str) -> list[dict[str, Any]]:
    for i, message in enumerate(value):
        valid = isinstance(message, dict) and isinstance(message.get("role"), str) and "content" in message
        if not valid:
            raise RowsError(f"{where}  message {i} must be an object with 'role' and 'content'")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.num_return_sequences < 1 or args.batch_size < 1:
        print("generate: error: --num-return-sequences and --batch-size must be at least 1", file=sys.stderr)
        return USER_ERROR
    sampling = sampling_from(args, args.num_return_sequences)
    if args.out and os.path.exists(args.out):
        print(f"generate: error: --out {args.out} exists; refusing to overwrite it", file=sys.stderr)
        return USER_ERROR
    try:
        if args.file:
            rows = read_rows(args.file, args.prompt_field)
        else:
            rows = [(f"--prompt {i}", {args.prompt_field: t}, t) for i, t in enumerate(args.prompt, 1)]
    except RowsError as err:
        print(f"generate: error: {err}", file=sys.stderr)
        return USER_ERROR

    from trainer.inference.generation import PromptError, check_length, generate, prompt_ids

    loaded = load_from(args)
    ids = []
    for where, _, prompt in rows:
        try:
            row_ids = prompt_ids(loaded, prompt, args.system)
            check_length(loaded, row_ids, sampling.max_new_tokens)
        except PromptError as err:
            print(f"generate: error: {where}  {err}", file=sys.stderr)
            return USER_ERROR
        ids.append(row_ids)
    results = generate(loaded, ids, sampling, batch_size=args.batch_size)
    out_rows = []
    for (_, row, _), completions in zip(rows, results, strict=True):
        texts = [c.text for c in completions]
        out_rows.append({**row, args.output_field: texts[0] if len(texts) == 1 else texts})
    if args.out:
        write_whole(args.out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in out_rows))
        print(f"wrote {len(out_rows)} rows to {args.out}", file=sys.stderr)
    elif args.file:
        for row in out_rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        for row in out_rows:
            value = row[args.output_field]
            print("\n---\n".join(value) if isinstance(value, list) else value)
    return 0


if __name__ == "__main__":
    run(main)
