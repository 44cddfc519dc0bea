"""What every command shares: config arguments and turning user mistakes into exit status 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

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
