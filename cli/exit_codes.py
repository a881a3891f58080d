"""Exit statuses, for shell scripts: ``case $? in 0) ... ;; 2) ... ;; esac``."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success
    FAILURE = 1  # failed while running: diverged, device missing, outputs not writable
    USAGE = 2  # invalid usage or input: bad option value, bad data or model file
    NOT_CONVERGED = 3  # --require-converged: the run was written but did not converge
    DRIFT = 4  # linreg compare --fail-on-drift: a coefficient moved significantly
    BROKEN_PIPE = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as a shell reports
    SIGINT = 130  # interrupted (Ctrl-C)
    SIGTERM = 143  # terminated (kill, a scheduler's time limit)
