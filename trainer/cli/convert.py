"""`python -m trainer.cli.convert AXOLOTL.yml [-o OUT.yml]`: an Axolotl config as ours.

Every key of the input is accounted for: carried (renamed or reshaped, with a comment naming the
source key beside the value), dropped with a note (null placeholders, off switches, Axolotl's
defaults, keys Axolotl itself ignores, speed/memory-only and logging settings), or refused (a
setting that changes what is trained and has no counterpart here): then the command exits 2 listing
each as `FILE:LINE key: ...` and writes nothing. A converted config is validated as `validate
--skip-machine-checks` would (relative paths from the current folder) before it is written, and a
value our validation rejects is refused the same way, naming the Axolotl key it came from; `-o`
never overwrites a file, and without it the config goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys

from trainer.cli.common import USER_ERROR, run, write_whole


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer.cli.convert", description=__doc__.split("\n")[0])
    p.add_argument("config", metavar="AXOLOTL.yml", help="an Axolotl config file")
    p.add_argument(
        "-o", "--out", metavar="OUT.yml", help="write the converted config here (never overwritten)"
    )
    p.add_argument("--quiet", action="store_true", help="do not list the carried and dropped keys")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from trainer.tools.axolotl.convert import ConvertError
    from trainer.tools.axolotl.emit import render
    from trainer.tools.axolotl.validate import convert_checked

    if args.out and os.path.exists(args.out):
        print(f"convert: error: {args.out} exists; refusing to overwrite it", file=sys.stderr)
        return USER_ERROR
    try:
        conversion = convert_checked(args.config)
    except ConvertError as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return USER_ERROR
    refused = conversion.of("refused")
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    carried, dropped = conversion.of("carried"), conversion.of("dropped")
    if not refused:
        say(f"carried ({len(carried)}):")
        for entry in carried:
            say(f"  {entry.where}  {entry.key} {entry.note}")
        say(f"dropped ({len(dropped)}):")
        for entry in dropped:
            say(f"  {entry.where}  {entry.key}: {entry.note}")
    if refused:
        print(f"{len(refused)} Axolotl setting(s) cannot be carried; nothing written:", file=sys.stderr)
        for entry in refused:
            print(f"  {entry.where}  {entry.key}: {entry.note}", file=sys.stderr)
        return USER_ERROR
    text = render(conversion)
    if conversion.env:
        say("environment the run needs: " + " ".join(f"{k}={v}" for k, v in conversion.env.items()))
    if args.out:
        write_whole(args.out, text)
        say(f"wrote {args.out}: check it with python -m trainer.cli.validate {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    run(main)
