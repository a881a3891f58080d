"""Data-parallel scaling: linreg on 1 process against torchrun with 2, on one .npy file.

    .venv/bin/python benchmarks/scaling.py [--rows 10000000] [--features 16] [--repeats 3]

Writes benchmarks/SCALING.md. Each configuration trains the same full-batch float32 fit for a
fixed number of epochs (--tol 0); the throughput is rows x epochs / the in-process training
seconds (metrics.json "seconds"), median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_data(path: Path, rows: int, features: int) -> None:
    """A float32 .npy written chunk by chunk (never whole in memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features + 1))
    rng = np.random.default_rng(0)
    weights = rng.normal(size=features)
    for start in range(0, rows, 1_000_000):
        stop = min(start + 1_000_000, rows)
        X = rng.random((stop - start, features))
        out[start:stop, :features] = X
        out[start:stop, features] = X @ weights + 1 + 0.1 * rng.standard_normal(stop - start)
    out.flush()
    del out


def run(command: list[str], run_dir: Path, env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    wall = time.perf_counter() - started
    seconds = json.loads((run_dir / "metrics.json").read_text())["seconds"]
    return wall, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npy"
        write_data(data, args.rows, args.features)
        train = ["train", "--data", str(data), "--epochs", str(args.epochs), "--tol", "0"]
        train += ["--no-plot", "-q", "--overwrite"]
        configs = {
            "1 process (2 threads)": ([str(BIN / "linreg"), *train], {}),
            "1 process (1 thread)": ([str(BIN / "linreg"), *train], {"OMP_NUM_THREADS": "1"}),
            "torchrun, 2 processes (1 thread each)": (
                [str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "cli", *train],
                {"OMP_NUM_THREADS": "1"},
            ),
        }
        rows = []
        for name, (command, extra) in configs.items():
            walls, seconds = [], []
            for repeat in range(args.repeats):
                run_dir = Path(tmp) / f"run-{len(rows)}-{repeat}"
                env = {**os.environ, **extra}
                wall, inside = run([*command, "--out", str(run_dir)], run_dir, env)
                walls.append(wall)
                seconds.append(inside)
            rows.append((name, statistics.median(walls), statistics.median(seconds)))
    base = rows[0][2]
    lines = [
        "# Data-parallel scaling",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}.",
        f"Data: {args.rows:.0e} x {args.features} float32 .npy; {args.epochs} full-batch "
        f"epochs; median of {args.repeats}.",
        f"Command: `{sys.executable} benchmarks/scaling.py --rows {args.rows} "
        f"--features {args.features} --epochs {args.epochs} --repeats {args.repeats}`",
        "",
        "| configuration | wall s | training s | rows x epochs / s | vs 1 process |",
        "|---|---|---|---|---|",
    ]
    for name, wall, inside in rows:
        rate = args.rows * args.epochs / inside
        lines.append(f"| {name} | {wall:.2f} | {inside:.2f} | {rate:.3g} | {base / inside:.2f}x |")
    (ROOT / "benchmarks" / "SCALING.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
