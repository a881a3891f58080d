"""Every statistic of metrics.json's ``statistics`` section against statsmodels' OLS, the
reference implementation, on NIST Norris and Longley, on scikit-learn's diabetes data (all
three through the TSQR) and on a large synthetic set (through the normal equations):
agreement to 1e-8 relative (and, for the NIST data, to the certified standard deviations of
the estimates). statsmodels and scikit-learn are test-only dependencies."""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_diabetes
from statsmodels.stats.stattools import durbin_watson
from test_statistics import LONGLEY, NORRIS, load

from regression.config import TrainConfig
from regression.data import Dataset
from regression.metrics import least_squares
from regression.pipeline import run_training
from regression.report import metrics_document
from regression.statistics import (
    Statistics,
    interval_basis,
    ols_statistics,
    prediction_intervals,
    residual_run,
)

RTOL = 1e-8
DATASETS = ("norris", "longley", "diabetes", "large")


@cache
def dataset(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """X, y and feature names. Diabetes: the 442 patients in the original units (age in
    years, blood pressure in mm Hg, ...), as shipped with scikit-learn. Large: 300,000 rows
    of 3 offset, scaled features, enough values for the normal-equations route of
    least_squares (the others take the TSQR)."""
    if name == "diabetes":
        bunch = load_diabetes(scaled=False)
        return bunch.data, bunch.target, tuple(bunch.feature_names)
    if name == "large":
        rng = np.random.default_rng(41)
        X = rng.normal(size=(300_000, 3)) * [2.0, 30.0, 0.5] + [100.0, -40.0, 7.0]
        y = X @ [1.5, -0.2, 4.0] + 12.0 + 3.0 * rng.normal(size=300_000)
        return X, y, ("a", "b", "c")
    X, y = load(name)
    return X, y, tuple(f"x{j + 1}" for j in range(X.shape[1]))


@cache
def reference(name: str) -> Any:
    X, y, _ = dataset(name)
    return sm.OLS(y, sm.add_constant(X)).fit()


def ours(name: str, confidence: float) -> Statistics:
    X, y, names = dataset(name)
    ls = least_squares(X, y)
    assert ls.method == ("cholesky" if name == "large" else "tsqr")
    dw = residual_run(X, y, ls).durbin_watson
    return ols_statistics(ls, names, ls.tss, confidence, durbin_watson=dw)


def expected_statistics(name: str, confidence: float) -> dict[str, Any]:
    """statsmodels' values under linreg's names (coefficient columns intercept first)."""
    fit = reference(name)
    ci = fit.conf_int(alpha=1 - confidence)
    return {
        "estimate": fit.params,
        "std_err": fit.bse,
        "t": fit.tvalues,
        "p": fit.pvalues,
        "ci_low": ci[:, 0],
        "ci_high": ci[:, 1],
        "r2": fit.rsquared,
        "adj_r2": fit.rsquared_adj,
        "residual_std_err": np.sqrt(fit.scale),
        "df_resid": fit.df_resid,
        "f_stat": fit.fvalue,
        "f_pvalue": fit.f_pvalue,
        "log_likelihood": fit.llf,
        "aic": fit.aic,
        "bic": fit.bic,
        "condition_number": fit.condition_number,
        "durbin_watson": durbin_watson(fit.resid),
    }


def assert_matches_statsmodels(document: dict[str, Any], name: str, confidence: float) -> None:
    """``document`` is a ``statistics`` section (Statistics.to_dict)."""
    expected = expected_statistics(name, confidence)
    coefficients = document["coefficients"]
    assert [c["name"] for c in coefficients] == ["intercept", *dataset(name)[2]]
    for key, want in expected.items():
        got = [c[key] for c in coefficients] if key in coefficients[0] else document[key]
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=f"{name}: {key}")
    assert document["df_resid"] == int(expected["df_resid"])
    assert document["confidence"] == confidence


@pytest.mark.parametrize("confidence", [0.95, 0.9])
@pytest.mark.parametrize("name", DATASETS)
def test_every_statistic_matches_statsmodels(name: str, confidence: float) -> None:
    assert_matches_statsmodels(ours(name, confidence).to_dict(), name, confidence)


@pytest.mark.parametrize(("name", "certified"), [("norris", NORRIS), ("longley", LONGLEY)])
def test_standard_errors_match_the_nist_certified_values(name: str, certified: dict) -> None:
    """The certified standard deviations of the estimates, to 1e-9, and statsmodels agrees
    with them to the same tolerance as with linreg."""
    std_errs = [c.std_err for c in ours(name, 0.95).coefficients]
    np.testing.assert_allclose(std_errs, certified["std_errs"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(reference(name).bse, certified["std_errs"], rtol=RTOL, atol=0)


@pytest.mark.parametrize("confidence", [0.95, 0.8])
@pytest.mark.parametrize("name", DATASETS)
def test_prediction_intervals_match_statsmodels(name: str, confidence: float) -> None:
    """At the training rows and at new rows beyond them: the confidence interval of the
    mean and the prediction interval (statsmodels' mean_ci and obs_ci)."""
    X, y, _ = dataset(name)
    rng = np.random.default_rng(3)
    rows = np.vstack([X, X[rng.integers(0, len(X), 20)] * rng.uniform(0.5, 1.5, (20, 1))])
    ls = least_squares(X, y)
    basis = interval_basis(ls, 0.95)
    assert basis is not None
    center = ls.predict(rows)
    bands = prediction_intervals(basis, rows, center, confidence)
    frame = (
        reference(name).get_prediction(sm.add_constant(rows)).summary_frame(alpha=1 - confidence)
    )
    mean, pairs = frame["mean"].to_numpy(), []
    pairs.append(("mean upper", bands.mean_upper - center, frame["mean_ci_upper"] - mean))
    pairs.append(("mean lower", center - bands.mean_lower, mean - frame["mean_ci_lower"]))
    pairs.append(("upper", bands.upper - center, frame["obs_ci_upper"] - mean))
    pairs.append(("lower", center - bands.lower, mean - frame["obs_ci_lower"]))
    for what, half, expected in pairs:  # half widths: the center is the same to 1e-12
        np.testing.assert_allclose(half, expected, rtol=RTOL, atol=0, err_msg=what)
    np.testing.assert_allclose(center, frame["mean"], rtol=RTOL, atol=0)


@cache
def pipeline_document(name: str) -> dict[str, Any]:
    """metrics.json of a short float64 training run on the data set (the statistics do not
    depend on the training; the ``trained`` part does)."""
    X, y, names = dataset(name)
    data = Dataset(X=X, y=y, feature_names=names, target_name="y", source=name)
    config = TrainConfig(epochs=30, device="cpu", dtype="float64")
    return metrics_document(run_training(config, data=data, confidence=0.9))


@pytest.mark.parametrize("name", DATASETS)
def test_metrics_json_statistics_match_statsmodels(name: str) -> None:
    """Through the pipeline: Durbin-Watson from its streamed pass, the confidence level."""
    document = pipeline_document(name)
    assert_matches_statsmodels(document["statistics"], name, 0.9)


@pytest.mark.parametrize("name", DATASETS)
def test_metrics_json_says_how_far_the_trained_parameters_are(name: str) -> None:
    document = pipeline_document(name)
    trained = document["statistics"]["trained"]
    assert trained["converged"] == document["converged"]
    assert trained["optimality_gap"] == document["optimality_gap"]
    learned = np.array([document["params"]["bias"], *document["params"]["weight"]])
    ols = np.array([document["ols_params"]["bias"], *document["ols_params"]["weight"]])
    std_errs = np.array([c["std_err"] for c in document["statistics"]["coefficients"]])
    diff = np.abs(learned - ols)
    assert trained["max_rel_diff"] == pytest.approx(np.max(diff / np.abs(ols)), rel=1e-12)
    assert trained["max_diff_std_errs"] == pytest.approx(np.max(diff / std_errs), rel=1e-12)


@pytest.mark.parametrize(("name", "collinear"), [(n, n == "longley") for n in DATASETS])
def test_collinearity_warning_in_metrics_json(name: str, collinear: bool) -> None:
    """Longley's standardized condition number is 111, diabetes' 22 (its raw one, 7236, only
    reflects the units), Norris has one feature."""
    document = pipeline_document(name)
    warned = [w for w in document["warnings"] if "collinear" in w]
    assert bool(warned) is collinear, document["warnings"]
    standardized = document["statistics"]["condition_number_standardized"]
    assert (standardized > 30) is collinear


def test_statistics_do_not_depend_on_the_chunking_of_a_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sufficient statistics and the residual pass are streamed: chunks of 5 rows give
    the values of a single pass."""
    from regression import data as data_module

    whole = ours("diabetes", 0.95).to_dict()
    monkeypatch.setattr(data_module, "CHUNK_ROWS", 5)  # every streamed pass reads through it
    chunked = dataclasses.asdict(ours("diabetes", 0.95))
    for key, value in whole.items():
        if key == "coefficients":
            for a, b in zip(value, chunked[key], strict=True):
                for field in ("estimate", "std_err", "t", "p", "ci_low", "ci_high"):
                    assert b[field] == pytest.approx(a[field], rel=1e-10), field
        elif isinstance(value, float):
            assert chunked[key] == pytest.approx(value, rel=1e-10), key
