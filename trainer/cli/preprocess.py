"""`python -m trainer.cli.preprocess cfg.yml [--show N] [key=value ...]`: format and tokenize the
datasets, print a report, and save the result under `dataset_prepared_path` for `train` to reuse.

The saved directory is named by a fingerprint of everything that changes the result; its
report.json holds the counts. `--show N` first prints N examples with the trained tokens marked.
"""

from __future__ import annotations

import os
import sys

from trainer.cli.common import config_parser, run
from trainer.resolve.validate import load_config


def main(argv: list[str] | None = None) -> int:
    parser = config_parser("python -m trainer.cli.preprocess", __doc__.splitlines()[0])
    parser.add_argument(
        "--show", type=int, default=0, metavar="N", help="print N examples with the loss marked"
    )
    parser.add_argument("--show-only", action="store_true", help="print the examples and stop")
    args = parser.parse_intermixed_args(argv)  # --show may come after the overrides or before
    # tokenizing needs no GPU: what this machine lacks for training is train's to refuse (a login
    # node may prepare the data of a GPU run)
    resolved = load_config(args.config, args.overrides, skip_machine_checks=True)

    from trainer.data import show
    from trainer.data.pipeline import REPORT_NAME, build_datasets, prepare_formatters
    from trainer.runtime.build import load_tokenizer

    tokenizer = load_tokenizer(resolved.config)
    if args.show or args.show_only:
        prepare_formatters(resolved, tokenizer)
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        for line in show.render(resolved, tokenizer, args.show or 3, color):
            print(line)
        if args.show_only:
            return 0
        print()
    prepared = build_datasets(resolved, tokenizer)
    for line in prepared.report.lines():
        print(line)
    if prepared.cache_dir:
        print(f"report: {os.path.join(prepared.cache_dir, REPORT_NAME)}")
    else:
        print("dataset_prepared_path is not set: nothing was saved (train prepares the data itself)")
    return 0


if __name__ == "__main__":
    run(main)
