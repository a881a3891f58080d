"""Whole-process measurements of the real ``linreg`` command: start-up, the demo, and the
peak memory of a mini-batch run on a large memory-mapped .npy file."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from harness import (
    MB,
    Goal,
    Row,
    Sample,
    Section,
    Settings,
    command_text,
    log,
    median,
    median_seconds,
    ratio_row,
    reps_text,
    run_process,
    seconds_text,
    shape,
    side_by_side,
    verdict,
)

TUTORIAL = Path(__file__).resolve().parent / "tutorial.py"


@contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder for the children to run in and write to, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="linreg-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class FreshDir:
    """A new, not yet existing path under ``root`` on each call (linreg refuses to write
    into a non-empty --out)."""

    def __init__(self, root: Path, stem: str) -> None:
        self.root, self.stem, self.count = root, stem, 0

    def __call__(self) -> Path:
        self.count += 1
        return self.root / f"{self.stem}{self.count}"


def startup(settings: Settings) -> Section:
    """``linreg --help`` against ``python -c "import torch"``, whole process."""
    help_cmd = [settings.linreg, "--help"]
    torch_cmd = [settings.python, "-c", "import torch"]
    reps = max(settings.reps, 11) if not settings.quick else max(settings.reps, 5)
    with scratch() as cwd:
        samples = side_by_side(
            {
                "help": lambda: Sample(run_process(help_cmd, cwd=cwd).seconds),
                "torch": lambda: Sample(run_process(torch_cmd, cwd=cwd).seconds),
            },
            reps,
        )
    linreg_s, torch_s = median_seconds(samples["help"]), median_seconds(samples["torch"])
    return Section(
        key="startup",
        title="Start-up",
        rows=[
            ratio_row(
                "`linreg --help`, whole process",
                seconds_text(linreg_s),
                f"`import torch`: {seconds_text(torch_s)}",
                linreg_s / torch_s,
                Goal("<=", 0.3, "<= 0.3x"),
                reps=reps_text(samples["help"], samples["torch"]),
            )
        ],
        commands=[command_text(help_cmd, settings), command_text(torch_cmd, settings)],
    )


def demo(settings: Settings) -> Section:
    """``linreg train --out DIR -q`` (figure included) against the headless tutorial."""
    with scratch() as cwd:
        fresh = FreshDir(cwd, "run")
        figure = cwd / "tutorial.png"

        def linreg() -> Sample:
            return Sample(
                run_process([settings.linreg, "train", "--out", fresh(), "-q"], cwd=cwd).seconds
            )

        def tutorial() -> Sample:
            return Sample(run_process([settings.python, TUTORIAL, figure], cwd=cwd).seconds)

        samples = side_by_side({"linreg": linreg, "tutorial": tutorial}, settings.reps)
    linreg_s, tutorial_s = median_seconds(samples["linreg"]), median_seconds(samples["tutorial"])
    return Section(
        key="demo",
        title="The demo",
        rows=[
            ratio_row(
                "`linreg train` demo (100 x 1, figure included), whole process",
                seconds_text(linreg_s),
                f"tutorial script: {seconds_text(tutorial_s)}",
                linreg_s / tutorial_s,
                Goal("<=", 1.0, "<= 1.0x"),
                reps=reps_text(samples["linreg"], samples["tutorial"]),
            )
        ],
        commands=[
            command_text([settings.linreg, "train", "--out", "<new dir>", "-q"], settings),
            command_text([settings.python, TUTORIAL, "<tmp>/tutorial.png"], settings),
        ],
        notes=[
            "Each linreg run writes a new run directory; both run in the same temporary folder."
        ],
    )


# --- memory ---------------------------------------------------------------------------

MEMORY_COLUMNS = 9  # 8 features and the target


def write_npy(path: Path, rows: int, *, chunk: int = 1 << 20) -> None:
    """A float32 (rows x 9) .npy of y = 2 * sum(x) + 1 + noise, written chunk by chunk
    through a memory map, never held in RAM."""
    array = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(rows, MEMORY_COLUMNS)
    )
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        x = rng.random((stop - start, MEMORY_COLUMNS - 1), dtype=np.float32)
        array[start:stop, :-1] = x
        noise = rng.standard_normal(stop - start, dtype=np.float32)
        array[start:stop, -1] = 2 * x.sum(axis=1) + 1 + 0.1 * noise
    array.flush()
    del array


def npy_text(rows: int) -> str:
    return f"{shape(rows, MEMORY_COLUMNS)} float32 .npy ({rows * MEMORY_COLUMNS * 4 / MB:.0f} MB)"


def memory_command(settings: Settings, data: Path | str, out: Path | str) -> list[str | Path]:
    return [
        settings.linreg, "train", "--data", data, "--batch-size", "65536", "--epochs", "1",
        "--no-plot", "-q", "--out", out,
    ]  # fmt: skip


def memory(settings: Settings) -> Section:
    """Peak RSS of a mini-batch run on a memory-mapped .npy, above that of importing numpy
    and torch; for a file and (full run) one twice its size."""
    sizes = [5_000_000] if settings.quick else [20_000_000, 40_000_000]
    baseline_cmd = [settings.python, "-c", "import numpy, torch"]
    section = Section(
        key="memory",
        title="Memory",
        sizes=", ".join(npy_text(n) for n in sizes),
        commands=[
            command_text(memory_command(settings, "big.npy", "<new dir>"), settings),
            command_text(baseline_cmd, settings),
            "peak RSS: ru_maxrss of the command, forked and exec'd by a small Python launcher "
            "(harness.LAUNCHER), as /usr/bin/time -v reports it (Maximum resident set size)",
        ],
    )
    with scratch() as cwd:
        files = {}
        for rows in sizes:
            files[rows] = cwd / f"big{rows}.npy"
            log(f"  writing {npy_text(rows)}")
            write_npy(files[rows], rows)
        fresh = FreshDir(cwd, "run")

        def peak(cmd: list[str | Path]) -> Sample:
            done = run_process(cmd, cwd=cwd, measure_memory=True)
            return Sample(
                done.seconds, {"rss": done.max_rss, "anon": done.peak_anon, "file": done.peak_file}
            )

        tasks = {"baseline": lambda: peak(baseline_cmd)}
        for rows, path in files.items():
            tasks[str(rows)] = lambda path=path: peak(memory_command(settings, path, fresh()))
        samples = side_by_side(tasks, settings.reps, warmup=False, long_s=settings.long_s)
    base = median([s.info["rss"] for s in samples["baseline"]])
    above: list[float] = []
    for rows in sizes:
        runs = samples[str(rows)]
        rss = median([s.info["rss"] for s in runs])
        above.append(rss - base)
        anon = median([s.info["anon"] for s in runs])
        file = median([s.info["file"] for s in runs])
        goal = Goal("<", 200, "< 200 MB above")
        section.rows.append(
            Row(
                f"peak RSS, {npy_text(rows)}, --batch-size 65536 --epochs 1",
                f"{rss / MB:.0f} MB (sampled peaks: anon {anon / MB:.0f} MB, "
                f"file {file / MB:.0f} MB; {seconds_text(median_seconds(runs))})",
                f"`import numpy, torch`: {base / MB:.0f} MB",
                f"+{(rss - base) / MB:.0f} MB ({rss / base:.2f}x)",
                goal.text,
                verdict(goal, (rss - base) / MB),
                reps_text(runs, samples["baseline"]),
            )
        )
    if len(above) == 2:
        section.notes.append(
            f"Growth from the file to the one twice its size: {(above[1] - above[0]) / MB:+.0f} MB "
            "(bounded memory means about 0)."
        )
    section.notes.append(
        "Peak RSS counts the pages of the memory-mapped file that are resident (RssFile) as "
        "well as the process's own memory (RssAnon); the anon/file peaks are sampled every "
        "10 ms from /proc/PID/status and may miss short spikes. The files are deleted afterwards."
    )
    return section
