"""The measuring harness: repetitions run side by side, medians, child processes, and the
rows and sections that RESULTS.md is made of."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LONG_REPETITION_S = 60.0  # a task slower than this is measured once, not repeated
QUICK_LONG_REPETITION_S = 10.0  # the same with --quick
MB = 1e6


class BenchmarkError(RuntimeError):
    """A measurement could not be taken (a command failed, a library call raised)."""


@dataclass(frozen=True)
class Settings:
    """What one invocation of run.py measures and how thoroughly."""

    quick: bool
    reps: int  # repetitions of each measurement (the median is reported)
    python: Path  # the venv's interpreter
    linreg: Path  # the venv's linreg command
    repo: Path  # the repository root (the children run elsewhere, in temporary folders)
    long_s: float = LONG_REPETITION_S  # tasks slower than this are measured once


@dataclass(frozen=True)
class Sample:
    """One repetition of one task: its seconds and whatever else it reports."""

    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


Task = Callable[[], Sample]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def median_seconds(samples: Sequence[Sample]) -> float:
    return median([s.seconds for s in samples])


def side_by_side(
    tasks: dict[str, Task],
    reps: int,
    *,
    warmup: bool = True,
    long_s: float = LONG_REPETITION_S,
    settle_s: float = 0.0,
) -> dict[str, list[Sample]]:
    """Run every task ``reps`` times, round-robin (a, b, a, b, ...), so that a slow spell of
    a shared machine hits all of them alike. With ``warmup`` each runs once first, untimed.
    A task whose first timed repetition takes longer than ``long_s`` is not repeated.

    ``settle_s``: a task that takes less than this runs once more, untimed, right before
    each timed repetition, so that it is timed in its own steady state (memory allocator,
    caches, threads) and not in the wake of the task before it. Measured here: scikit-learn's
    LinearRegression on 1e6 x 16 takes 0.21 s run after itself and 0.4-0.7 s right after
    another task, whichever."""
    if warmup:
        for task in tasks.values():
            task()
    samples: dict[str, list[Sample]] = {name: [] for name in tasks}
    for _ in range(reps):
        for name, task in tasks.items():
            done = samples[name]
            if done and done[0].seconds > long_s:
                continue
            if done and done[0].seconds < settle_s:
                task()
            done.append(task())
    return samples


# --- child processes ------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A child process that ran to completion."""

    seconds: float  # wall time from start to exit
    max_rss: int | None = None  # peak resident set size in bytes (with measure_memory)
    peak_anon: int | None = None  # peaks of RssAnon and RssFile sampled from /proc
    peak_file: int | None = None


# Peak RSS comes from a small launcher that forks and execs the command and reports the
# child's ru_maxrss. Measured directly, it would be wrong: Linux keeps the high-water mark of
# the address space a process had before execve, and subprocess starts children with vfork,
# so a child of this (large) benchmark process would report at least this process's peak.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def child_env() -> dict[str, str]:
    """The environment without LINREG_* settings, so the defaults are what is measured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LINREG_")}


def run_process(cmd: Sequence[str | Path], *, cwd: Path, measure_memory: bool = False) -> Finished:
    """Run ``cmd`` with stdout and stderr to files (not a terminal) and raise BenchmarkError
    unless it exits 0. ``measure_memory`` runs it under LAUNCHER for its peak RSS (the
    figure ``/usr/bin/time -v`` prints as "Maximum resident set size") and samples
    /proc/PID/status every 10 ms for the anonymous and file-backed parts of the resident
    set; that slows the wait a little, so it is not used for timings."""
    argv = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as report:
        if measure_memory:
            argv = [sys.executable, "-S", "-c", LAUNCHER, report.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        peak_anon, peak_file = _wait_sampling(proc) if measure_memory else (None, None)
        proc.wait()
        seconds = time.perf_counter() - start
        code, max_rss = proc.returncode, None
        if measure_memory and code == 0:
            kilobytes, child_code = report.read().split()
            code, max_rss = int(child_code), int(kilobytes) * 1024
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise BenchmarkError(f"`{' '.join(map(str, cmd))}` exited {code}: {' | '.join(tail)}")
    return Finished(seconds, max_rss, peak_anon, peak_file)


def _wait_sampling(launcher: subprocess.Popen[bytes]) -> tuple[int, int]:
    """Until the launcher exits, the peaks of its child's RssAnon and RssFile."""
    peak_anon = peak_file = 0
    while launcher.poll() is None:
        for pid in _children(launcher.pid):
            anon, file = _rss_parts(pid)
            peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        time.sleep(0.01)
    return peak_anon, peak_file


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except (OSError, ValueError):
        return []


def _rss_parts(pid: int) -> tuple[int, int]:
    """RssAnon and RssFile of ``pid`` in bytes (0, 0 when it cannot be read)."""
    parts = {"RssAnon:": 0, "RssFile:": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, *value = line.split()
                if key in parts:
                    parts[key] = int(value[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return parts["RssAnon:"], parts["RssFile:"]


def command_text(cmd: Sequence[str | Path], settings: Settings) -> str:
    """A command as a user would type it: the venv's programs by their repository path."""
    words = []
    for word in cmd:
        text = str(word)
        if text.startswith(str(settings.repo) + os.sep):
            text = os.path.relpath(text, settings.repo)
        words.append(text if text.startswith("<") else shlex.quote(text))
    return " ".join(words)


# --- what RESULTS.md reports ----------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A target for a figure: ``figure <= limit`` (or ``>=``, ``<``), shown as ``text``."""

    op: str
    limit: float
    text: str

    def met(self, figure: float) -> bool:
        checks = {"<=": figure <= self.limit, "<": figure < self.limit, ">=": figure >= self.limit}
        return checks[self.op]


@dataclass(frozen=True)
class Row:
    """One line of a results table: what linreg did, against what, the figure and its goal."""

    measurement: str
    linreg: str  # the measured value, formatted, with context
    baseline: str  # the baseline's value, formatted
    figure: str  # the ratio (or difference) reported
    goal: str = ""  # empty: no goal, shown for information
    met: str = ""  # "yes", "**no**", "gap not reached", or empty without a goal
    reps: str = ""  # repetitions behind the medians


def verdict(goal: Goal | None, figure: float | None, *, valid: bool = True) -> str:
    """The "met" cell: a goal's result, or why it cannot be judged."""
    if goal is None:
        return ""
    if not valid:
        return "gap not reached"
    if figure is None:
        return "n/a"
    return "yes" if goal.met(figure) else "**no**"


def ratio_row(
    measurement: str,
    linreg: str,
    baseline: str,
    ratio: float,
    goal: Goal | None = None,
    *,
    reps: str = "",
    valid: bool = True,
    bound: bool = False,
) -> Row:
    """``bound``: the baseline never got there, so its true time is longer and the ratio is
    an upper bound (shown as ``< ratio``)."""
    return Row(
        measurement,
        linreg,
        baseline,
        f"{'< ' if bound else ''}{ratio:.3g}x",
        goal.text if goal else "",
        verdict(goal, ratio, valid=valid),
        reps,
    )


@dataclass
class Section:
    """One numbered part of RESULTS.md."""

    key: str  # the --only name
    title: str
    rows: list[Row] = field(default_factory=list)
    sizes: str = ""  # which sizes this run used (quick runs use smaller ones)
    commands: list[str] = field(default_factory=list)  # exactly what was run
    notes: list[str] = field(default_factory=list)
    skipped: str = ""  # why the section did not run
    error: str = ""  # why it stopped early


def count(n: int) -> str:
    """Row counts as written in the brief: 1e7, 2e7, 100000 -> 1e5; 16000000 -> 1.6e7; below
    1000, and where two digits are not exact, the number itself."""
    if n < 1000:
        return str(n)
    for digits in (0, 1):
        text = f"{n:.{digits}e}"
        if float(text) == n:
            return text.replace("e+0", "e").replace("e+", "e")
    return str(n)


def shape(n: int, d: int) -> str:
    return f"{count(n)} x {d}"


def seconds_text(seconds: float) -> str:
    """3 significant digits in s, ms or us."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def reps_text(*groups: Sequence[object]) -> str:
    """ "5" when every group has 5 samples, "5/1" otherwise."""
    counts = [str(len(g)) for g in groups]
    return counts[0] if len(set(counts)) == 1 else "/".join(counts)


def log(message: str) -> None:
    """Progress of the benchmark itself, on stderr."""
    print(message, file=sys.stderr, flush=True)
