"""What the commands share: config arguments, the arguments of the commands that run a trained model
(which model to load and how, how to sample) and loading it, and turning user mistakes into exit
status 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config.errors import ConfigErrors

USER_ERROR = 2


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="the YAML config file")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value or datasets[0].path=value (values parsed as YAML)"
    )
    return parser


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a command; config and data errors print without a traceback and exit 2, and a reader
    that closes the pipe early (`| head`) ends it quietly with status 141, as the shell's own."""
    from trainer.data.readers import DataError
    from trainer.inference.load import LoadError
    from trainer.training.stops import RunStopped

    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
    except BrokenPipeError:  # `... | head -1` stopped reading: not an error of the command
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more to flush at exit
        code = 128 + signal.SIGPIPE
    except ConfigErrors as err:
        print(err.render(), file=sys.stderr)
        code = USER_ERROR
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        code = USER_ERROR
    except LoadError as err:
        print(f"error: {err}", file=sys.stderr)
        code = USER_ERROR
    except RunStopped as err:
        print(err, file=sys.stderr)
        code = err.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def write_whole(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it there: never half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the commands that run a trained model: generate, chat, serve, evaluate ----------------------

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        metavar="RUN",
        help="a run's output_dir (full, adapter or merged), a checkpoint-N, or a model folder",
    )
    p.add_argument("--base-model", help="an adapter run's base model, when the path it names has moved")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: the checkpoint's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: a GPU when there is one)")
    p.add_argument(
        "--no-quantize",
        action="store_true",
        help="a QLoRA run: load its base unquantized instead of in 4 bits as it was trained",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model's own Python code (a run's config says it for itself)",
    )
    template = p.add_mutually_exclusive_group()
    template.add_argument("--raw", action="store_true", help="do not apply the chat template to prompts")
    template.add_argument(
        "--chat", action="store_true", help="apply the tokenizer's chat template even to a raw-text run"
    )


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling (greedy by default)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0 samples")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="a stop string (repeatable)")


def sampling_from(args: argparse.Namespace, num_return_sequences: int = 1) -> Any:
    """The sampling flags as a trainer.inference.generation.Sampling; bad values exit 2."""
    from trainer.inference.generation import Sampling

    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        num_return_sequences=num_return_sequences,
        seed=args.seed,
        stop=list(args.stop),
    )
    problems = sampling.problems()
    if problems:
        raise SystemExit(_usage_error("; ".join(problems)))
    return sampling


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_from(args: argparse.Namespace, log: Any = None) -> Any:
    """The model the arguments name, loaded; what was loaded is written to `log` (stderr by default,
    so stdout carries only results)."""
    import warnings

    from trainer.inference.load import load

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation chatter
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    chat = True if args.chat else (False if args.raw else None)
    loaded = load(
        args.run,
        base_model=args.base_model,
        dtype=args.dtype,
        device=args.device,
        quantize=not args.no_quantize,
        chat=chat,
        trust_remote_code=True if args.trust_remote_code else None,
    )
    say(f"model: {loaded.name} ({loaded.description}) on {loaded.device}")
    if loaded.source.trust_remote_code or args.trust_remote_code:
        say("warning: trust_remote_code is on: the model's own Python code runs on this machine")
    for note in loaded.notes:
        say(f"note: {note}")
    return loaded
