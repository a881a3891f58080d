"""Real tables through the real ``linreg``: column choice, categorical columns, missing
values, compressed files, stdin and stdout pipelines, and the two CSV readers.

Each ``linreg train`` costs a few seconds (the torch import), so the runs of a group start
side by side once (module-scoped fixtures) and several tests assert on each. The oracles:
``np.linalg.lstsq`` on the design matrix built here by hand, and statsmodels' formula API
(treatment coding) on a data set it ships.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import (
    TrainRun,
    assert_one_error,
    clean_env,
    expect_exit,
    linreg_command,
    run_concurrently,
    run_linreg,
)

from regression.artifacts import load_model
from regression.tables import Encoding

F64 = ("--dtype", "float64", "--no-plot")
REGIONS = ("north", "south", "east", "west")


def train_job(cwd: Path, name: str, *args: str | os.PathLike[str]) -> Callable[[], TrainRun]:
    out = cwd / name

    def job() -> TrainRun:
        return TrainRun(run_linreg("train", *args, "--out", out, cwd=cwd), out)

    return job


def piped(
    args: list[str], stdin: bytes, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run linreg with ``stdin`` as its standard input."""
    return subprocess.run(
        linreg_command(*args),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        input=stdin,
        capture_output=True,
        timeout=180,
        check=False,
    )


def shop_table(n: int = 400, seed: int = 0) -> dict[str, Any]:
    """A table as analysts have it: a text column (region, the most frequent level
    'south'), a numeric-coded one (store, 3 codes), a numeric feature and an ID column;
    y = 1 + 2 x + region effect + store effect + noise."""
    rng = np.random.default_rng(seed)
    region = rng.choice(REGIONS, size=n, p=[0.2, 0.4, 0.25, 0.15])
    store = rng.choice([101, 202, 303], size=n)
    x = rng.random(n) * 10
    effect = {"north": 0.0, "south": 1.5, "east": -2.0, "west": 0.7}
    store_effect = {101: 0.0, 202: 0.25, 303: -0.5}
    y = (
        1
        + 2 * x
        + np.array([effect[r] for r in region])
        + np.array([store_effect[s] for s in store])
        + 0.1 * rng.standard_normal(n)
    )
    return {"region": region, "store": store, "x": x, "id": np.arange(n) * 7 + 3, "y": y}


def write_shop(path: Path, table: dict[str, Any], *, delimiter: str = ",") -> Path:
    names = list(table)
    lines = [delimiter.join(names)]
    for i in range(len(table["y"])):
        lines.append(delimiter.join(str(table[name][i]) for name in names))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    elif path.suffix == ".bz2":
        path.write_bytes(bz2.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def design(table: dict[str, Any], rows: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """The treatment-coded design matrix of region (reference south, the most frequent) and
    x, built by hand: the oracle's input."""
    region = table["region"] if rows is None else table["region"][rows]
    x = table["x"] if rows is None else table["x"][rows]
    levels = ["east", "north", "west"]  # sorted, the reference left out
    columns = [(region == level).astype(float) for level in levels] + [x]
    return np.column_stack(columns), [f"region={level}" for level in levels] + ["x"]


def lstsq(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    A = np.column_stack([X, np.ones(len(y))])
    return np.linalg.lstsq(A, y, rcond=None)[0]


def coefficients(run: TrainRun, key: str = "params") -> np.ndarray:
    params = run.metrics[key]
    return np.array([*params["weight"], params["bias"]])


def assert_fits(run: TrainRun, X: np.ndarray, y: np.ndarray) -> None:
    """The run's least-squares reference is lstsq's on the design built by hand (1e-9
    relative), and the trained model reached it (gap below 1e-9, coefficients within 1e-6:
    the stopping rule judges the loss, whose error is the square of theirs)."""
    oracle = lstsq(X, y)
    np.testing.assert_allclose(coefficients(run, "ols_params"), oracle, rtol=1e-9, atol=1e-9)
    assert run.metrics["optimality_gap"] < 1e-9
    np.testing.assert_allclose(coefficients(run), oracle, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("shop")
    table = shop_table()
    paths = {
        "csv": write_shop(cwd / "shop.csv", table),
        "gz": write_shop(cwd / "shop.csv.gz", table),
        "bz2": write_shop(cwd / "shop.tsv.bz2", table, delimiter="\t"),
    }
    base = ("--exclude", "id", *F64)
    jobs = {
        "csv": train_job(cwd, "csv", "--data", paths["csv"], "--exclude", "id,store", *F64),
        "gz": train_job(
            cwd, "gz", "--data", paths["gz"], "--exclude", "id", "--exclude", "store", *F64
        ),
        "bz2": train_job(cwd, "bz2", "--data", paths["bz2"], "--exclude", "id,store", *F64),
        "features": train_job(
            cwd, "features", "--data", paths["csv"], "--features", "x", "--features", "0", *F64
        ),
        "store": train_job(cwd, "store", "--data", paths["csv"], "--categorical", "store", *base),
        "store_numeric": train_job(cwd, "store_numeric", "--data", paths["csv"], *base),
        "stream": train_job(
            cwd,
            "stream",
            *("--data", paths["csv"], "--exclude", "id,store", "--batch-size", "64"),
            *("--epochs", "3", "--tol", "0", *F64),
        ),
        "id": train_job(
            cwd, "id", "--data", paths["csv"], "--categorical", "id", "--max-levels", "50"
        ),
        "unknown_column": train_job(
            cwd, "unknown_column", "--data", paths["csv"], "--features", "x,zone"
        ),
    }
    return {"cwd": cwd, "table": table, "paths": paths, "runs": run_concurrently(jobs)}


# -- 1. columns ------------------------------------------------------------------------------


def test_a_text_column_is_treatment_coded_with_the_most_frequent_level_as_reference(
    shop: dict[str, Any],
) -> None:
    run = shop["runs"]["csv"].ok()
    X, names = design(shop["table"])
    data = run.metrics["data"]
    assert data["feature_names"] == names
    region = data["columns"][0]
    assert region["kind"] == "categorical" and region["reference"] == "south"
    assert region["levels"] == ["south", "east", "north", "west"]
    assert_fits(run, X, shop["table"]["y"])
    names_in_table = [c["name"] for c in run.metrics["statistics"]["coefficients"]]
    assert names_in_table == ["intercept", *names]


@pytest.mark.parametrize("name", ["gz", "bz2"])
def test_compressed_files_train_as_the_plain_file(shop: dict[str, Any], name: str) -> None:
    plain = coefficients(shop["runs"]["csv"].ok())
    np.testing.assert_array_equal(coefficients(shop["runs"][name].ok()), plain)


def test_features_by_name_and_index_in_the_order_given(shop: dict[str, Any]) -> None:
    run = shop["runs"]["features"].ok()
    X, names = design(shop["table"])
    assert run.metrics["data"]["feature_names"] == ["x", *names[:3]]
    assert_fits(run, np.column_stack([X[:, 3], X[:, :3]]), shop["table"]["y"])


def test_an_unknown_column_lists_the_columns(shop: dict[str, Any]) -> None:
    result = shop["runs"]["unknown_column"].result
    expect_exit(result, 2)
    assert_one_error(
        result, "--features 'zone' is not a column of", "columns: region, store, x, id, y"
    )


def test_categorical_forces_a_numeric_coded_column(shop: dict[str, Any]) -> None:
    coded = shop["runs"]["store"].ok().metrics["data"]
    codes, counts = np.unique(shop["table"]["store"], return_counts=True)
    reference = codes[np.argmax(counts)]  # the most frequent code, left out
    expanded = [name for name in coded["feature_names"] if name.startswith("store=")]
    assert expanded == [f"store={code}" for code in codes if code != reference]
    numeric = shop["runs"]["store_numeric"].ok().metrics["data"]
    assert "store" in numeric["feature_names"]
    assert not any(name.startswith("store=") for name in numeric["feature_names"])


def test_too_many_levels_is_a_clear_error(shop: dict[str, Any]) -> None:
    result = shop["runs"]["id"].result
    expect_exit(result, 2)
    assert_one_error(result, "column 4 (id) has 400 distinct text values", "--max-levels 50")


def test_mini_batches_of_a_text_file_stream_from_a_staged_copy(shop: dict[str, Any]) -> None:
    """--batch-size reads the text twice (bounded memory) into a memory-mapped file: the
    result is the in-memory encoding's, trained the same way."""
    run = shop["runs"]["stream"].ok()
    assert run.metrics["data"]["feature_names"] == design(shop["table"])[1]
    assert run.metrics["epochs_run"] == 3
    assert np.isfinite(coefficients(run)).all()


# -- 2. the model file and predict ----------------------------------------------------------


def test_the_model_records_levels_and_columns_as_json(shop: dict[str, Any]) -> None:
    model = load_model(shop["runs"]["csv"].ok().out / "model.safetensors")
    assert model.encoding is not None
    encoding = Encoding.from_json(model.encoding)
    assert [c.name for c in encoding.columns] == ["region", "x"]
    assert encoding.columns[0].reference == "south"
    assert encoding.columns[0].levels == ("east", "north", "west")
    raw = (shop["runs"]["csv"].out / "model.safetensors").read_bytes()
    assert b"pickle" not in raw and b"\x80\x04" not in raw[:16]


def test_predict_encodes_a_wider_file_in_another_order(shop: dict[str, Any]) -> None:
    run = shop["runs"]["csv"].ok()
    cwd = shop["cwd"]
    table = shop["table"]
    rows = np.arange(10)
    lines = ["extra,y,x,region"] + [
        f"e{i},{float(table['y'][i])!r},{float(table['x'][i])!r},{table['region'][i]}" for i in rows
    ]
    (cwd / "wide.csv").write_text("\n".join(lines) + "\n")
    result = run_linreg("predict", run.out / "model.safetensors", "--data", "wide.csv", cwd=cwd)
    expect_exit(result, 0)
    predicted = np.array([float(v) for v in result.stdout.split()[1:]])
    X, _ = design(table, rows)
    np.testing.assert_allclose(
        predicted, X @ coefficients(run)[:-1] + coefficients(run)[-1], rtol=1e-12
    )
    assert "ignoring columns the model does not use: extra" in result.stderr


def test_an_unseen_level_names_column_value_and_line(shop: dict[str, Any]) -> None:
    run = shop["runs"]["csv"].ok()
    cwd = shop["cwd"]
    (cwd / "unseen.csv").write_text("region,x\nnorth,1\nmars,2\n")
    result = run_linreg("predict", run.out / "model.safetensors", "--data", "unseen.csv", cwd=cwd)
    expect_exit(result, 2)
    assert_one_error(
        result, "unseen.csv line 3, column 1 (region): level 'mars' was not seen in training"
    )
    zero = run_linreg(
        "predict",
        run.out / "model.safetensors",
        "--data",
        "unseen.csv",
        "--unknown-level",
        "zero",
        cwd=cwd,
    )
    expect_exit(zero, 0)
    b = coefficients(run)
    assert float(zero.stdout.split()[2]) == pytest.approx(b[3] * 2 + b[4], rel=1e-12)
    assert "warning: 1 cell(s) held levels not seen in training" in zero.stderr


def test_predict_reads_stdin_and_writes_stdout_as_a_filter(shop: dict[str, Any]) -> None:
    run = shop["runs"]["csv"].ok()
    stdin = shop["paths"]["csv"].read_bytes()
    result = piped(
        ["predict", str(run.out / "model.safetensors"), "--data", "-"], stdin, shop["cwd"]
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == "prediction" and len(lines) == 401
    direct = run_linreg(
        "predict", run.out / "model.safetensors", "--data", shop["paths"]["csv"], cwd=shop["cwd"]
    )
    assert direct.stdout == result.stdout.decode()
    gz = piped(
        ["predict", str(run.out / "model.safetensors"), "--data", "-"],
        gzip.compress(stdin),
        shop["cwd"],
    )
    assert gz.stdout == result.stdout


def test_a_closed_pipe_downstream_ends_predict_quietly(shop: dict[str, Any]) -> None:
    """``linreg predict ... | head -1``: exit 141 (128 + SIGPIPE, as a shell reports a
    process that SIGPIPE ended), nothing on stderr, no traceback."""
    run = shop["runs"]["csv"].ok()
    cwd = shop["cwd"]
    rows = 400_000
    x = np.arange(rows) % 10
    text = "region,x\n" + "".join(f"north,{v}\n" for v in x.tolist())
    (cwd / "many.csv").write_text(text)
    predict = subprocess.Popen(
        linreg_command("predict", str(run.out / "model.safetensors"), "--data", "many.csv"),
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert predict.stdout is not None and predict.stderr is not None
    assert predict.stdout.readline() == b"prediction\n"
    predict.stdout.close()  # the reader goes away, as `head -1` does
    stderr = predict.stderr.read()
    assert predict.wait(timeout=180) == 141
    assert stderr == b""


# -- 3. missing values ---------------------------------------------------------------------


MISSING_CSV = (
    "region,x,z,y\n"
    "north,1,5,3.1\n"
    "south,,6,5.2\n"
    "north,3,NA,7.1\n"
    "east,4,8,\n"
    "south,5,null,11.2\n"
    ",6,10,13.0\n"
    "east,7,NaN,15.1\n"
    "north,8,12,17.2\n"
    "south,9,13,19.0\n"
    "east,10,14,21.1\n"
    "north,11,15,23.3\n"
    "south,12,17,25.0\n"
    "east,13,16,27.2\n"
    "north,14,19,29.1\n"
    "south,15,18,31.3\n"
)


@pytest.fixture(scope="module")
def missing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("missing")
    path = cwd / "missing.csv"
    path.write_text(MISSING_CSV)
    (cwd / "minus.csv").write_text("x,y\n1,2\n-999,4\n3,6\n4,8.5\n")
    jobs = {
        "error": train_job(cwd, "error", "--data", path, *F64),
        "drop": train_job(cwd, "drop", "--data", path, "--missing", "drop", *F64),
        "mean": train_job(cwd, "mean", "--data", path, "--missing", "mean", *F64),
        "na_values": train_job(
            cwd,
            "na_values",
            "--data",
            "minus.csv",
            "--na-values",
            "-999",
            "--missing",
            "drop",
            *F64,
        ),
    }
    return {"cwd": cwd, "path": path, "runs": run_concurrently(jobs)}


def test_missing_cells_are_an_error_that_names_the_options(missing: dict[str, Any]) -> None:
    result = missing["runs"]["error"].result
    expect_exit(result, 2)
    assert_one_error(
        result, "missing.csv line 3, column 2 (x): empty cell", "--missing drop", "--missing mean"
    )


def parsed() -> list[list[str]]:
    return [line.split(",") for line in MISSING_CSV.split("\n")[1:] if line]


def number(cell: str) -> float:
    return float("nan") if cell in ("", "NA", "NaN", "null") else float(cell)


def test_drop_removes_the_rows_and_counts_them(missing: dict[str, Any]) -> None:
    run = missing["runs"]["drop"].ok()
    rows = [r for r in parsed() if not any(c in ("", "NA", "NaN", "null") for c in r)]
    assert run.metrics["data"]["dropped_rows"] == 15 - len(rows) == 6
    assert "warning: 6 row(s) with missing values were dropped" in run.result.stderr
    assert run.metrics["data"]["samples"] == len(rows)
    levels = sorted({r[0] for r in rows})
    reference = "north"  # north 4, south 3, east 2 among the kept rows
    assert levels == ["east", "north", "south"]
    X = np.array([[r[0] == "east", r[0] == "south", float(r[1]), float(r[2])] for r in rows], float)
    y = np.array([float(r[3]) for r in rows])
    assert run.metrics["data"]["columns"][0]["reference"] == reference
    assert_fits(run, X, y)


def test_mean_fills_and_adds_indicators_and_drops_a_missing_target(
    missing: dict[str, Any],
) -> None:
    run = missing["runs"]["mean"].ok()
    rows = [r for r in parsed() if r[3] != ""]  # the missing target's row is dropped
    assert run.metrics["data"]["dropped_rows"] == 1
    x = np.array([number(r[1]) for r in rows])
    z = np.array([number(r[2]) for r in rows])
    fill_x, fill_z = np.nanmean(x), np.nanmean(z)
    names = run.metrics["data"]["feature_names"]
    assert names == [
        "region=east",
        "region=south",
        "missing(region)",
        "x",
        "missing(x)",
        "z",
        "missing(z)",
    ]
    columns = {c["name"]: c for c in run.metrics["data"]["columns"]}
    assert columns["x"]["fill"] == pytest.approx(fill_x, rel=1e-15)
    assert columns["z"]["fill"] == pytest.approx(fill_z, rel=1e-15)
    X = np.column_stack(
        [
            [r[0] == "east" for r in rows],
            [r[0] == "south" for r in rows],
            [r[0] == "" for r in rows],
            np.where(np.isnan(x), fill_x, x),
            np.isnan(x),
            np.where(np.isnan(z), fill_z, z),
            np.isnan(z),
        ]
    ).astype(float)
    y = np.array([float(r[3]) for r in rows])
    assert_fits(run, X, y)
    # predict fills the same way, from the model file
    cwd = missing["cwd"]
    (cwd / "new.csv").write_text("region,x,z\nsouth,,NA\n")
    result = run_linreg("predict", run.out / "model.safetensors", "--data", "new.csv", cwd=cwd)
    expect_exit(result, 0)
    w, b = coefficients(run)[:-1], coefficients(run)[-1]
    expected = w @ [0, 1, 0, fill_x, 1, fill_z, 1] + b
    assert float(result.stdout.split()[1]) == pytest.approx(expected, rel=1e-12)


def test_na_values_replaces_the_list(missing: dict[str, Any]) -> None:
    run = missing["runs"]["na_values"].ok()
    assert run.metrics["data"]["dropped_rows"] == 1
    X = np.array([[1.0], [3.0], [4.0]])
    assert_fits(run, X, np.array([2, 6, 8.5]))


@pytest.fixture(scope="module")
def long_table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CSV of 300,000 rows (about 10 MB: several batches of pyarrow's whole-file reader,
    which are encoded on several threads, and of its streaming reader) with empty feature
    cells in its first rows and empty target cells in its middle, trained with --missing
    drop in memory and staged (--batch-size)."""
    cwd = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(7)
    n = 300_000
    region = rng.choice(REGIONS, size=n, p=[0.2, 0.4, 0.25, 0.15])  # south the reference
    x = rng.random(n) * 10
    y = 1 + 2 * x + 0.5 * (region == "east") + 0.1 * rng.standard_normal(n)
    x_cells = [repr(float(v)) for v in x]
    y_cells = [repr(float(v)) for v in y]
    for i in rng.choice(20_000, 500, replace=False):  # batches with and without drops
        x_cells[i] = ""
    for i in 150_000 + rng.choice(10_000, 300, replace=False):
        y_cells[i] = ""
    lines = ["region,x,y"] + [
        f"{r},{a},{b}" for r, a, b in zip(region.tolist(), x_cells, y_cells, strict=True)
    ]
    path = cwd / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 2 * (4 << 20)
    kept = np.array([a != "" and b != "" for a, b in zip(x_cells, y_cells, strict=True)])
    drop = ("--data", path, "--missing", "drop", *F64)
    jobs = {
        "whole": train_job(cwd, "whole", *drop),
        "staged": train_job(cwd, "staged", *drop, "--batch-size", "65536", "--epochs", "2"),
    }
    table = {"region": region, "x": x}
    return {"table": table, "y": y, "kept": kept, "runs": run_concurrently(jobs)}


@pytest.mark.parametrize("name", ["whole", "staged"])
def test_a_file_of_many_batches_is_encoded_in_file_order(
    long_table: dict[str, Any], name: str
) -> None:
    """Every batch lands on its rows, the dropped rows left out, in memory and staged: the
    least-squares reference is lstsq's on the rows kept (1e-9 relative)."""
    metrics = long_table["runs"][name].ok().metrics
    kept = long_table["kept"]
    assert metrics["data"]["samples"] == int(kept.sum())
    assert metrics["data"]["dropped_rows"] == len(kept) - int(kept.sum()) > 500
    X, names = design(long_table["table"], np.flatnonzero(kept))
    assert metrics["data"]["feature_names"] == names
    oracle = lstsq(X, long_table["y"][kept])
    found = np.array([*metrics["ols_params"]["weight"], metrics["ols_params"]["bias"]])
    np.testing.assert_allclose(found, oracle, rtol=1e-9, atol=1e-9)


# -- 4. stdin, formats, and the reader without pyarrow ----------------------------------------


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("streams")
    table = shop_table(200, seed=1)
    csv_path = write_shop(cwd / "shop.csv", table)
    tsv_path = write_shop(cwd / "shop.tsv", table, delimiter="\t")
    blocker = cwd / "no_pyarrow"
    blocker.mkdir()
    (blocker / "pyarrow").mkdir()
    (blocker / "pyarrow" / "__init__.py").write_text("raise ImportError('blocked for a test')\n")
    args = ["--exclude", "id,store", "--dtype", "float64", "--no-plot"]

    def stdin_job(name: str, data: bytes, *more: str) -> Callable[[], Any]:
        def job() -> Any:
            out = cwd / name
            return piped(["train", "--data", "-", *more, *args, "--out", str(out)], data, cwd), out

        return job

    def python_reader(name: str, path: Path, *more: str) -> Callable[[], TrainRun]:
        def job() -> TrainRun:
            env = clean_env({"PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])})
            out = cwd / name
            return TrainRun(
                run_linreg("train", "--data", path, *more, "--out", out, cwd=cwd, env=env), out
            )

        return job

    np.save(cwd / "x.npy", np.column_stack([table["x"], table["y"]]))
    text = csv_path.read_bytes()
    zst = pa.compress(text, codec="zstd", asbytes=True)
    (cwd / "shop.csv.zst").write_bytes(zst)
    xy = write_shop(cwd / "xy.csv", {"x": table["x"], "y": table["y"]})
    batches = ("--batch-size", "32", "--epochs", "5", "--dtype", "float64", "--no-plot")
    jobs = {
        "batch_csv": train_job(cwd, "batch_csv", "--data", xy, *batches),
        "batch_npy": train_job(cwd, "batch_npy", "--data", cwd / "x.npy", *batches),
        "zst": train_job(cwd, "zst", "--data", cwd / "shop.csv.zst", *args),
        "stdin_zst": stdin_job("stdin_zst", zst),
        "stdin_bz2": stdin_job("stdin_bz2", bz2.compress(text)),
        "file": train_job(cwd, "file", "--data", csv_path, *args),
        "stdin": stdin_job("stdin", csv_path.read_bytes()),
        "stdin_tsv": stdin_job("stdin_tsv", tsv_path.read_bytes(), "--format", "tsv"),
        "python": python_reader("python", csv_path, *args),
        "python_gz": python_reader("python_gz", write_shop(cwd / "shop.csv.gz", table), *args),
        "python_error": python_reader(
            "python_error",
            write_shop(cwd / "bad.csv", {"x": [1, 2, "inf"], "y": [1, 2, 3]}),
            *F64,
        ),
        "format_npy": train_job(cwd, "format_npy", "--data", cwd / "x.npy", "--format", "csv"),
    }
    return {"cwd": cwd, "runs": run_concurrently(jobs)}


def test_stdin_trains_as_the_file(streams: dict[str, Any]) -> None:
    file = coefficients(streams["runs"]["file"].ok())
    result, out = streams["runs"]["stdin"]
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["source"] == "<stdin>"
    params = metrics["params"]
    np.testing.assert_array_equal([*params["weight"], params["bias"]], file)
    result, out = streams["runs"]["stdin_tsv"]
    assert result.returncode == 0, result.stderr
    params = json.loads((out / "metrics.json").read_text())["params"]
    np.testing.assert_array_equal([*params["weight"], params["bias"]], file)


def test_mini_batches_of_a_csv_file_train_as_the_same_npy_file(streams: dict[str, Any]) -> None:
    """The staged copy of a CSV holds the numbers a .npy of them holds: the same model, bit
    for bit, and the same history."""
    csv, npy = streams["runs"]["batch_csv"].ok(), streams["runs"]["batch_npy"].ok()
    np.testing.assert_array_equal(coefficients(csv), coefficients(npy))
    assert (csv.out / "history.csv").read_text() == (npy.out / "history.csv").read_text()


def test_compressed_files_and_stdin_train_as_the_plain_file(streams: dict[str, Any]) -> None:
    """.csv.zst by name, and zstd or bzip2 on stdin (known by their magic bytes)."""
    file = coefficients(streams["runs"]["file"].ok())
    np.testing.assert_array_equal(coefficients(streams["runs"]["zst"].ok()), file)
    for name in ("stdin_zst", "stdin_bz2"):
        result, out = streams["runs"][name]
        assert result.returncode == 0, result.stderr
        params = json.loads((out / "metrics.json").read_text())["params"]
        np.testing.assert_array_equal([*params["weight"], params["bias"]], file)


def test_without_pyarrow_the_csv_module_reads_the_same_table(streams: dict[str, Any]) -> None:
    file = coefficients(streams["runs"]["file"].ok())
    np.testing.assert_array_equal(coefficients(streams["runs"]["python"].ok()), file)
    np.testing.assert_array_equal(coefficients(streams["runs"]["python_gz"].ok()), file)
    result = streams["runs"]["python_error"].result
    expect_exit(result, 2)
    assert_one_error(result, "bad.csv line 4, column 1 (x): inf is not a finite number")


def test_format_is_for_text_data(streams: dict[str, Any]) -> None:
    result = streams["runs"]["format_npy"].result
    expect_exit(result, 2)
    assert_one_error(result, "--format csv is for text data")


# -- 5. the oracle: statsmodels' formula API on a data set it ships --------------------------


@pytest.fixture(scope="module")
def grunfeld(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sm = pytest.importorskip("statsmodels.api")
    smf = pytest.importorskip("statsmodels.formula.api")
    cwd = tmp_path_factory.mktemp("grunfeld")
    frame = sm.datasets.grunfeld.load_pandas().data
    path = cwd / "grunfeld.csv"
    frame.to_csv(path, index=False)
    # every firm has 20 rows: the reference is the first in sorted order, statsmodels' too
    fit = smf.ols("invest ~ value + capital + C(firm)", data=frame).fit()
    run = TrainRun(
        run_linreg(
            "train",
            "--data",
            path,
            "--target",
            "invest",
            "--exclude",
            "year",
            "--dtype",
            "float64",
            "--no-plot",
            "--out",
            cwd / "run",
            cwd=cwd,
        ),
        cwd / "run",
    )
    return {"fit": fit, "run": run}


def test_categorical_coding_matches_statsmodels_formulas(grunfeld: dict[str, Any]) -> None:
    fit, run = grunfeld["fit"], grunfeld["run"].ok()
    rows = {c["name"]: c for c in run.metrics["statistics"]["coefficients"]}

    def ours(name: str) -> str:  # statsmodels' names: C(firm)[T.Chrysler], Intercept
        if name == "Intercept":
            return "intercept"
        if name.startswith("C(firm)[T."):
            return "firm=" + name[len("C(firm)[T.") : -1]
        return name

    assert sorted(rows) == sorted(ours(name) for name in fit.params.index)
    for name in fit.params.index:
        row = rows[ours(name)]
        assert row["estimate"] == pytest.approx(fit.params[name], rel=1e-8)
        assert row["std_err"] == pytest.approx(fit.bse[name], rel=1e-8)
        assert row["p"] == pytest.approx(fit.pvalues[name], rel=1e-8, abs=1e-300)
    firm = next(c for c in run.metrics["data"]["columns"] if c["name"] == "firm")
    assert firm["kind"] == "categorical" and firm["reference"] == "American Steel"
