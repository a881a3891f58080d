"""Run linreg's benchmarks and write benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME ...] [--gpu]

Each measurement runs side by side with its baseline in the same run; see README.md here.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import accuracy
import epochs
import processes
import torch
from harness import (
    LONG_REPETITION_S,
    QUICK_LONG_REPETITION_S,
    Section,
    Settings,
    log,
)
from machine import load_average, machine_rows, version_rows
from report import RunInfo, render

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
RUNNERS: dict[str, Callable[[Settings], Section]] = {
    "startup": processes.startup,
    "demo": processes.demo,
    "epoch": epochs.epoch_cost,
    "widths": epochs.epoch_widths,
    "accuracy": accuracy.accuracy,
    "memory": processes.memory,
    "gpu": epochs.gpu,
}
SECTIONS = tuple(RUNNERS)
TITLES = {
    "startup": "Start-up",
    "demo": "The demo",
    "epoch": "Epoch cost (CPU)",
    "widths": "Epoch cost at other widths (CPU)",
    "accuracy": "Time to accuracy (float64, CPU)",
    "memory": "Memory",
    "gpu": "GPU",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="Measure linreg against its baselines."
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and 3 repetitions (a smoke run)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, metavar="NAME",
        help=f"run only these sections: {', '.join(SECTIONS)}",
    )  # fmt: skip
    parser.add_argument(
        "--gpu", action="store_true", help="also run the CUDA section (skipped without CUDA)"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per measurement (default 5, quick 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, here (torch.set_num_threads) and in the commands (OMP_NUM_THREADS); "
        "default: torch's own choice",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})"
    )
    return parser.parse_args(argv)


def linreg_command(python: Path) -> Path:
    """The linreg script next to the interpreter (the venv's), else the one on PATH."""
    beside = python.parent / "linreg"
    if beside.exists():
        return beside
    import shutil

    found = shutil.which("linreg")
    if found is None:
        sys.exit("error: no linreg command next to this python or on PATH; pip install -e .")
    return Path(found)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = list(args.only) if args.only else [s for s in SECTIONS if s != "gpu" or args.gpu]
    reps = args.reps or (3 if args.quick else 5)
    python = Path(sys.executable).absolute()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the commands it runs
    settings = Settings(
        quick=args.quick,
        reps=reps,
        python=python,
        linreg=linreg_command(python),
        repo=REPO,
        long_s=QUICK_LONG_REPETITION_S if args.quick else LONG_REPETITION_S,
    )
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load_average()
    start = time.perf_counter()
    sections: list[Section] = []
    todo = [key for key in SECTIONS if key in wanted]
    for key in todo:
        log(f"[{key}]")
        section_start, load = time.perf_counter(), load_average()
        section = run_section(key, settings)
        seconds = time.perf_counter() - section_start
        section.notes.append(
            f"Took {seconds:.0f} s; load average (1, 5, 15 min) before {load}, "
            f"after {load_average()}."
        )
        sections.append(section)
        log(f"[{key}] {seconds:.0f} s")
        for row in section.rows:
            log(f"  {row.measurement}: {row.figure} (goal {row.goal or '-'}: {row.met or '-'})")
        # written after every section, so that a run cut short still leaves its results
        write_results(args, reps, started, start, load_before, sections, done=key == todo[-1])
    log(f"wrote {args.out}")
    return 1 if any(s.error for s in sections) else 0


def write_results(
    args: argparse.Namespace,
    reps: int,
    started: str,
    start: float,
    load_before: str,
    sections: list[Section],
    *,
    done: bool,
) -> None:
    python = Path(sys.executable).absolute()
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    command = " ".join([str(shown), "benchmarks/run.py", *(shlex.quote(a) for a in sys.argv[1:])])
    info = RunInfo(
        command=command,
        started=started,
        seconds=time.perf_counter() - start,
        quick=args.quick,
        reps=reps,
        machine=machine_rows(),
        versions=version_rows(REPO),
        load_before=load_before,
        load_after=load_average(),
        done=done,
    )
    args.out.write_text(render(info, sections))


def run_section(key: str, settings: Settings) -> Section:
    """Run one section; a failure is recorded in it (and printed), not fatal to the others."""
    try:
        return RUNNERS[key](settings)
    except Exception as exc:
        traceback.print_exc()
        return Section(key=key, title=TITLES[key], error=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
