"""`python -m trainer.cli.train cfg.yml [key=value ...]`: validate everything, then train.

With `distributed: {type: ddp, num_processes: N}` it starts N processes itself (torchrun); under
`torchrun` or `accelerate launch` it uses the launcher's processes.
"""

from __future__ import annotations

import sys

from trainer.cli.common import config_parser, run
from trainer.config.errors import ConfigErrors
from trainer.resolve.validate import load_config
from trainer.training.stops import RunStopped


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = config_parser("python -m trainer.cli.train", __doc__.splitlines()[0])
    if "--skip-machine-checks" in argv:
        parser.error(
            "--skip-machine-checks is validate's: a run trains on this machine, so its machine checks "
            "must pass here"
        )
    args = parser.parse_args(argv)
    resolved = load_config(args.config, args.overrides)

    from trainer.runtime import run as runner

    try:
        if runner.wants_relaunch(resolved):
            return runner.relaunch(resolved, argv)
        if not runner.launched():
            runner.train(resolved)
            return 0
        try:
            runner.train(resolved)
        except RunStopped as err:  # every process stopped at the same step, after the same save
            runner.end_processes(finished=True)
            print(err, file=sys.stderr)
            runner.exit_process(err.code)
        except BaseException:
            runner.end_processes(finished=False)
            raise
        runner.end_processes(finished=True)
        runner.exit_process(0)
    except ConfigErrors as err:  # found after validation (output_dir, SFTConfig): still FILE:LINE
        source = resolved.source
        for problem in err.problems:
            if not problem.where and (problem.path in source.lines or problem.path in source.overrides):
                problem.where = source.where(problem.path)
        raise
    return 0


if __name__ == "__main__":
    run(main)
