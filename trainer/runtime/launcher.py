"""`python -m trainer.runtime.launcher TORCHRUN_ARGS...`: torchrun as the train command runs it, which also
writes down which process failed and how.

It runs torchrun's own `run()`. When a process dies (killed by a signal, such as SIGKILL from the
out-of-memory killer, or an error exit), torchrun stops the others (SIGTERM, then SIGKILL after its
shutdown timeout) and raises ChildFailedError; the failures go as JSON to the file named by
$TRAINER_LAUNCH_REPORT, so the train command can name the process. A SIGTERM / SIGINT forwarded by
the train command (a checkpoint-and-stop) exits 128 + signal without torchrun's traceback.
"""

from __future__ import annotations

import json
import os
import sys

REPORT_ENV = "TRAINER_LAUNCH_REPORT"
"""Where the launcher writes the failed processes (JSON), for the train command that started it."""
CHECKED_ENV = "TRAINER_OUTPUT_DIR_CHECKED"
"""Set for the processes the train command starts: it checked output_dir and warned already."""
PREPARED_ENV = "TRAINER_PREPARED_DATA"
"""Set for the processes the train command starts: the folder with the data it prepared for them."""


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except SignalException as err:
        return 128 + int(err.sigval)
    except ChildFailedError as err:
        failures = [
            {
                "rank": int(rank),
                "local_rank": failure.local_rank,
                "pid": failure.pid,
                "exitcode": failure.exitcode,
                "signal": failure.signal_name() if failure.exitcode < 0 else None,
            }
            for rank, failure in err.failures.items()
        ]
        path = os.environ.get(REPORT_ENV)
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(failures, handle)
        return 1
    return 0


def read_failures(path: str) -> list[dict]:
    """The failed processes `main` wrote to `path` (empty when none failed)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(json.load(handle))


def describe_failures(failures: list[dict], world_size: int) -> str:
    """The failed processes, those killed by a signal first (the others usually failed because they
    lost that peer), those that got SIGTERM (the launcher's own stop) last."""

    def order(failure: dict) -> tuple[int, int]:
        signal = failure["signal"]
        return (0 if signal and signal != "SIGTERM" else 1 if signal is None else 2), failure["rank"]

    lines = []
    for failure in sorted(failures, key=order):
        if failure["signal"] == "SIGTERM":
            how = "was stopped (SIGTERM)"
        elif failure["signal"]:
            how = f"was killed by {failure['signal']}"
        else:
            how = f"exited with status {failure['exitcode']} (its error is above)"
        lines.append(f"process {failure['rank']} of {world_size} (pid {failure['pid']}) {how}")
    return "; ".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
