"""Data-parallel training through the real ``torchrun`` with 2 gloo processes on the CPU."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import clean_env, error_lines, expect_exit, run_concurrently, run_linreg

from regression.datafile import read_table
from regression.distributed import World
from regression.errors import DataError
from regression.tables import TableOptions, TextFile, open_text, read_text_table, shard_text

TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMEOUT_S = 240.0


def torchrun_env() -> dict[str, str]:
    """One thread per rank, and collectives that give up after a minute."""
    return clean_env({"OMP_NUM_THREADS": "1", "LINREG_DIST_TIMEOUT": "60"})


def torchrun_command(*args: str | Path, nproc: int = 2) -> list[str]:
    return [
        str(TORCHRUN),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        "-m",
        "cli",
        *map(str, args),
    ]


def torchrun(*args: str | Path, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node N -m cli ...`` on a free port, stdin closed."""
    command = torchrun_command(*args, nproc=nproc)
    env = torchrun_env()
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def metrics(run_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((run_dir / "metrics.json").read_text())
    return document


FULL = ["--samples", "3001", "--features", "3", "--weight", "1.5", "--dtype", "float64"]
FULL += ["--no-plot", "-q", "--tol", "0", "--epochs", "40"]
BATCH = ["--samples", "2000", "--features", "2", "--batch-size", "100", "--epochs", "5"]
BATCH += ["--no-plot", "-q", "--tol", "0", "--dtype", "float64"]


def write_shop_table(path: Path) -> Path:
    """A table whose second half (rank 1's share, under 2 processes) holds what the first
    does not: a level of ``region`` ('rare'), text in ``zone`` (numbers before), and the
    missing cells of ``x``. The ranks must agree on the levels and the fill value."""
    rng = np.random.default_rng(9)
    n = 1001
    region = np.where(np.arange(n) < 600, rng.choice(["north", "south"], n), "")
    late = rng.choice(["north", "south", "east", "rare"], n, p=[0.3, 0.3, 0.3, 0.1])
    region = np.where(region == "", late, region)
    zone = [str(v) for v in rng.integers(1, 4, 500)] + list(rng.choice(["1", "2", "A"], n - 500))
    x = rng.normal(size=n)
    effect = {"north": 0.0, "south": 1.0, "east": -1.0, "rare": 2.0}
    y = 1 + 2 * x + np.array([effect[r] for r in region]) + 0.1 * rng.normal(size=n)
    cells = [repr(float(v)) for v in x]
    for i in range(950, 956):
        cells[i] = ""
    lines = ["region,zone,x,y"]
    lines += [f"{region[i]},{zone[i]},{cells[i]},{float(y[i])!r}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("distributed")
    data = cwd / "data.npy"
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1001, 3))
    np.save(data, np.column_stack([X, X @ [1.0, -2.0, 0.5] + 3 + 0.1 * rng.normal(size=1001)]))
    bad = cwd / "bad.npy"
    broken = np.load(data)
    broken[900, 1] = np.nan  # in rank 1's half only
    np.save(bad, broken)
    table = cwd / "data.csv"
    rows = np.load(data).tolist()
    table.write_text("a,b,c,y\n" + "".join(",".join(map(repr, row)) + "\n" for row in rows))
    csv_args = ["--data", table, "--dtype", "float64", "--no-plot", "-q"]
    shop = write_shop_table(cwd / "shop.csv")
    shop_args = ["--data", shop, "--missing", "mean", "--dtype", "float64", "--no-plot", "-q"]
    jobs = {
        "shop1": lambda: run_linreg("train", *shop_args, "--out", cwd / "shop1", cwd=cwd),
        "shop2": lambda: torchrun("train", *shop_args, "--out", cwd / "shop2", cwd=cwd),
        "csv1": lambda: run_linreg("train", *csv_args, "--out", cwd / "csv1", cwd=cwd),
        "csv2": lambda: torchrun("train", *csv_args, "--out", cwd / "csv2", cwd=cwd),
        "single": lambda: run_linreg("train", *FULL, "--out", cwd / "single", cwd=cwd),
        "two": lambda: torchrun("train", *FULL, "--out", cwd / "two", cwd=cwd),
        "batch1": lambda: run_linreg("train", *BATCH, "--out", cwd / "batch1", cwd=cwd),
        "batch2": lambda: torchrun("train", *BATCH, "--out", cwd / "batch2", cwd=cwd),
        "batch2b": lambda: torchrun("train", *BATCH, "--out", cwd / "batch2b", cwd=cwd),
        "file1": lambda: run_linreg(
            "train", "--data", data, "--dtype", "float64", "-q", "--out", cwd / "file1", cwd=cwd
        ),
        "file2": lambda: torchrun(
            "train", "--data", data, "--dtype", "float64", "-q", "--out", cwd / "file2", cwd=cwd
        ),
    }
    results = run_concurrently(jobs)
    started = time.monotonic()
    results["bad"] = torchrun("train", "--data", bad, "-q", "--out", cwd / "bad", cwd=cwd)
    results["bad_seconds"] = time.monotonic() - started
    return {"cwd": cwd, **results}


def test_full_batch_under_torchrun_equals_one_process(runs: dict[str, Any]) -> None:
    expect_exit(runs["single"], 0)
    expect_exit(runs["two"], 0)
    one, two = metrics(runs["cwd"] / "single"), metrics(runs["cwd"] / "two")
    # float64: the same steps up to the order of the float additions (1e-9 relative)
    np.testing.assert_allclose(two["params"]["weight"], one["params"]["weight"], rtol=1e-9)
    assert two["params"]["bias"] == pytest.approx(one["params"]["bias"], rel=1e-9)
    np.testing.assert_allclose(two["ols_params"]["weight"], one["ols_params"]["weight"], rtol=1e-12)
    np.testing.assert_allclose(
        [h for h in two_history(runs, "two")], two_history(runs, "single"), rtol=1e-9
    )
    assert two["data"]["samples"] == one["data"]["samples"] == 3001
    assert two["epochs_run"] == one["epochs_run"] == 40
    assert two["train"]["mse"] == pytest.approx(one["train"]["mse"], rel=1e-9)


def two_history(runs: dict[str, Any], name: str) -> list[float]:
    lines = (runs["cwd"] / name / "history.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def test_only_rank_zero_writes_and_prints(runs: dict[str, Any]) -> None:
    result = runs["two"]
    assert result.stdout == ""  # -q: nothing from any rank
    assert "error:" not in result.stderr
    files = sorted(p.name for p in (runs["cwd"] / "two").iterdir())
    assert files == ["config.toml", "history.csv", "metrics.json", "model.safetensors"]


def test_memory_mapped_shards_give_the_single_process_result(runs: dict[str, Any]) -> None:
    expect_exit(runs["file1"], 0)
    expect_exit(runs["file2"], 0)
    one, two = metrics(runs["cwd"] / "file1"), metrics(runs["cwd"] / "file2")
    np.testing.assert_allclose(two["params"]["weight"], one["params"]["weight"], rtol=1e-9)
    np.testing.assert_allclose(two["ols_params"]["weight"], one["ols_params"]["weight"], rtol=1e-12)
    assert two["statistics"]["residual_std_err"] == pytest.approx(
        one["statistics"]["residual_std_err"], rel=1e-10
    )


def test_mini_batches_are_a_deterministic_function_of_seed_and_world(
    runs: dict[str, Any],
) -> None:
    for name in ("batch1", "batch2", "batch2b"):
        expect_exit(runs[name], 0)
    one, two = metrics(runs["cwd"] / "batch1"), metrics(runs["cwd"] / "batch2")
    again = metrics(runs["cwd"] / "batch2b")
    assert two["params"] == again["params"]  # same seed and world size: the same result
    assert two["params"] != one["params"]  # another world size: other batches
    # both fit: blocks of 100 rows per rank (200 a step) versus 100 a step
    assert two["train"]["r2"] > 0.95 and one["train"]["r2"] > 0.95


def test_a_failing_rank_ends_the_job_with_its_error_and_no_hang(runs: dict[str, Any]) -> None:
    result = runs["bad"]
    assert result.returncode != 0
    errors = error_lines(result.stderr)
    assert any(line.startswith("error: rank 1: ") and "row 901" in line for line in errors), (
        result.stderr
    )
    assert runs["bad_seconds"] < 120  # the other rank did not wait for its collective
    assert not (runs["cwd"] / "bad" / "metrics.json").exists()


def test_shards_are_contiguous_and_cover_every_row() -> None:
    for size in (1, 2, 3, 5):
        for n in (2, 7, 1000):
            ranges = [World(rank=r, size=size).shard(n) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert World(size=size).shard_sizes(n) == [b - a for a, b in ranges]


def test_csv_shards_by_byte_range_give_the_single_process_result(runs: dict[str, Any]) -> None:
    expect_exit(runs["csv1"], 0)
    expect_exit(runs["csv2"], 0)
    one, two = metrics(runs["cwd"] / "csv1"), metrics(runs["cwd"] / "csv2")
    assert two["data"]["feature_names"] == ["a", "b", "c"] and two["data"]["samples"] == 1001
    np.testing.assert_allclose(two["params"]["weight"], one["params"]["weight"], rtol=1e-9)


def test_categorical_levels_and_fills_are_agreed_across_ranks(runs: dict[str, Any]) -> None:
    """A level, a text cell and the missing cells that only rank 1 reads: torchrun's model
    has the single process's columns, levels, fill values and parameters."""
    expect_exit(runs["shop1"], 0)
    expect_exit(runs["shop2"], 0)
    one, two = metrics(runs["cwd"] / "shop1"), metrics(runs["cwd"] / "shop2")
    assert "region=rare" in one["data"]["feature_names"]
    assert "zone=A" in one["data"]["feature_names"] and "missing(x)" in one["data"]["feature_names"]
    assert two["data"]["feature_names"] == one["data"]["feature_names"]
    assert two["data"]["columns"][:2] == one["data"]["columns"][:2]  # levels, references
    fill_one, fill_two = one["data"]["columns"][2]["fill"], two["data"]["columns"][2]["fill"]
    assert fill_two == pytest.approx(fill_one, rel=1e-12)
    assert two["data"]["samples"] == one["data"]["samples"] == 1001
    np.testing.assert_allclose(two["params"]["weight"], one["params"]["weight"], rtol=1e-9)
    assert two["params"]["bias"] == pytest.approx(one["params"]["bias"], rel=1e-9)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_csv_byte_shards_partition_the_rows(
    tmp_path: Path, header: bool, trailing_newline: bool
) -> None:
    rows = np.random.default_rng(1).normal(size=(101, 3)).tolist()
    text = "\n".join(",".join(map(repr, row)) for row in rows)
    path = tmp_path / "t.csv"
    path.write_text(("a,b,c\n" if header else "") + text + ("\n" if trailing_newline else ""))
    whole = read_table(path)
    for size in (2, 3, 7, 60):
        parts = [read_table(path, shard=World(rank=r, size=size).shard) for r in range(size)]
        assert all(part.names == whole.names and part.sharded for part in parts)
        stacked = np.vstack([part.values for part in parts if part.values.size])
        np.testing.assert_array_equal(stacked, whole.values)


def test_a_csv_error_in_a_later_shard_names_the_line_in_the_file(tmp_path: Path) -> None:
    lines = ["a,b"] + [f"{i},{2 * i}" for i in range(100)]
    lines[80] = "80,oops"
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    options = TableOptions()  # b, the last column, is the target: it must be numeric

    def share(rank: int) -> TextFile:
        return shard_text(open_text(str(path), None), World(rank=rank, size=2).shard)

    with pytest.raises(DataError, match=r"line 81, column 2 \(b\): 'oops' is not a number"):
        read_text_table(share(1), options)
    first = read_text_table(share(0), options)  # rank 0's rows (its share of bytes) are fine
    np.testing.assert_array_equal(first.X[:, 0], np.arange(len(first.X)))
    np.testing.assert_array_equal(first.y, 2 * first.X[:, 0])


def test_an_interrupted_torchrun_job_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    args = ["train", "--samples", "40000", "--features", "4", "--batch-size", "500"]
    args += ["--epochs", "60", "--tol", "0", "--no-plot", "--checkpoint-every", "2"]
    expect_exit(torchrun(*args, "-q", "--out", tmp_path / "whole", cwd=tmp_path), 0)
    env = torchrun_env()
    process = subprocess.Popen(
        torchrun_command(*args, "--out", tmp_path / "cut"),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # rank 0's plain progress: 1, 2, 4, 8 ...
        if line.startswith("epoch 8/"):
            break
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode != 0
    assert "checkpoint of epoch" in stderr and "--resume" in stderr, stderr
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = torchrun("train", "--resume", tmp_path / "cut", "-q", "--no-plot", cwd=tmp_path)
    expect_exit(resumed, 0)
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == whole
    assert (tmp_path / "cut" / "history.csv").read_text() == (
        tmp_path / "whole" / "history.csv"
    ).read_text()
