"""SIGINT and SIGTERM: stop at the next safe point, or at once when there is none.

While the training loop runs it polls ``STOP`` between steps, so a signal ends the run at a
step boundary, after a checkpoint (with --checkpoint-every). Elsewhere (reading data, writing
files) a signal interrupts at once; the atomic writes leave no partial file either way. A
second signal always ends the process at once (the default action is restored).
"""

from __future__ import annotations

import signal
from types import FrameType

from .exit_codes import ExitCode

NAMES = {signal.SIGINT: ("SIGINT", ExitCode.SIGINT), signal.SIGTERM: ("SIGTERM", ExitCode.SIGTERM)}


class Interrupted(BaseException):
    """A signal ended the run; carries the exit status and what was kept."""

    def __init__(self, name: str, code: ExitCode, detail: str = "no results were written") -> None:
        super().__init__(f"interrupted by {name}; {detail}")
        self.name = name
        self.code = code


class StopRequest:
    """The flag the training loop polls (``should_stop``)."""

    def __init__(self) -> None:
        self.received: tuple[str, ExitCode] | None = None
        self.cooperative = False  # the loop is polling: a signal only sets the flag

    def __call__(self) -> bool:
        self.cooperative = True
        return self.received is not None

    def install(self) -> None:
        for number in NAMES:
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        for other in NAMES:
            signal.signal(other, signal.SIG_DFL)  # a second signal ends the process at once
        self.received = NAMES[signal.Signals(number)]
        if not self.cooperative:
            raise Interrupted(*self.received)

    def leave_loop(self) -> None:
        """The loop is over: from now on a signal interrupts at once, and one that arrived
        after the loop's last poll is acted on now."""
        self.cooperative = False
        if self.received is not None:
            raise Interrupted(*self.received)


STOP = StopRequest()
