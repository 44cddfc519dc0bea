"""`trainer COMMAND [ARGS]`: one console script for every command (`trainer train cfg.yml`,
`trainer validate cfg.yml`, ...). `python -m trainer.cli.COMMAND ARGS` runs the same code; only the
chosen command's module is imported, so `trainer validate` stays free of torch."""

from __future__ import annotations

import difflib
import importlib
import sys

from trainer.cli.common import USER_ERROR, run

COMMANDS = {
    "train": "validate, then train",
    "validate": "every config error at once, and the run's plan; no training",
    "preprocess": "tokenize once, report, cache for train (--show N to look at rows)",
    "merge": "fold a LoRA / DoRA / QLoRA run's adapter into its base model",
    "generate": "generate with a trained model: prompts or a JSONL file in, JSONL out",
    "chat": "talk to a trained model in the terminal (streamed answers)",
    "serve": "an OpenAI-compatible HTTP server for a trained model",
    "evaluate": "loss/perplexity, generation metrics and lm-eval tasks of a trained model",
    "convert": "an Axolotl config as ours: every key carried, dropped with a note, or refused",
    "plugins": "every installed plugin: kind, name, distribution, version, status",
    "schema": "JSON Schema of the config, for editors",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: trainer COMMAND [ARGS]   (trainer COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, summary in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else USER_ERROR)
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"trainer {version('trainer')}")
        sys.exit(0)
    name = args[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"trainer: unknown command '{name}'{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(USER_ERROR)
    run(importlib.import_module(f"trainer.cli.{name}").main, args[1:])


if __name__ == "__main__":
    main()
