"""End-to-end tests of real data through the real ``linreg``: ``train --data``, ``predict`` and
``generate``, each run in a subprocess as a shell or cron would (stdin closed, stdout and stderr
captured separately).

A ``linreg train`` costs a few seconds (mostly the torch import), so the runs are shared:
module-scoped fixtures start a group side by side once and several tests assert on each.
Data errors fail before training but after the torch import, so they run as one group too.
``predict`` and ``generate`` import no torch and are quick.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from certified import LONGLEY_B, NORRIS_B
from conftest import (
    TrainRun,
    assert_one_error,
    assert_plain,
    clean_env,
    describe,
    expect_exit,
    hidden_files,
    options,
    run_concurrently,
    run_linreg,
)

from regression.artifacts import load_model
from regression.config import TrainConfig
from regression.data import split, synthetic
from regression.datafile import load_dataset

DATA = Path(__file__).resolve().parent / "data"
NORRIS = DATA / "norris.csv"
LONGLEY = DATA / "longley.csv"

CERTIFIED_DIGITS = 9  # the StRD asks good software for at least 9 significant digits

# the synthetic data of the generate -> train tests
SYN = {
    "samples": 2000,
    "features": 3,
    "weight": [1.5, -2.0, 0.5],
    "bias": 0.3,
    "noise": 0.1,
    "seed": 7,
}


def syn_config(**changes: Any) -> TrainConfig:
    values = {**SYN, "weight": tuple(SYN["weight"]), **changes}
    return TrainConfig(**values)


def significant_digits(actual: float, certified: float) -> float:
    """The log relative error of the StRD: how many leading digits agree."""
    if actual == certified:
        return math.inf
    return -math.log10(abs(actual - certified) / abs(certified))


def all_params(params: dict[str, Any]) -> list[float]:
    return [params["bias"], *params["weight"]]


def csv_column(text: str, name: str) -> np.ndarray:
    rows = list(csv.DictReader(io.StringIO(text)))
    return np.array([float(row[name]) for row in rows])


class Run(TrainRun):
    @cached_property
    def history(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO((self.out / "history.csv").read_text())))

    @property
    def model_path(self) -> Path:
        return self.out / "model.safetensors"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The oracle: X @ w + b with the params of metrics.json, in float64."""
        params = self.metrics["params"]
        return np.asarray(X, dtype=np.float64) @ np.array(params["weight"]) + params["bias"]


def train_job(cwd: Path, name: str, *args: str | os.PathLike[str]) -> Callable[[], Run]:
    out = cwd / name

    def job() -> Run:
        return Run(run_linreg("train", *args, "--out", out, cwd=cwd), out)

    return job


def write_csv(path: Path, names: list[str] | None, table: np.ndarray, delimiter: str = ",") -> Path:
    lines = [delimiter.join(names)] if names else []
    lines += [delimiter.join(repr(float(v)) for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the data files, and the runs that train on them --------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data files written here (and by ``linreg generate``) for the training runs."""
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(11)
    paths: dict[str, Path] = {}

    # a constant column c next to a real feature a
    a = rng.random(60)
    y = 2.0 * a + 1.0 + 0.01 * rng.standard_normal(60)
    paths["const"] = write_csv(
        folder / "const.csv", ["a", "c", "y"], np.column_stack([a, np.full(60, 3.0), y])
    )

    # TSV: quoted names, the target in the middle, blank lines and no trailing newline
    X = rng.random((40, 2))
    t = 3.0 * X[:, 0] - 2.0 * X[:, 1] + 0.5 + 0.05 * rng.standard_normal(40)
    lines = ['"x one"\t"target"\t"x, two"', ""]
    lines += [
        f"{x0!r}\t{ti!r}\t{x1!r}" for (x0, x1), ti in zip(X.tolist(), t.tolist(), strict=True)
    ]
    lines.insert(20, "")
    paths["tsv"] = folder / "mid.tsv"
    paths["tsv"].write_text("\n".join(lines))

    # parquet (the 'parquet' extra is part of the test extra)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    else:
        Xp = rng.random((30, 2))
        n = rng.integers(0, 10, 30)
        yp = Xp @ [1.0, -1.0] + 0.25 * n + 2.0 + 0.05 * rng.standard_normal(30)
        paths["parquet"] = folder / "data.parquet"
        pq.write_table(
            pa.table({"p": Xp[:, 0], "q": Xp[:, 1], "count": n, "out": yp}), paths["parquet"]
        )

    # noise-free float64 data in a Fortran-ordered .npy (the target column is contiguous)
    exact = np.random.default_rng(0).random((50, 3))
    exact[:, 2] = exact[:, 0] * 2 - exact[:, 1] + 1
    paths["fortran"] = folder / "exact_fortran.npy"
    np.save(paths["fortran"], np.asfortranarray(exact))

    # linreg generate: the synthetic data of SYN in every format
    for suffix in (".npy", ".csv", ".npz", ".tsv"):
        path = folder / f"generated{suffix}"
        expect_exit(run_linreg("generate", *options(**SYN), "--out", path, cwd=folder), 0)
        paths[f"generated{suffix}"] = path
    return paths


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> dict[str, Run]:
    cwd = tmp_path_factory.mktemp("fits")
    f64 = ("--dtype", "float64", "--no-plot")
    val = ("--data", files["generated.csv"], "--val-fraction", "0.2", "--seed", "3", *f64)
    jobs = {
        "norris": train_job(cwd, "norris", "--data", NORRIS, *f64),
        "longley": train_job(
            cwd,
            "longley",
            *("--data", LONGLEY, "--target", "0", *f64),
            *("--momentum", "0.99", "--tol", "0", "--epochs", "20000"),
        ),
        "const": train_job(cwd, "const", "--data", files["const"], *f64),
        "tsv": train_job(cwd, "tsv", "--data", files["tsv"], "--target", "target", *f64),
        "val": train_job(cwd, "val", *val),
        "val_again": train_job(cwd, "val_again", *val),
        "synthetic": train_job(cwd, "synthetic", *options(**SYN), "--no-plot"),
        "fortran": train_job(cwd, "fortran", "--data", files["fortran"], *f64, "-q"),
    }
    for suffix in (".npy", ".csv", ".npz"):
        jobs[f"from{suffix}"] = train_job(
            cwd, f"from{suffix}", "--data", files[f"generated{suffix}"], "--no-plot"
        )
    if "parquet" in files:
        jobs["parquet"] = train_job(cwd, "parquet", "--data", files["parquet"], *f64)
    return run_concurrently(jobs)  # type: ignore[return-value]


# -- 1. formats, targets and names --------------------------------------------------------------


def test_a_csv_file_trains_and_reports_it(fits: dict[str, Run]) -> None:
    run = fits["norris"].ok()
    data = run.metrics["data"]
    assert data["source"] == str(NORRIS)
    assert (data["samples"], data["features"]) == (36, 1)
    assert (data["feature_names"], data["target_name"]) == (["x"], "y")
    assert run.metrics["true_params"] is None
    assert run.result.stdout.startswith(f"trained nn.Linear on {NORRIS}: 36 samples, 1 feature")
    assert_plain(run.result.stdout, "stdout")
    assert "error" not in run.result.stderr and "warning" not in run.result.stderr
    assert {p.name for p in run.out.iterdir()} == {
        "metrics.json",
        "model.safetensors",
        "history.csv",
        "config.toml",
    }
    assert not hidden_files(run.out)


def test_the_config_of_a_data_run_records_the_file(fits: dict[str, Run]) -> None:
    text = (fits["norris"].ok().out / "config.toml").read_text()
    assert f'data = "{NORRIS}"' in text


def test_target_by_index_and_names_in_metrics_and_model(fits: dict[str, Run]) -> None:
    run = fits["longley"].ok()
    names = [f"x{j}" for j in range(1, 7)]
    assert run.metrics["data"]["feature_names"] == names
    assert run.metrics["data"]["target_name"] == "y"
    model = load_model(run.model_path)
    assert (list(model.feature_names), model.target_name) == (names, "y")


def test_tsv_with_quoted_names_blank_lines_and_target_by_name(
    fits: dict[str, Run], files: dict[str, Path]
) -> None:
    run = fits["tsv"].ok()
    data = run.metrics["data"]
    assert (data["feature_names"], data["target_name"]) == (["x one", "x, two"], "target")
    assert data["samples"] == 40
    model = load_model(run.model_path)
    assert (model.feature_names, model.target_name) == (("x one", "x, two"), "target")
    # the oracle: least squares on the file's numbers
    table = np.loadtxt(files["tsv"], delimiter="\t", skiprows=1)
    design = np.column_stack([table[:, [0, 2]], np.ones(len(table))])
    coef, *_ = np.linalg.lstsq(design, table[:, 1], rcond=None)
    assert all_params(run.metrics["ols_params"]) == pytest.approx([coef[2], *coef[:2]], rel=1e-10)
    assert all_params(run.metrics["params"]) == pytest.approx([coef[2], *coef[:2]], rel=1e-6)


def test_parquet_columns_by_name(fits: dict[str, Run], files: dict[str, Path]) -> None:
    if "parquet" not in fits:
        pytest.skip("pyarrow is not installed")
    run = fits["parquet"].ok()
    data = run.metrics["data"]
    assert (data["feature_names"], data["target_name"]) == (["p", "q", "count"], "out")
    import pyarrow.parquet as pq

    columns = pq.read_table(files["parquet"]).to_pydict()
    X = np.column_stack([columns["p"], columns["q"], columns["count"]]).astype(float)
    y = np.asarray(columns["out"])
    coef, *_ = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)
    assert all_params(run.metrics["ols_params"]) == pytest.approx([coef[3], *coef[:3]], rel=1e-10)
    # the integer column makes the problem less well conditioned: a gap near 1e-10 leaves
    # the parameters about 1e-6 from the optimum
    assert run.metrics["optimality_gap"] < 1e-9
    assert all_params(run.metrics["params"]) == pytest.approx([coef[3], *coef[:3]], rel=1e-5)


def test_headerless_arrays_get_x1_to_xd_and_y(fits: dict[str, Run]) -> None:
    for name in ("from.npy", "from.npz"):
        run = fits[name].ok()
        assert run.metrics["data"]["feature_names"] == ["x1", "x2", "x3"], name
        assert run.metrics["data"]["target_name"] == "y", name
        model = load_model(run.model_path)
        assert (model.feature_names, model.target_name) == (("x1", "x2", "x3"), "y")


# -- 2. a constant feature ----------------------------------------------------------------------


def test_a_constant_feature_warns_and_the_intercept_carries_it(
    fits: dict[str, Run], files: dict[str, Path]
) -> None:
    run = fits["const"].ok()
    warning = (
        "warning: feature 'c' is constant in the training data: its weight is 0 and the "
        "intercept carries its value"
    )
    assert warning in run.result.stderr.splitlines()
    assert warning not in run.result.stdout
    assert run.metrics["warnings"] == [warning.removeprefix("warning: ")]
    params = run.metrics["params"]
    assert params["weight"][1] == 0.0
    # the oracle: least squares on a alone, which the intercept of (a, c) must equal
    table = np.loadtxt(files["const"], delimiter=",", skiprows=1)
    coef, *_ = np.linalg.lstsq(np.column_stack([table[:, 0], np.ones(60)]), table[:, 2], rcond=None)
    assert [params["bias"], params["weight"][0]] == pytest.approx([coef[1], coef[0]], rel=1e-9)
    assert run.metrics["optimality_gap"] < 1e-9


# -- 3. the hold-out ----------------------------------------------------------------------------


def test_val_fraction_holds_out_a_seeded_share(
    fits: dict[str, Run], files: dict[str, Path]
) -> None:
    run = fits["val"].ok()
    data = run.metrics["data"]
    assert (data["samples"], data["train_samples"], data["val_samples"]) == (2000, 1600, 400)
    assert data["train_samples"] + data["val_samples"] == data["samples"]
    # the oracle: the library's split of the same file with the same seed, scored with numpy
    _, held = split(load_dataset(files["generated.csv"]), fraction=0.2, seed=3)
    assert held is not None
    residual = held.y - run.predict(held.X)
    val = run.metrics["val"]
    assert val["mse"] == pytest.approx(float(np.mean(residual**2)), rel=1e-12)
    assert val["mae"] == pytest.approx(float(np.mean(np.abs(residual))), rel=1e-12)
    assert val["rmse"] == pytest.approx(math.sqrt(val["mse"]), rel=1e-12)
    ss_tot = float(np.sum((held.y - held.y.mean()) ** 2))
    assert val["r2"] == pytest.approx(1 - float(np.sum(residual**2)) / ss_tot, rel=1e-12)


def test_val_loss_is_a_column_of_history_csv(fits: dict[str, Run]) -> None:
    run = fits["val"].ok()
    header = (run.out / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_loss"
    assert len(run.history) == run.metrics["epochs_run"]
    assert all(math.isfinite(float(row["val_loss"])) for row in run.history)
    # the last val_loss is the final model on the hold-out (float64 training, data units)
    assert float(run.history[-1]["val_loss"]) == pytest.approx(run.metrics["val"]["mse"], rel=1e-9)
    assert "val_loss" not in (fits["norris"].out / "history.csv").read_text()
    assert fits["norris"].metrics["val"] is None


def test_same_seed_gives_the_same_split_and_run(fits: dict[str, Run]) -> None:
    first, again = fits["val"].ok(), fits["val_again"].ok()
    for key in ("data", "params", "train", "val", "epochs_run"):
        assert first.metrics[key] == again.metrics[key], key
    assert (first.out / "history.csv").read_bytes() == (again.out / "history.csv").read_bytes()


# -- 6. certified accuracy (NIST StRD) ----------------------------------------------------------


def test_norris_reaches_the_optimum_with_certified_least_squares(fits: dict[str, Run]) -> None:
    run = fits["norris"].ok()
    assert run.metrics["dtype"] == "float64"
    assert run.metrics["optimality_gap"] < 1e-6
    ols = all_params(run.metrics["ols_params"])
    for value, certified in zip(ols, NORRIS_B, strict=True):
        assert significant_digits(value, certified) >= CERTIFIED_DIGITS, (value, certified)
    # the trained parameters themselves, at that gap, to 6 digits
    assert all_params(run.metrics["params"]) == pytest.approx(NORRIS_B, rel=1e-6)


def test_longley_certified_least_squares_and_a_tiny_gap(fits: dict[str, Run]) -> None:
    run = fits["longley"].ok()
    assert run.metrics["epochs_run"] == 20000
    ols = all_params(run.metrics["ols_params"])
    for value, certified in zip(ols, LONGLEY_B, strict=True):
        assert significant_digits(value, certified) >= CERTIFIED_DIGITS, (value, certified)
    assert run.metrics["optimality_gap"] < 1e-9


# -- 7. generate -> train -----------------------------------------------------------------------


def test_generate_then_train_recovers_the_true_weights(fits: dict[str, Run]) -> None:
    """Tolerance: 6 standard errors of the least-squares estimate (noise 0.1, 2000 rows: about
    0.008 for a weight), plus the tiny distance of the trained params from least squares."""
    run = fits["from.npy"].ok()
    truth = [SYN["bias"], *SYN["weight"]]
    std_errs = [c["std_err"] for c in run.metrics["statistics"]["coefficients"]]
    for value, true, std_err in zip(
        all_params(run.metrics["params"]), truth, std_errs, strict=True
    ):
        assert abs(value - true) <= 6 * std_err, (value, true, std_err)
    assert max(std_errs) < 0.02


def test_generated_files_train_bit_for_bit_like_synthetic_data(fits: dict[str, Run]) -> None:
    synthetic_run = fits["synthetic"].ok()
    assert synthetic_run.metrics["dtype"] == "float32"
    for name in ("from.npy", "from.csv", "from.npz"):
        run = fits[name].ok()
        assert run.metrics["dtype"] == "float32"
        assert run.metrics["params"] == synthetic_run.metrics["params"], name
        assert run.metrics["epochs_run"] == synthetic_run.metrics["epochs_run"], name
        assert run.history == synthetic_run.history, name
        assert run.metrics["data"]["sha256"] == synthetic_run.metrics["data"]["sha256"], name
    assert synthetic_run.metrics["true_params"] == {"weight": SYN["weight"], "bias": SYN["bias"]}


# -- noise-free data in a Fortran-ordered .npy --------------------------------------------------


def test_exact_data_from_a_fortran_ordered_npy_is_fitted_exactly(fits: dict[str, Run]) -> None:
    run = fits["fortran"].ok()
    assert run.result.stdout == ""
    assert all_params(run.metrics["params"]) == pytest.approx([1.0, 2.0, -1.0], rel=1e-12)


def test_quiet_prints_nothing_for_a_fortran_ordered_npy(fits: dict[str, Run]) -> None:
    run = fits["fortran"].ok()
    assert run.result.stderr == ""


def test_the_optimality_gap_of_an_exact_fit_is_null_or_positive(fits: dict[str, Run]) -> None:
    """The learned params fit these rows exactly (mse 0) and the least-squares mse is at
    rounding level: the ratio is meaningless, so it must not be reported as -1."""
    gap = fits["fortran"].ok().metrics["optimality_gap"]
    assert gap is None or gap >= 0


def test_the_optimality_gap_is_never_negative_beyond_rounding(fits: dict[str, Run]) -> None:
    """README: both mse values are evaluated in float64 the same way, so the gap is never
    negative beyond rounding (seen here: about -4e-15 at worst)."""
    gaps = {name: run.ok().metrics["optimality_gap"] for name, run in fits.items()}
    assert all(gap is None or gap >= -1e-12 for gap in gaps.values()), gaps


# -- 2. data errors: exit 2, one plain error line naming the file --------------------------------


ERROR_FILES: dict[str, tuple[str, str | bytes | np.ndarray | None]] = {
    # name -> (file name, content; None = do not create)
    "missing": ("missing.csv", None),
    "directory": ("folder.csv", "<dir>"),
    "not_text": ("binary.csv", b"a,b\n\xff\xfe\x00\x01\n"),
    "empty": ("empty.csv", ""),
    "header_only": ("header.csv", "a,b\n"),
    "text_cell": ("text.csv", "a,b\n1,2\n\n3,abc\n"),
    "nan_cell": ("nan.csv", "a,b\n1,2\nNaN,4\n"),
    "inf_array": ("inf.npy", np.array([[1.0, 2.0], [3.0, np.inf], [5.0, 6.0]])),
    "ragged": ("ragged.csv", "a,b\n1,2\n3,4,5\n"),
    "one_row": ("one.csv", "a,b\n1,2\n"),
    "rank_3": ("cube.npy", np.zeros((2, 2, 2))),
    "one_column": ("single.csv", "a\n1\n2\n"),
    "unknown_target": ("ab.csv", "a,b\n1,2\n3,4\n"),
    "target_range": ("ab.csv", "a,b\n1,2\n3,4\n"),
    "val_too_big": ("three.csv", "a,b\n1,2\n3,4\n5,7\n"),
}
EXTRA_ARGS = {
    "unknown_target": ["--target", "zz"],
    "target_range": ["--target", "2"],
    "val_too_big": ["--val-fraction", "0.5"],
}


def expected_error(name: str, path: Path) -> list[str]:
    """What the one error line must say: the file, and where and what."""
    return {
        "missing": [f"{path}: no such file"],
        "directory": [f"{path}: is a directory"],
        "not_text": [f"{path}: not a text file"],
        "empty": [f"{path}: the file is empty"],
        "header_only": [f"{path}: has a header but no data rows"],
        "text_cell": [f"{path} line 4, column 2 (b): 'abc' is not a number"],
        "nan_cell": [f"{path} line 3, column 1 (a): missing value 'NaN'; use --missing drop"],
        "inf_array": [f"{path}: row 2, column 2 is inf; NaN and inf cannot be fitted"],
        "ragged": [f"{path} line 3: 3 fields, expected 2 (ragged rows)"],
        "one_row": [f"{path}: has 1 data row(s); at least 2 are needed"],
        "rank_3": [f"{path}: the array has 3 dimension(s), shape (2, 2, 2); a 2-D array"],
        "one_column": [f"{path}: only one column (a); no feature columns are left"],
        "unknown_target": [f"--target 'zz' is not a column of {path}; columns: a, b"],
        "target_range": [f"--target 2 is out of range: {path} has 2 columns (0 to 1)"],
        "val_too_big": ["--val-fraction 0.5 leaves 1 of 3 rows for training; at least 2"],
    }[name]


PARQUET_BLOCKED = (
    "import sys; sys.modules['pyarrow'] = None\nfrom cli.app import main\nmain(sys.argv[1:])\n"
)


@pytest.fixture(scope="module")
def data_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("errors")
    paths: dict[str, Path] = {}
    for name, (file_name, content) in ERROR_FILES.items():
        path = cwd / file_name
        paths[name] = path
        if isinstance(content, np.ndarray):
            np.save(path, content)
        elif content == "<dir>":
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
    parquet = cwd / "data.parquet"
    parquet.write_bytes(b"PAR1")

    def job(name: str) -> Callable[[], subprocess.CompletedProcess[str]]:
        args = ["--data", str(paths[name]), *EXTRA_ARGS.get(name, []), "--no-plot"]
        return lambda: run_linreg("train", *args, "--out", cwd / f"out_{name}", cwd=cwd)

    def no_pyarrow() -> subprocess.CompletedProcess[str]:
        args = ["train", "--data", str(parquet), "--out", str(cwd / "out_parquet")]
        return subprocess.run(
            [sys.executable, "-c", PARQUET_BLOCKED, *args],
            cwd=cwd,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    jobs: dict[str, Callable[[], object]] = {name: job(name) for name in ERROR_FILES}
    jobs["parquet_extra"] = no_pyarrow
    results = run_concurrently(jobs)
    return {"cwd": cwd, "paths": paths, "parquet": parquet, "results": results}


@pytest.mark.parametrize("name", list(ERROR_FILES))
def test_a_bad_data_file_exits_2_with_one_error_line(
    data_errors: dict[str, Any], name: str
) -> None:
    result = data_errors["results"][name]
    path = data_errors["paths"][name]
    expect_exit(result, 2)
    assert result.stdout == "", describe(result)
    assert_one_error(result, *expected_error(name, path))
    # nothing was written: the run directory made for the run is gone again
    assert not (data_errors["cwd"] / f"out_{name}").exists()


def test_parquet_without_pyarrow_names_the_extra(data_errors: dict[str, Any]) -> None:
    result = data_errors["results"]["parquet_extra"]
    expect_exit(result, 2)
    assert result.stdout == ""
    assert_one_error(
        result,
        str(data_errors["parquet"]),
        "needs the optional extra 'parquet'",
        "pip install 'linreg-torch-cli[parquet]'",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--samples", "10"], "--samples describes synthetic data and cannot be used with --data"),
        (["--noise", "0"], "--noise describes synthetic data and cannot be used with --data"),
    ],
)
def test_synthetic_options_with_data_are_refused(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    result = run_linreg("train", "--data", NORRIS, *args, "--out", tmp_path / "out", cwd=tmp_path)
    expect_exit(result, 2)
    assert result.stdout == ""
    assert_one_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_target_without_data_is_refused(tmp_path: Path) -> None:
    result = run_linreg("train", "--target", "y", "--out", tmp_path / "out", cwd=tmp_path)
    expect_exit(result, 2)
    assert_one_error(result, "--target needs --data")


# -- 4. linreg predict --------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """An object whose unpickling creates the file ``marker``: proof of code execution."""

    marker: Path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def payload_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": [1.0], "bias": Payload(marker)})


@pytest.fixture(scope="module")
def predictions(
    tmp_path_factory: pytest.TempPathFactory, fits: dict[str, Run], files: dict[str, Path]
) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("predict")
    norris = fits["norris"].ok().model_path
    const = fits["const"].ok().model_path
    generated = fits["from.npy"].ok().model_path

    # const.csv's columns reordered, with a column the model does not use
    table = np.loadtxt(files["const"], delimiter=",", skiprows=1)
    shuffled = write_csv(
        cwd / "shuffled.csv",
        ["y", "extra", "c", "a"],
        np.column_stack([table[:, 2], np.full(len(table), 7.0), table[:, 1], table[:, 0]]),
    )
    wrong_names = write_csv(cwd / "wrong.csv", ["a", "b", "y"], table)
    labelled = write_csv(cwd / "labelled.csv", ["a", "c", "label"], table)
    generated_X = np.load(files["generated.npy"])[:, :3]
    headerless = write_csv(cwd / "headerless.csv", None, generated_X[:25])
    too_wide = write_csv(cwd / "wide.csv", None, np.ones((3, 5)))

    # model files that must be refused
    marker = cwd / "payload-ran"
    refused = {
        "pickle": cwd / "model.pkl",
        "torch_save": cwd / "model.pt",
        "not_a_model": cwd / "data-as-model.safetensors",
        "truncated": cwd / "truncated.safetensors",
        "tampered": cwd / "tampered.safetensors",
        "missing": cwd / "missing.safetensors",
    }
    refused["pickle"].write_bytes(payload_pickle(marker))
    import torch

    torch.save(
        {"weight": torch.ones(1, 1), "bias": torch.zeros(1), "x": Payload(marker)},
        refused["torch_save"],
    )
    refused["not_a_model"].write_bytes(NORRIS.read_bytes())
    raw = norris.read_bytes()
    refused["truncated"].write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[-1] ^= 0x01
    refused["tampered"].write_bytes(bytes(flipped))
    names_swapped = cwd / "names-swapped.safetensors"
    swapped = const.read_bytes().replace(b'[\\"a\\", \\"c\\"]', b'[\\"c\\", \\"a\\"]')
    assert swapped != const.read_bytes()
    names_swapped.write_bytes(swapped)

    def predict(*args: str | os.PathLike[str]) -> Callable[[], subprocess.CompletedProcess[str]]:
        return lambda: run_linreg("predict", *args, cwd=cwd)

    jobs: dict[str, Callable[[], object]] = {
        "stdout": predict(norris, "--data", NORRIS),
        "out_csv": predict(norris, "--data", NORRIS, "--out", cwd / "p.csv"),
        "out_npy": predict(norris, "--data", NORRIS, "--out", cwd / "p.npy"),
        "json": predict(norris, "--data", NORRIS, "--json"),
        "json_out": predict(norris, "--data", NORRIS, "--json", "--out", cwd / "j.csv"),
        "bad_out": predict(norris, "--data", NORRIS, "--out", cwd / "p.txt"),
        "shuffled": predict(const, "--data", shuffled),
        "wrong_names": predict(const, "--data", wrong_names),
        "labelled": predict(const, "--data", labelled),
        "labelled_target": predict(const, "--data", labelled, "--target", "label"),
        "headerless": predict(generated, "--data", headerless),
        "headerless_npy": predict(generated, "--data", files["generated.npy"]),
        "by_name": predict(generated, "--data", files["generated.tsv"]),
        "too_wide": predict(generated, "--data", too_wide),
        "names_swapped": predict(names_swapped, "--data", files["const"]),
        **{f"refused_{k}": predict(path, "--data", NORRIS) for k, path in refused.items()},
    }
    results = run_concurrently(jobs)
    return {
        "cwd": cwd,
        "marker": marker,
        "refused": refused,
        "generated_X": generated_X,
        "table": table,
        **results,
    }


def test_predictions_on_stdout_metrics_on_stderr(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    result = expect_exit(predictions["stdout"], 0)
    assert result.stdout.splitlines()[0] == "prediction"
    norris = np.loadtxt(NORRIS, delimiter=",", skiprows=1)
    predicted = csv_column(result.stdout, "prediction")
    oracle = fits["norris"].predict(norris[:, :1])
    np.testing.assert_allclose(predicted, oracle, rtol=1e-13, atol=1e-12)
    # metrics go to stderr, keeping the CSV clean; they are those of train on the same rows
    train = fits["norris"].metrics["train"]
    assert result.stderr.splitlines() == [
        f"mse {train['mse']:.6g}  rmse {train['rmse']:.6g}  mae {train['mae']:.6g}  "
        f"r2 {train['r2']:.6g}"
    ]
    assert_plain(result.stdout + result.stderr)


def test_predictions_to_a_csv_or_npy_file(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    cwd = predictions["cwd"]
    oracle = fits["norris"].predict(np.loadtxt(NORRIS, delimiter=",", skiprows=1)[:, :1])
    for name, path in (("out_csv", cwd / "p.csv"), ("out_npy", cwd / "p.npy")):
        result = expect_exit(predictions[name], 0)
        assert result.stdout.startswith("mse "), name  # with --out, the metrics go to stdout
        assert result.stderr == "", name
        values = (
            np.load(path) if path.suffix == ".npy" else csv_column(path.read_text(), "prediction")
        )
        np.testing.assert_allclose(values, oracle, rtol=1e-13, atol=1e-12)
    assert np.load(cwd / "p.npy").dtype == np.float64
    assert not hidden_files(cwd)


def test_predict_json_holds_predictions_and_metrics(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    result = expect_exit(predictions["json"], 0)
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["samples"] == 36
    assert document["out"] is None
    oracle = fits["norris"].predict(np.loadtxt(NORRIS, delimiter=",", skiprows=1)[:, :1])
    np.testing.assert_allclose(document["predictions"], oracle, rtol=1e-13, atol=1e-12)
    assert document["metrics"] == pytest.approx(fits["norris"].metrics["train"], rel=1e-12)
    with_out = json.loads(expect_exit(predictions["json_out"], 0).stdout)
    assert "predictions" not in with_out
    assert with_out["out"] == str(predictions["cwd"] / "j.csv")
    assert with_out["metrics"] == document["metrics"]


def test_predict_out_must_be_csv_or_npy(predictions: dict[str, Any]) -> None:
    result = expect_exit(predictions["bad_out"], 2)
    assert_one_error(result, "--out must end in .csv or .npy", "p.txt")
    assert not (predictions["cwd"] / "p.txt").exists()


def test_columns_by_name_in_any_order_extra_ones_ignored_with_a_warning(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    result = expect_exit(predictions["shuffled"], 0)
    table = predictions["table"]
    oracle = fits["const"].predict(table[:, :2])
    np.testing.assert_allclose(csv_column(result.stdout, "prediction"), oracle, rtol=1e-13)
    lines = result.stderr.splitlines()
    assert lines[0] == "warning: ignoring columns the model does not use: extra"
    assert lines[1].startswith("mse ") and len(lines) == 2  # the target y was found by name


def test_a_column_mismatch_names_what_was_expected_and_found(predictions: dict[str, Any]) -> None:
    result = expect_exit(predictions["wrong_names"], 2)
    assert result.stdout == ""
    assert_one_error(
        result,
        "wrong.csv does not match the model",
        "expected feature columns a, c",
        "found a, b, y",
        "missing c",
    )
    result = expect_exit(predictions["too_wide"], 2)
    assert_one_error(
        result,
        "wide.csv: 5 columns",
        "expects 3 feature columns (x1, x2, x3), or 4 with the target",
    )


def test_target_option_picks_the_column_for_metrics(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    without = expect_exit(predictions["labelled"], 0)
    assert without.stderr == "warning: ignoring columns the model does not use: label\n"
    result = expect_exit(predictions["labelled_target"], 0)
    table = predictions["table"]
    residual = table[:, 2] - fits["const"].predict(table[:, :2])
    mse = float(np.mean(residual**2))
    assert result.stderr.startswith(f"mse {mse:.6g}  rmse {math.sqrt(mse):.6g}  ")
    assert result.stdout == without.stdout


def test_headerless_files_are_matched_by_position(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    run = fits["from.npy"]
    X = predictions["generated_X"]
    result = expect_exit(predictions["headerless"], 0)
    assert result.stderr == ""  # features only: no target, no metrics
    np.testing.assert_allclose(
        csv_column(result.stdout, "prediction"), run.predict(X[:25]), rtol=1e-12
    )
    result = expect_exit(predictions["headerless_npy"], 0)
    assert result.stderr.startswith("mse ")  # D + 1 columns: the last is the target
    np.testing.assert_allclose(csv_column(result.stdout, "prediction"), run.predict(X), rtol=1e-12)
    # the generated TSV has a header x1, x2, x3, y: matched by name, same predictions
    by_name = expect_exit(predictions["by_name"], 0)
    assert by_name.stdout == result.stdout
    assert by_name.stderr == result.stderr


def test_train_then_predict_metrics_agree(
    predictions: dict[str, Any], fits: dict[str, Run]
) -> None:
    stderr = expect_exit(predictions["headerless_npy"], 0).stderr
    train = fits["from.npy"].metrics["train"]
    assert stderr.strip() == (
        f"mse {train['mse']:.6g}  rmse {train['rmse']:.6g}  mae {train['mae']:.6g}  "
        f"r2 {train['r2']:.6g}"
    )


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("pickle", "is not a linreg model file"),
        ("torch_save", "is not a linreg model file"),
        ("not_a_model", "is not a linreg model file"),
        ("truncated", "is not a linreg model file"),
        ("tampered", "damaged or modified model file (checksum mismatch)"),
        ("missing", "cannot read model"),
    ],
)
def test_refused_model_files_exit_2_and_run_no_code(
    predictions: dict[str, Any], name: str, needle: str
) -> None:
    result = expect_exit(predictions[f"refused_{name}"], 2)
    assert result.stdout == ""
    assert_one_error(result, predictions["refused"][name].name, needle)
    assert not predictions["marker"].exists(), "loading a model file ran its pickle payload"


def test_the_payload_is_live(predictions: dict[str, Any], tmp_path: Path) -> None:
    """The refusal tests mean something: unpickled on purpose, the pickle and the torch.save
    file do run their payload (create the marker)."""
    import torch

    probe = tmp_path / "probe"
    pickle.loads(payload_pickle(probe))
    assert probe.exists()
    marker = predictions["marker"]
    assert not marker.exists()
    try:
        torch.load(predictions["refused"]["torch_save"], weights_only=False)
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


def test_a_model_with_tampered_metadata_is_refused(predictions: dict[str, Any]) -> None:
    """Feature names a, c swapped to c, a in the header: the numbers are intact, but the file
    would match the columns the wrong way round."""
    result = expect_exit(predictions["names_swapped"], 2)
    assert result.stdout == ""
    assert_one_error(
        result, "names-swapped.safetensors", "damaged or modified model file (checksum mismatch)"
    )


# -- 5. linreg generate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> dict[str, Any]:
    """A second round of generate, at least 2 s after the first (so that a time stamp in a
    file, such as a zip entry's, would show as different bytes)."""
    cwd = tmp_path_factory.mktemp("generate")
    first = max(path.stat().st_mtime for name, path in files.items() if "generated" in name)
    time.sleep(max(0.0, first + 2.1 - time.time()))
    results = {}
    for suffix in (".npy", ".csv", ".npz", ".tsv"):
        path = cwd / f"again{suffix}"
        results[suffix] = run_linreg("generate", *options(**SYN), "--out", path, cwd=cwd)
    results["float64"] = run_linreg(
        "generate", *options(**SYN), "--dtype", "float64", "--out", cwd / "f64.csv", cwd=cwd
    )
    results["bad_suffix"] = run_linreg("generate", "--out", cwd / "data.parquet", cwd=cwd)
    results["quiet"] = run_linreg("generate", "-q", "--out", cwd / "quiet.npy", cwd=cwd)
    return {"cwd": cwd, **results}


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".npz", ".tsv"])
def test_generate_writes_the_data_train_generates(
    files: dict[str, Path], generated: dict[str, Any], suffix: str
) -> None:
    result = expect_exit(generated[suffix], 0)
    path = generated["cwd"] / f"again{suffix}"
    assert result.stdout == f"wrote 2000 rows of x1, x2, x3, y (float32) to {path}\n"
    assert result.stderr == ""
    data = synthetic(syn_config())
    if suffix == ".npy":
        array = np.load(path)
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, np.column_stack([data.X, data.y]))
    elif suffix == ".npz":
        with np.load(path) as archive:
            assert sorted(archive.keys()) == ["X", "y"]
            np.testing.assert_array_equal(archive["X"], data.X)
            np.testing.assert_array_equal(archive["y"], data.y)
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        text = path.read_text()
        assert text.splitlines()[0] == delimiter.join(["x1", "x2", "x3", "y"])
        table = np.loadtxt(io.StringIO(text), delimiter=delimiter, skiprows=1)
        # the text holds each float32 value exactly
        np.testing.assert_array_equal(table.astype(np.float32), np.column_stack([data.X, data.y]))
        np.testing.assert_array_equal(table, np.column_stack([data.X, data.y]).astype(np.float64))
    # run after run, the same bytes (the first run was made for the training fixtures)
    assert path.read_bytes() == files[f"generated{suffix}"].read_bytes()


def test_generate_float64(generated: dict[str, Any]) -> None:
    expect_exit(generated["float64"], 0)
    table = np.loadtxt(generated["cwd"] / "f64.csv", delimiter=",", skiprows=1)
    data = synthetic(syn_config(dtype="float64"))
    np.testing.assert_array_equal(table, np.column_stack([data.X, data.y]))


def test_generate_defaults_and_quiet(generated: dict[str, Any]) -> None:
    result = expect_exit(generated["quiet"], 0)
    assert (result.stdout, result.stderr) == ("", "")
    data = synthetic(TrainConfig())
    array = np.load(generated["cwd"] / "quiet.npy")
    assert array.shape == (100, 2)
    np.testing.assert_array_equal(array, np.column_stack([data.X, data.y]))


def test_generate_refuses_other_formats(generated: dict[str, Any]) -> None:
    result = expect_exit(generated["bad_suffix"], 2)
    assert result.stdout == ""
    assert_one_error(result, "--out must end in .csv, .tsv, .npy, .npz", "data.parquet")
    assert not (generated["cwd"] / "data.parquet").exists()


# -- predict and generate without torch ----------------------------------------------------------

IMPORTS = """
import sys
from cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "matplotlib"}))
"""


def test_predict_and_generate_import_no_torch(fits: dict[str, Run], tmp_path: Path) -> None:
    """They read and write data and models; torch would add its 1.5 s import to each call."""
    model = fits["norris"].model_path
    for args in (
        ["predict", str(model), "--data", str(NORRIS), "--intervals", "--out", "p.csv"],
        ["generate", "--samples", "100", "--out", "g.csv"],
    ):
        result = subprocess.run(
            [sys.executable, "-c", IMPORTS, *args],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.strip().splitlines()[-1] == "[]", (args, result.stdout)
    assert (tmp_path / "p.csv").stat().st_size and (tmp_path / "g.csv").stat().st_size
