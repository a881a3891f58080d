"""The CSV reading path of ``linreg train``, and its peak memory, on a large CSV file.

    .venv/bin/python benchmarks/tables.py [--rows 15000000] [--reps 3] [--quick] [--out FILE]

Writes benchmarks/TABLES.md. A CSV of N rows x 8 standard-normal features and y = X @ w + 1 +
0.1 noise (header ``x1,...,x8,y``; the values are float32, written by pyarrow in their
shortest round-trip form, at most 9 significant digits) is generated chunk by chunk in a
temporary folder, with a second file of its first N/2 rows, and removed at the end. Then,
repetitions alternating (a, b, c, a, b, c, ...) after one untimed warm-up of each, medians of:

a. ``linreg train --data FILE --no-plot -q --out DIR``, the whole child process;
b. ``pyarrow.csv.read_csv(FILE)`` alone, timed inside a child python after its imports;
c. ``pandas.read_csv(FILE)`` then scikit-learn's ``LinearRegression().fit(X, y)``, timed
   inside a child python after its imports, and as the whole child process.

The goal is linreg's whole run <= 1.5x pyarrow's read alone. Peak memory: the peak RSS of
``linreg train --data FILE --batch-size 65536 --epochs 1 --no-plot -q`` on both files, minus
that of ``python -c "import numpy, torch"`` (goal < 300 MB above, for both), measured as the
``memory`` section of run.py does (harness.run_process: ``ru_maxrss`` from ``os.wait4``).
The children run without the LINREG_* environment variables, in the temporary folder.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv
from harness import (
    MB,
    Finished,
    Goal,
    Sample,
    Settings,
    Task,
    command_text,
    log,
    median,
    median_seconds,
    run_process,
    seconds_text,
    side_by_side,
    verdict,
)
from machine import load_average, machine_rows, version, version_rows
from processes import FreshDir, memory_command, scratch
from report import cell, pairs
from run import linreg_command

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FEATURES = 8
CHUNK_ROWS = 1 << 20

# Each child writes its in-process seconds to the file named by argv[2].
ARROW_CODE = """\
import sys, time
import pyarrow.csv

start = time.perf_counter()
pyarrow.csv.read_csv(sys.argv[1])
seconds = time.perf_counter() - start
with open(sys.argv[2], "w") as out:
    out.write(f"{seconds}")
"""
PANDAS_CODE = """\
import sys, time
import pandas, sklearn.linear_model

start = time.perf_counter()
frame = pandas.read_csv(sys.argv[1])
read = time.perf_counter() - start
X, y = frame.iloc[:, :-1].to_numpy(), frame.iloc[:, -1].to_numpy()
sklearn.linear_model.LinearRegression().fit(X, y)
seconds = time.perf_counter() - start
with open(sys.argv[2], "w") as out:
    out.write(f"{read} {seconds}")
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/tables.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=15_000_000, help="rows of the CSV file")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 3 repetitions")
    parser.add_argument("--out", type=Path, default=HERE / "TABLES.md", help="the report")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.reps = 200_000, 3
    return args


def write_csvs(paths: dict[int, Path]) -> None:
    """CSV files of the first ``n`` rows of one data set, for each ``n: path``, written
    together chunk by chunk (never whole in memory)."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=FEATURES)
    names = [f"x{j + 1}" for j in range(FEATURES)] + ["y"]
    options = arrow_csv.WriteOptions(include_header=False)
    sinks = {n: pa.OSFile(str(path), "wb") for n, path in paths.items()}
    for sink in sinks.values():
        sink.write((",".join(names) + "\n").encode())
    for start in range(0, max(paths), CHUNK_ROWS):
        stop = min(max(paths), start + CHUNK_ROWS)
        x = rng.standard_normal((stop - start, FEATURES))
        y = x @ weights + 1 + 0.1 * rng.standard_normal(stop - start)
        columns = [*x.T, y]
        table = pa.table({n: c.astype(np.float32) for n, c in zip(names, columns, strict=True)})
        for n, sink in sinks.items():
            if start < n:
                arrow_csv.write_csv(table.slice(0, min(stop, n) - start), sink, options)
    for sink in sinks.values():
        sink.close()


def train_command(settings: Settings, data: Path | str, out: Path | str) -> list[str | Path]:
    return [settings.linreg, "train", "--data", data, "--no-plot", "-q", "--out", out]


def timed_child(cmd: Sequence[str | Path], cwd: Path, seconds_file: Path) -> Sample:
    """A child that writes its in-process seconds to ``seconds_file``: the last of them as
    the sample, every one and the whole process's wall time in ``info``."""
    done = run_process(cmd, cwd=cwd)
    inside = [float(word) for word in seconds_file.read_text().split()]
    return Sample(inside[-1], {"inside": inside, "whole": done.seconds})


def run_then_remove(
    cmd: Sequence[str | Path], cwd: Path, out: Path | None = None, *, memory: bool = False
) -> Finished:
    """harness.run_process, then the run directory ``out`` removed."""
    try:
        return run_process(cmd, cwd=cwd, measure_memory=memory)
    finally:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = Path(sys.executable).absolute()
    settings = Settings(args.quick, args.reps, python, linreg_command(python), REPO)
    started, load_before, start = datetime.now(UTC), load_average(), time.perf_counter()
    sizes = [args.rows // 2, args.rows]
    with scratch() as cwd:
        files = {n: cwd / f"data{n}.csv" for n in sizes}
        log(f"writing {args.rows:,} x {FEATURES + 1} CSV (and its first {sizes[0]:,} rows)")
        write_csvs(files)
        data, seconds_file, fresh = files[args.rows], cwd / "seconds.txt", FreshDir(cwd, "run")
        mb = data.stat().st_size / MB
        log(f"  {mb:.0f} MB in {time.perf_counter() - start:.0f} s")

        def linreg() -> Sample:
            out = fresh()
            return Sample(run_then_remove(train_command(settings, data, out), cwd, out).seconds)

        arrow_cmd: list[str | Path] = [python, "-c", ARROW_CODE, data, seconds_file]
        pandas_cmd: list[str | Path] = [python, "-c", PANDAS_CODE, data, seconds_file]
        log(f"timing, {args.reps} repetitions each")
        times = side_by_side(
            {
                "linreg": linreg,
                "arrow": lambda: timed_child(arrow_cmd, cwd, seconds_file),
                "pandas": lambda: timed_child(pandas_cmd, cwd, seconds_file),
            },
            args.reps,
            long_s=math.inf,
        )

        def peak(cmd: Sequence[str | Path], out: Path | None = None) -> Sample:
            done = run_then_remove(cmd, cwd, out, memory=True)
            return Sample(done.seconds, {"rss": done.max_rss})

        def memory_run(path: Path) -> Sample:
            out = fresh()
            return peak(memory_command(settings, path, out), out)

        baseline_cmd: list[str | Path] = [python, "-c", "import numpy, torch"]
        memory_tasks: dict[str, Task] = {"baseline": lambda: peak(baseline_cmd)}
        for n, path in files.items():
            memory_tasks[str(n)] = partial(memory_run, path)
        log(f"peak memory, {args.reps} repetitions each")
        peaks = side_by_side(memory_tasks, args.reps, warmup=False, long_s=math.inf)
    report = render(
        args, settings, started, load_before, time.perf_counter() - start, mb, times, peaks
    )
    args.out.write_text(report)
    log(f"wrote {args.out}")
    return 0


def render(
    args: argparse.Namespace,
    settings: Settings,
    started: datetime,
    load_before: str,
    seconds: float,
    mb: float,
    times: dict[str, list[Sample]],
    peaks: dict[str, list[Sample]],
) -> str:
    linreg_s = median_seconds(times["linreg"])
    arrow_s = median_seconds(times["arrow"])
    pandas_s = median_seconds(times["pandas"])
    pandas_whole = median([s.info["whole"] for s in times["pandas"]])
    read_goal, memory_goal = Goal("<=", 1.5, "<= 1.5x"), Goal("<", 300, "< 300 MB above")
    ratio = linreg_s / arrow_s
    rows = [
        (
            "`linreg train` whole run / `pyarrow.csv.read_csv` alone",
            f"{ratio:.3g}x",
            read_goal.text,
            verdict(read_goal, ratio),
        ),
        (
            "`linreg train` whole run / pandas `read_csv` + sklearn fit (in the child)",
            f"{linreg_s / pandas_s:.3g}x",
            "(information)",
            "",
        ),
        (
            "`linreg train` whole run / pandas + sklearn child, whole process",
            f"{linreg_s / pandas_whole:.3g}x",
            "(information)",
            "",
        ),
    ]
    base = median([s.info["rss"] for s in peaks["baseline"]])
    above = {}
    for n in (args.rows // 2, args.rows):
        rss = median([s.info["rss"] for s in peaks[str(n)]])
        above[n] = (rss - base) / MB
        rows.append(
            (
                f"peak RSS above `import numpy, torch`, {n:,} rows",
                f"+{above[n]:.0f} MB ({rss / MB:.0f} MB against {base / MB:.0f} MB)",
                memory_goal.text,
                verdict(memory_goal, above[n]),
            )
        )
    growth = above[args.rows] - above[args.rows // 2]
    rows.append(
        (
            f"peak RSS growth from {args.rows // 2:,} to {args.rows:,} rows",
            f"{growth:+.0f} MB",
            "(information: bounded memory is about 0)",
            "",
        )
    )

    def raw(name: str, values: list[float]) -> str:
        shown = ", ".join(f"{v:.3f}" for v in values)
        return f"| {name} | {median(values):.3f} | {shown} |"

    linreg, arrow, pandas = times["linreg"], times["arrow"], times["pandas"]
    raws = [
        raw("a. `linreg train`, whole process", [s.seconds for s in linreg]),
        raw("b. `pyarrow.csv.read_csv`, in the child", [s.seconds for s in arrow]),
        raw("b. pyarrow child, whole process", [s.info["whole"] for s in arrow]),
        raw("c. pandas `read_csv`, in the child", [s.info["inside"][0] for s in pandas]),
        raw("c. pandas `read_csv` + sklearn fit, in the child", [s.seconds for s in pandas]),
        raw("c. pandas + sklearn child, whole process", [s.info["whole"] for s in pandas]),
    ]
    for key, samples in peaks.items():
        what = "`import numpy, torch`" if key == "baseline" else f"memory run, {int(key):,} rows"
        raws.append(raw(f"{what} (wall, under the launcher)", [s.seconds for s in samples]))
    shown_python = command_text([settings.python], settings)
    commands = [
        command_text(train_command(settings, "<FILE>", "<new dir>"), settings),
        f'{shown_python} -c "$ARROW_CODE" <FILE> <seconds file>',
        f'{shown_python} -c "$PANDAS_CODE" <FILE> <seconds file>',
        command_text(memory_command(settings, "<FILE>", "<new dir>"), settings),
        command_text([settings.python, "-c", "import numpy, torch"], settings),
    ]
    invocation = " ".join([shown_python, "benchmarks/tables.py", *map(shlex.quote, sys.argv[1:])])
    lines = [
        "# linreg: reading a large CSV",
        "",
        f"`{invocation}`, started {started:%Y-%m-%d %H:%M} UTC, took {seconds / 60:.1f} min"
        + (" (**quick run**: a smoke test, not the reference figures)." if args.quick else "."),
        "",
        f"File: {args.rows:,} rows x {FEATURES} features + y, {mb:.0f} MB of CSV (float32 "
        f"values, shortest round-trip form); the memory runs also use its first "
        f"{args.rows // 2:,} rows. {args.reps} repetitions of each measurement, alternating "
        "(timings after one untimed warm-up each); medians.",
        "",
        "| measurement | figure | goal | met |",
        "|---|---|---|---|",
        *(f"| {' | '.join(cell(v) for v in row)} |" for row in rows),
        "",
        f"linreg {seconds_text(linreg_s)}, pyarrow read {seconds_text(arrow_s)}, pandas + "
        f"sklearn {seconds_text(pandas_s)} in the child ({seconds_text(pandas_whole)} whole).",
        "",
        "## Raw medians (seconds)",
        "",
        "| timing | median | repetitions |",
        "|---|---|---|",
        *raws,
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
        "The in-child timings (their seconds are written to the file named by the last argument):",
        "",
        "```python",
        "# ARROW_CODE",
        *ARROW_CODE.splitlines(),
        "# PANDAS_CODE",
        *PANDAS_CODE.splitlines(),
        "```",
        "",
        "Peak RSS: `ru_maxrss` of the command, forked and exec'd by a small Python launcher "
        "(harness.LAUNCHER), the figure `/usr/bin/time -v` reports as Maximum resident set "
        "size. The children run without LINREG_* variables, stdout and stderr not a terminal.",
        "",
        "## Machine",
        "",
        *pairs(
            [*machine_rows(), ("load average before / after", f"{load_before} / {load_average()}")]
        ),
        "",
        "## Versions",
        "",
        *pairs(
            [*version_rows(REPO), ("pyarrow", version("pyarrow")), ("pandas", version("pandas"))]
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
