"""Helpers for the end-to-end tests: run the installed ``linreg`` (or ``python -m cli``) in a
subprocess, as a user's shell or cron would, and fail loudly when the exit code is unexpected."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal, Self

import pytest

Entry = Literal["linreg", "module"]

# the console script installed next to this interpreter (the venv's bin/ or Scripts/)
LINREG = Path(sys.executable).parent / ("linreg.exe" if os.name == "nt" else "linreg")
TIMEOUT_S = 180.0  # one run of linreg train takes a few seconds; this only catches hangs

ANSI_ESCAPE = "\x1b"
BOX_DRAWING = re.compile("[\u2500-\u257f]")
# environment variables of the caller's shell that would change what linreg prints or does
_LEAKY = ("FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS", "TTY_COMPATIBLE", "COLUMNS")


def linreg_command(*args: str, entry: Entry = "linreg") -> list[str]:
    """The argv that runs linreg: the installed console script, or ``python -m cli``."""
    if entry == "linreg":
        if not LINREG.exists():
            pytest.fail(f"the console script {LINREG} is not installed (pip install -e .)")
        return [str(LINREG), *args]
    if entry == "module":
        return [sys.executable, "-m", "cli", *args]
    raise ValueError(f"unknown entry {entry!r}")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without LINREG_* settings or forced colours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LINREG_") and key not in _LEAKY
    }
    env.update(extra or {})
    return env


def run_linreg(
    *args: str | os.PathLike[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    entry: Entry = "linreg",
    timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run linreg once with stdin closed; stdout and stderr are captured separately.

    ``env`` replaces the environment entirely (default: ``clean_env()``).
    """
    return run_command(
        linreg_command(*map(str, args), entry=entry), cwd=cwd, env=env, timeout=timeout
    )


def run_command(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (linreg, or a launcher or shell that runs it) as ``run_linreg`` does."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        check=False,
    )


class Background:
    """A linreg process running in the background, its output drained by two threads."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.first_stderr_line = threading.Event()
        self.readers = [
            threading.Thread(target=self._drain, args=(process.stdout, self.stdout, None)),
            threading.Thread(
                target=self._drain, args=(process.stderr, self.stderr, self.first_stderr_line)
            ),
        ]
        for reader in self.readers:
            reader.daemon = True
            reader.start()

    @staticmethod
    def _drain(stream: IO[str], lines: list[str], seen: threading.Event | None) -> None:
        for line in stream:
            lines.append(line)
            if seen is not None:
                seen.set()
        if seen is not None:
            seen.set()  # end of file: stop waiting

    def finish(self, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Wait for the exit (killing the process after ``timeout``) and collect its output."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            for reader in self.readers:
                reader.join(timeout=10)
        return subprocess.CompletedProcess(
            self.process.args, code, "".join(self.stdout), "".join(self.stderr)
        )


def start_linreg(
    *args: str | os.PathLike[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    entry: Entry = "linreg",
) -> Background:
    """Start linreg in the background (stdin closed, stdout and stderr piped and drained)."""
    process = subprocess.Popen(
        linreg_command(*map(str, args), entry=entry),
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    return Background(process)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    args = " ".join(map(str, result.args))
    return (
        f"command: {args}\nexit code: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def expect_exit(
    result: subprocess.CompletedProcess[str], code: int
) -> subprocess.CompletedProcess[str]:
    """Fail with the command's whole output when it did not exit with ``code``."""
    if result.returncode != code:
        pytest.fail(f"expected exit code {code}\n{describe(result)}", pytrace=False)
    return result


def assert_plain(text: str, what: str = "output") -> None:
    """No ANSI escape codes and no box-drawing characters (U+2500-U+257F)."""
    assert ANSI_ESCAPE not in text, f"ANSI escape in {what}: {text!r}"
    found = BOX_DRAWING.findall(text)
    assert not found, f"box-drawing characters {found} in {what}: {text!r}"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """stderr is exactly one plain ``error:`` line (and nothing else) naming every needle."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert_plain(result.stderr, "stderr")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in the error line\n{describe(result)}"
    return lines[0]


def hidden_files(root: Path) -> list[Path]:
    """Files or folders under ``root`` whose name starts with '.' (left-over temporary files)."""
    return [path for path in root.rglob(".*")] if root.exists() else []


def run_concurrently(jobs: Mapping[str, Callable[[], object]]) -> dict[str, object]:
    """Run independent jobs (each usually one linreg subprocess) side by side.

    Most of a run is the import of torch, so a few in parallel use the cores while each stays
    a separate, real process.
    """
    workers = max(1, min(len(jobs), (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@functools.cache
def cuda_available() -> bool:
    """Whether this machine's torch sees a CUDA device (imports torch once, on demand)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def options(**values: Any) -> list[str]:
    """Command-line arguments from keyword options: lists repeat, True is a bare flag."""
    args: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def strict_json(text: str) -> Any:
    """JSON as the standard defines it: NaN and Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@dataclass(frozen=True)
class TrainRun:
    """One finished ``linreg train``: its process and its run directory."""

    result: subprocess.CompletedProcess[str]
    out: Path

    def ok(self) -> Self:
        expect_exit(self.result, 0)
        return self

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return dict(strict_json((self.out / "metrics.json").read_text()))
