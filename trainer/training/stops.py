"""Why a run stops early and how it exits: `RunStopped` (exit status 128 + signal, or 1 for the loss
watchdog), and `SignalCatcher`, which turns SIGTERM / SIGINT into a request to stop. Importing this
is cheap (the commands' error handling does); trainer.training.guard acts on the requests.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Stopped:
    """Why training ended early: `reason` is 'signal' or 'watchdog'."""

    reason: str
    step: int
    detail: str
    signum: int = 0


class RunStopped(Exception):
    """Training ended early on purpose; the message says what to do next. Exits with `code`."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class SignalCatcher:
    """Records SIGTERM / SIGINT instead of dying, while installed (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: quit now
        if self.received is None:
            self.received = signum
            name = signal.Signals(signum).name
            print(
                f"\n{name} received: saving a checkpoint at the end of this step, then stopping "
                "(Ctrl-C again quits without saving)",
                flush=True,
            )
