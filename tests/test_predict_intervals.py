"""End to end through the real ``linreg``: ``predict --intervals`` (the least-squares
confidence and prediction intervals of each prediction, checked against statsmodels), the
interval data in the model file, and the statistics that ``train --summary`` prints."""

from __future__ import annotations

import csv
import io
import itertools
import json
import subprocess
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from conftest import (
    TrainRun,
    assert_one_error,
    assert_plain,
    expect_exit,
    run_concurrently,
    run_linreg,
)
from scipy import stats as sps
from sklearn.datasets import load_diabetes

from regression.artifacts import load_model, model_bytes, read_safetensors, safetensors_bytes
from regression.errors import ConfigError, ModelFileError
from regression.predict import predict_file

DATA = Path(__file__).parent / "data"
NORRIS = DATA / "norris.csv"
LONGLEY = DATA / "longley.csv"
RTOL = 1e-8
COLUMNS = ["prediction", "mean_lower", "mean_upper", "lower", "upper"]


class Run(TrainRun):
    @property
    def model(self) -> Path:
        return self.out / "model.safetensors"


def read_columns(text: str) -> dict[str, np.ndarray]:
    rows = list(csv.reader(io.StringIO(text)))
    return {name: np.array([float(row[j]) for row in rows[1:]]) for j, name in enumerate(rows[0])}


def csv_table(path: Path, names: list[str], X: np.ndarray, y: np.ndarray) -> Path:
    lines = [",".join(names)] + [
        ",".join(repr(float(v)) for v in [*x, t]) for x, t in zip(X, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("intervals")


@pytest.fixture(scope="module")
def files(cwd: Path) -> dict[str, Path]:
    bunch = load_diabetes(scaled=False)
    return {
        "diabetes": csv_table(
            cwd / "diabetes.csv", [*bunch.feature_names, "progression"], bunch.data, bunch.target
        ),
        "two_rows": csv_table(cwd / "two.csv", ["x", "y"], np.array([[0.0], [1.0]]), [1.0, 3.0]),
    }


@pytest.fixture(scope="module")
def runs(cwd: Path, files: dict[str, Path]) -> dict[str, Run]:
    """The training runs, side by side."""
    f64 = ("--dtype", "float64", "--no-plot")
    jobs = {
        "norris": ("--data", NORRIS, *f64, "--summary"),
        "diabetes": ("--data", files["diabetes"], *f64, "--confidence", "0.9", "--summary"),
        "two_rows": ("--data", files["two_rows"], *f64),
        # plain standardized descent: far from the optimum after 3 epochs
        "stopped": (
            "--data",
            LONGLEY,
            *f64,
            "--epochs",
            "3",
            "--summary",
            "--precondition",
            "standardize",
        ),
        "quiet": ("--data", LONGLEY, "--no-plot", "-q"),  # converges: -q hides every warning
    }

    def job(name: str, args: tuple[Any, ...]) -> Run:
        out = cwd / f"run-{name}"
        return Run(run_linreg("train", *args, "--out", out, cwd=cwd), out)

    done = run_concurrently({name: partial(job, name, args) for name, args in jobs.items()})
    return {name: run for name, run in done.items() if isinstance(run, Run)}


def predict(run: Run, data: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_linreg("predict", run.model, "--data", data, *args, cwd=run.out.parent)


def reference_frame(X: np.ndarray, y: np.ndarray, rows: np.ndarray, confidence: float) -> Any:
    fit = sm.OLS(y, sm.add_constant(X)).fit()
    return fit.get_prediction(sm.add_constant(rows, has_constant="add")).summary_frame(
        alpha=1 - confidence
    )


def assert_intervals_match(
    columns: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, confidence: float
) -> None:
    """Half widths equal statsmodels' to RTOL; the intervals sit around the model's own
    predictions (which differ from least squares by the training error)."""
    frame = reference_frame(X, y, X, confidence)
    center, mean = columns["prediction"], frame["mean"].to_numpy()
    np.testing.assert_allclose(
        columns["mean_upper"] - center, frame["mean_ci_upper"] - mean, rtol=RTOL
    )
    np.testing.assert_allclose(
        center - columns["mean_lower"], mean - frame["mean_ci_lower"], rtol=RTOL
    )
    np.testing.assert_allclose(columns["upper"] - center, frame["obs_ci_upper"] - mean, rtol=RTOL)
    np.testing.assert_allclose(center - columns["lower"], mean - frame["obs_ci_lower"], rtol=RTOL)
    order = [columns[name] for name in ("lower", "mean_lower", "prediction", "mean_upper", "upper")]
    assert all(np.all(a < b) for a, b in itertools.pairwise(order))


def norris_xy() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(NORRIS, delimiter=",", skiprows=1)
    return table[:, :1], table[:, 1]


# -- predict --intervals -------------------------------------------------------------------------


def test_intervals_on_stdout_match_statsmodels(runs: dict[str, Run]) -> None:
    run = runs["norris"].ok()
    result = expect_exit(predict(run, NORRIS, "--intervals"), 0)
    assert result.stdout.splitlines()[0] == ",".join(COLUMNS)
    columns = read_columns(result.stdout)
    X, y = norris_xy()
    assert_intervals_match(columns, X, y, 0.95)
    plain = read_columns(expect_exit(predict(run, NORRIS), 0).stdout)
    assert list(plain) == ["prediction"]
    np.testing.assert_array_equal(plain["prediction"], columns["prediction"])  # same numbers
    assert result.stderr.startswith("mse ")  # metrics still on stderr, the CSV clean
    assert_plain(result.stdout, "stdout")


def test_intervals_of_a_ten_feature_model_with_named_columns(
    runs: dict[str, Run], files: dict[str, Path]
) -> None:
    """Diabetes (10 features, original units), trained with --confidence 0.9: the model's
    level is the default, --confidence overrides it."""
    run = runs["diabetes"].ok()
    bunch = load_diabetes(scaled=False)
    default = expect_exit(predict(run, files["diabetes"], "--intervals", "--json"), 0)
    document = json.loads(default.stdout)
    assert document["confidence"] == 0.9
    columns = {"prediction": np.array(document["predictions"])}
    columns |= {name: np.array(values) for name, values in document["intervals"].items()}
    assert list(columns) == COLUMNS
    assert_intervals_match(columns, bunch.data, bunch.target, 0.9)
    wider = expect_exit(
        predict(run, files["diabetes"], "--intervals", "--confidence", "0.99", "--json"), 0
    )
    document = json.loads(wider.stdout)
    assert document["confidence"] == 0.99
    at_99 = {name: np.array(values) for name, values in document["intervals"].items()}
    ratio = sps.t.ppf(0.995, 431) / sps.t.ppf(0.95, 431)
    np.testing.assert_allclose(
        (at_99["upper"] - at_99["lower"]) / (columns["upper"] - columns["lower"]), ratio, rtol=1e-9
    )


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_intervals_to_a_file(runs: dict[str, Run], suffix: str) -> None:
    run = runs["norris"].ok()
    out = run.out.parent / f"norris-intervals{suffix}"
    result = expect_exit(
        predict(run, NORRIS, "--intervals", "--confidence", "0.5", "--out", out, "--json"), 0
    )
    document = json.loads(result.stdout)
    assert document["confidence"] == 0.5 and document["out"] == str(out)
    assert "intervals" not in document and "predictions" not in document  # they are in the file
    if suffix == ".npy":
        array = np.load(out)
        assert array.shape == (36, 5)
        columns = {name: array[:, j] for j, name in enumerate(COLUMNS)}
    else:
        columns = read_columns(out.read_text())
    X, y = norris_xy()
    assert_intervals_match(columns, X, y, 0.5)


def test_confidence_needs_intervals_and_a_level_in_range(runs: dict[str, Run]) -> None:
    run = runs["norris"].ok()
    alone = expect_exit(predict(run, NORRIS, "--confidence", "0.9"), 2)
    assert_one_error(alone, "--confidence", "--intervals")
    assert alone.stdout == ""
    refused = expect_exit(predict(run, NORRIS, "--intervals", "--confidence", "1.5"), 2)
    assert_one_error(refused, "--confidence", "(0, 1)")
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError, match="confidence"):
            predict_file(run.model, NORRIS, intervals=True, confidence=bad)


def test_a_model_without_residual_degrees_of_freedom_has_no_intervals(
    runs: dict[str, Run], files: dict[str, Path]
) -> None:
    run = runs["two_rows"].ok()
    assert run.metrics["statistics"]["df_resid"] == 0
    assert load_model(run.model).intervals is None
    refused = expect_exit(predict(run, files["two_rows"], "--intervals"), 2)
    assert_one_error(refused, str(run.model), "no interval data")
    assert predict_file(run.model, files["two_rows"]).intervals is None  # plain ones work


# -- the interval data in the model file -----------------------------------------------------------


def test_model_file_carries_the_interval_data(runs: dict[str, Run]) -> None:
    run = runs["norris"].ok()
    model = load_model(run.model)
    basis = model.intervals
    assert basis is not None
    assert (basis.samples, basis.df_resid, basis.confidence) == (36, 34, 0.95)
    assert basis.sigma == pytest.approx(run.metrics["statistics"]["residual_std_err"], rel=1e-15)
    assert model_bytes(model) == run.model.read_bytes()  # the round trip keeps every byte


def test_an_older_model_file_without_interval_data_still_predicts(runs: dict[str, Run]) -> None:
    run = runs["norris"].ok()
    old = run.out.parent / "old-model.safetensors"
    old.write_bytes(model_bytes(replace(load_model(run.model), intervals=None)))
    plain = predict_file(old, NORRIS)
    assert plain.intervals is None
    np.testing.assert_array_equal(plain.predictions, predict_file(run.model, NORRIS).predictions)
    refused = run_linreg("predict", old, "--data", NORRIS, "--intervals", cwd=run.out.parent)
    assert_one_error(expect_exit(refused, 2), str(old), "no interval data", "retrain")


@pytest.mark.parametrize("drop", ["ols.r", "ols.sigma", "ols_df_resid", "confidence"])
def test_incomplete_interval_data_is_refused(runs: dict[str, Run], drop: str) -> None:
    """A file with part of the interval data (re-checksummed, so only the layout is wrong)."""
    run = runs["norris"].ok()
    tensors, metadata = read_safetensors(run.model, "model")
    tensors.pop(drop, None)
    metadata = {k: v for k, v in metadata.items() if k not in (drop, "sha256")}
    broken = run.out.parent / f"broken-{drop}.safetensors"
    broken.write_bytes(safetensors_bytes(tensors, metadata))
    with pytest.raises(ModelFileError, match="interval data"):
        load_model(broken)
    if drop == "ols.r":  # and through the command, once
        refused = run_linreg("predict", broken, "--data", NORRIS, cwd=run.out.parent)
        assert_one_error(expect_exit(refused, 2), str(broken), "damaged")


@pytest.mark.parametrize(
    ("name", "value"),
    [("ols.sigma", np.array([-1.0])), ("ols.r", np.zeros((1, 1))), ("ols.x_mean", np.zeros(2))],
)
def test_interval_data_out_of_range_is_refused(
    runs: dict[str, Run], name: str, value: np.ndarray
) -> None:
    run = runs["norris"].ok()
    tensors, metadata = read_safetensors(run.model, "model")
    tensors[name] = value
    broken = run.out.parent / f"bad-{name}.safetensors"
    broken.write_bytes(
        safetensors_bytes(tensors, {k: v for k, v in metadata.items() if k != "sha256"})
    )
    with pytest.raises(ModelFileError, match="interval data"):
        load_model(broken)


def test_edited_interval_data_fails_the_checksum(runs: dict[str, Run]) -> None:
    run = runs["norris"].ok()
    raw = bytearray(run.model.read_bytes())
    tensors, _ = read_safetensors(run.model, "model")
    sigma = tensors["ols.sigma"].tobytes()
    at = bytes(raw).index(sigma)
    raw[at : at + 8] = np.array([2 * tensors["ols.sigma"][0]]).tobytes()
    edited = run.out.parent / "edited.safetensors"
    edited.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(edited)


# -- train --summary and the statistics in metrics.json -------------------------------------


def test_summary_prints_the_diagnostics_and_how_close_the_training_came(
    runs: dict[str, Run],
) -> None:
    run = runs["norris"].ok()
    out = run.result.stdout
    assert_plain(out, "stdout")
    assert "log-likelihood -45.6466, AIC 95.2932, BIC 98.4603" in out
    assert "Durbin-Watson 1.272" in out and "condition number 855.2" in out
    assert "the learned parameters are within" in out and "standard errors" in out
    assert "did not converge" not in out
    statistics = run.metrics["statistics"]
    for key in ("log_likelihood", "aic", "bic", "condition_number", "durbin_watson"):
        assert isinstance(statistics[key], float), key
    assert not [w for w in run.metrics["warnings"] if "collinear" in w]


def test_summary_says_when_training_did_not_converge(runs: dict[str, Run]) -> None:
    """Longley, 3 epochs: the table still describes least squares, and says how far off the
    learned parameters are; the collinearity warning goes to stderr and metrics.json."""
    run = runs["stopped"].ok()
    assert run.metrics["converged"] is False
    trained = run.metrics["statistics"]["trained"]
    assert trained["converged"] is False and trained["max_diff_std_errs"] > 1
    notes = [line for line in run.result.stdout.splitlines() if "did not converge" in line]
    assert len(notes) == 1 and "standard errors" in notes[0], run.result.stdout
    warnings = [line for line in run.result.stderr.splitlines() if "collinear" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), run.result.stderr
    assert warnings[0].removeprefix("warning: ") in run.metrics["warnings"]


def test_quiet_hides_the_collinearity_warning(runs: dict[str, Run]) -> None:
    run = runs["quiet"].ok()
    assert run.result.stderr == "" and run.result.stdout == ""
    assert any("nearly collinear" in w for w in run.metrics["warnings"])


def test_the_table_is_a_rich_table_on_a_terminal(
    runs: dict[str, Run], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import output

    statistics = runs["norris"].ok().metrics["statistics"]
    monkeypatch.setattr(output, "is_terminal", lambda stream: True)
    output.coefficient_table(statistics)
    shown = capsys.readouterr().out
    assert "Coefficients (least squares)" in shown and "intercept" in shown
    assert "Durbin-Watson" in shown
    monkeypatch.setattr(output, "is_terminal", lambda stream: False)
    output.coefficient_table(statistics)
    plain = capsys.readouterr().out
    assert plain.startswith("coefficients (least squares):\n")
    assert_plain(plain)
