"""OLS inference: standard errors against the NIST StRD certified values, and t, p and
confidence intervals against scipy.stats computed independently here."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from certified import LONGLEY_B
from scipy import stats as sps

import regression.data
from regression.metrics import least_squares
from regression.statistics import (
    COLLINEARITY_THRESHOLD,
    ResidualRun,
    Statistics,
    collinearity_warning,
    condition_numbers,
    interval_basis,
    ols_statistics,
    prediction_intervals,
    residual_run,
    trained_distance,
)

DATA = Path(__file__).parent / "data"
CERTIFIED_RTOL = 1e-9  # at least 9 significant digits

# NIST StRD certified values: estimates, their standard deviations, residual standard
# deviation, R-squared and the F statistic
NORRIS = {
    "estimates": [-0.262323073774029, 1.00211681802045],
    "std_errs": [0.232818234301152, 0.429796848199937e-03],
    "residual_sd": 0.884796396144373,
    "r2": 0.999993745883712,
    "f": 5436385.54079785,
}
LONGLEY = {
    "estimates": list(LONGLEY_B),
    "std_errs": [
        890420.383607373,
        84.9149257747669,
        0.334910077722432e-01,
        0.488399681651699,
        0.214274163161675,
        0.226073200069370,
        455.478499142212,
    ],
    "residual_sd": 304.854073561965,
    "r2": 0.995479004577296,
    "f": 330.285339234588,
}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(DATA / f"{name}.csv", delimiter=",", skiprows=1)
    if name == "norris":
        return table[:, :1], table[:, 1]
    return table[:, 1:], table[:, 0]


def summary(X: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> Statistics:
    names = tuple(f"x{j + 1}" for j in range(X.shape[1]))
    tss = float(np.sum((y - y.mean()) ** 2))
    return ols_statistics(least_squares(X, y), names, tss, confidence)


@pytest.mark.parametrize(("name", "certified"), [("norris", NORRIS), ("longley", LONGLEY)])
def test_certified_values(name: str, certified: dict) -> None:
    X, y = load(name)
    result = summary(X, y)
    coefficients = result.coefficients
    assert [c.name for c in coefficients] == ["intercept"] + [
        f"x{j + 1}" for j in range(X.shape[1])
    ]
    np.testing.assert_allclose(
        [c.estimate for c in coefficients], certified["estimates"], rtol=CERTIFIED_RTOL
    )
    np.testing.assert_allclose(
        [c.std_err for c in coefficients], certified["std_errs"], rtol=CERTIFIED_RTOL
    )
    np.testing.assert_allclose(result.residual_std_err, certified["residual_sd"], rtol=1e-9)
    np.testing.assert_allclose(result.r2, certified["r2"], rtol=1e-12)
    np.testing.assert_allclose(result.f_stat, certified["f"], rtol=1e-9)
    assert result.df_resid == len(y) - X.shape[1] - 1


@pytest.mark.parametrize("name", ["norris", "longley"])
@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.5])
def test_t_p_and_interval_agree_with_scipy(name: str, confidence: float) -> None:
    X, y = load(name)
    result = summary(X, y, confidence)
    df = len(y) - X.shape[1] - 1
    quantile = sps.t.ppf(0.5 + confidence / 2, df)
    assert result.confidence == confidence
    for c in result.coefficients:
        assert c.std_err is not None and c.t is not None and c.p is not None
        assert c.t == pytest.approx(c.estimate / c.std_err, rel=1e-14, abs=0)
        expected_p = 2 * sps.t.sf(abs(c.t), df)
        np.testing.assert_allclose(c.p, expected_p, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(c.ci_low, c.estimate - quantile * c.std_err, rtol=1e-12)
        np.testing.assert_allclose(c.ci_high, c.estimate + quantile * c.std_err, rtol=1e-12)
        assert c.ci_low < c.estimate < c.ci_high


def test_f_test_and_adjusted_r2_agree_with_scipy() -> None:
    X, y = load("longley")
    result = summary(X, y)
    n, d = X.shape
    assert result.adj_r2 == pytest.approx(1 - (1 - result.r2) * (n - 1) / (n - d - 1), abs=0)
    np.testing.assert_allclose(result.f_pvalue, sps.f.sf(result.f_stat, d, n - d - 1), rtol=1e-9)


def test_p_values_of_a_moderate_fit_agree_with_scipy() -> None:
    """Norris and Longley give tiny p values; this case gives p from 3e-4 to 0.2."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(30, 3))
    y = X @ np.array([0.6, 0.05, -0.3]) + 0.2 + rng.normal(size=30)
    result = summary(X, y)
    design = np.column_stack([np.ones(30), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    sigma2 = residual @ residual / (30 - 4)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    t = coef / se
    p = 2 * sps.t.sf(np.abs(t), 30 - 4)
    assert max(p) > 0.2 and min(p) < 0.001  # the case covers a range of p values
    np.testing.assert_allclose([c.estimate for c in result.coefficients], coef, rtol=1e-10)
    np.testing.assert_allclose([c.std_err for c in result.coefficients], se, rtol=1e-10)
    np.testing.assert_allclose([c.t for c in result.coefficients], t, rtol=1e-10)
    np.testing.assert_allclose([c.p for c in result.coefficients], p, rtol=1e-8)
    assert result.residual_std_err == pytest.approx(np.sqrt(sigma2), rel=1e-12, abs=0)


def test_higher_confidence_widens_the_interval_by_the_t_quantile_ratio() -> None:
    X, y = load("norris")
    narrow, wide = summary(X, y, 0.90), summary(X, y, 0.99)
    df = len(y) - 2
    ratio = sps.t.ppf(0.995, df) / sps.t.ppf(0.95, df)
    for a, b in zip(narrow.coefficients, wide.coefficients, strict=True):
        assert a.estimate == b.estimate and a.std_err == b.std_err and a.p == b.p
        width_a, width_b = a.ci_high - a.ci_low, b.ci_high - b.ci_low
        assert width_b > width_a
        assert width_b / width_a == pytest.approx(ratio, rel=1e-12, abs=0)
    assert narrow.confidence == 0.90 and wide.confidence == 0.99


def test_no_residual_degrees_of_freedom_leaves_inference_undefined() -> None:
    X = np.array([[0.0], [1.0]])
    y = np.array([1.0, 3.0])
    result = summary(X, y)
    assert result.df_resid == 0
    assert [c.estimate for c in result.coefficients] == pytest.approx([1.0, 2.0], abs=1e-14)
    for c in result.coefficients:
        assert (c.std_err, c.t, c.p, c.ci_low, c.ci_high) == (None, None, None, None, None)
    assert result.residual_std_err is None and result.adj_r2 is None
    assert result.f_stat is None and result.f_pvalue is None
    assert result.r2 == pytest.approx(1.0, abs=1e-14)


def test_rank_deficient_design_has_no_standard_errors() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=20)
    X = np.column_stack([x, 2 * x])
    y = 3 * x + rng.normal(size=20)
    result = summary(X, y)
    assert all(c.std_err is None and c.t is None and c.ci_low is None for c in result.coefficients)
    assert result.r2 is not None and 0 < result.r2 < 1
    # the duplicated column adds no degree of freedom to the model (as in R's lm and
    # statsmodels): 20 rows - rank 1 - intercept
    assert result.df_resid == 18
    np.testing.assert_allclose(result.residual_std_err, np.sqrt(result_rss(X, y) / 18), rtol=1e-10)
    assert result.condition_number is None and result.condition_number_standardized is None


def result_rss(X: np.ndarray, y: np.ndarray) -> float:
    design = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.sum((design @ coef - y) ** 2))


def test_constant_target_has_no_r2_or_f() -> None:
    X = np.arange(10.0).reshape(-1, 1)
    y = np.full(10, 4.0)
    result = summary(X, y)
    assert result.r2 is None and result.adj_r2 is None
    assert result.f_stat is None and result.f_pvalue is None
    assert result.coefficients[0].estimate == pytest.approx(4.0, rel=1e-14, abs=0)
    assert result.coefficients[1].estimate == pytest.approx(0.0, abs=1e-14)


def test_to_dict_holds_every_value() -> None:
    X, y = load("norris")
    result = summary(X, y)
    document = result.to_dict()
    assert document["coefficients"][1] == {
        "name": "x1",
        "estimate": result.coefficients[1].estimate,
        "std_err": result.coefficients[1].std_err,
        "t": result.coefficients[1].t,
        "p": result.coefficients[1].p,
        "ci_low": result.coefficients[1].ci_low,
        "ci_high": result.coefficients[1].ci_high,
    }
    assert document["df_resid"] == 34 and document["confidence"] == 0.95
    assert document["r2"] == result.r2 and document["f_stat"] == result.f_stat
    for key in (
        "log_likelihood",
        "aic",
        "bic",
        "condition_number",
        "condition_number_standardized",
        "durbin_watson",
    ):
        assert document[key] == getattr(result, key), key
    assert document["trained"] is None  # set by the pipeline, which knows the trained model


# -- likelihood and information criteria --------------------------------------------------------


def ols_residuals(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(y)), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return np.asarray(y - design @ coef)


@pytest.mark.parametrize("name", ["norris", "longley"])
def test_log_likelihood_is_the_gaussian_density_at_the_ml_variance(name: str) -> None:
    X, y = load(name)
    result = summary(X, y)
    residual = ols_residuals(X, y)
    n, k = len(y), X.shape[1] + 1
    expected = float(np.sum(sps.norm.logpdf(residual, scale=np.sqrt(residual @ residual / n))))
    assert result.log_likelihood == pytest.approx(expected, rel=1e-9, abs=0)
    assert result.aic == pytest.approx(-2 * expected + 2 * k, rel=1e-9, abs=0)
    assert result.bic == pytest.approx(-2 * expected + np.log(n) * k, rel=1e-9, abs=0)


def test_an_exact_fit_has_no_likelihood() -> None:
    X = np.arange(12.0).reshape(-1, 2)
    X[:, 1] = X[:, 1] ** 2  # not collinear with the first column
    y = X @ np.array([2.0, -1.0]) + 3.0
    ls = least_squares(X, y)
    dw = residual_run(X, y, ls).durbin_watson  # of rounding errors, if any
    result = ols_statistics(ls, ("x1", "x2"), ls.tss, durbin_watson=dw if dw is not None else 2.0)
    assert (result.log_likelihood, result.aic, result.bic) == (None, None, None)
    assert result.durbin_watson is None


# -- condition numbers and collinearity ---------------------------------------------------------


def test_condition_number_is_that_of_the_design_with_a_constant_column() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200, 4)) * [1.0, 10.0, 0.1, 3.0] + [5.0, -2.0, 100.0, 0.0]
    y = rng.normal(size=200)
    raw, _ = condition_numbers(least_squares(X, y))
    expected = np.linalg.cond(np.column_stack([np.ones(200), X]))
    assert raw == pytest.approx(expected, rel=1e-10, abs=0)


def test_standardized_condition_number_does_not_depend_on_units_or_offsets() -> None:
    rng = np.random.default_rng(6)
    base = rng.normal(size=(300, 3))
    base[:, 2] += 0.5 * base[:, 0]  # some correlation
    y = rng.normal(size=300)
    moved = base * [1e3, 1e-2, 1.0] + [1e4, -3.0, 50.0]
    raw_a, std_a = condition_numbers(least_squares(base, y))
    raw_b, std_b = condition_numbers(least_squares(moved, y))
    assert raw_a is not None and raw_b is not None and std_a is not None
    assert raw_b > 100 * raw_a  # the units change statsmodels' number...
    assert std_b == pytest.approx(std_a, rel=1e-10, abs=0)  # ...not the standardized one
    z = (base - base.mean(axis=0)) / base.std(axis=0)
    assert std_a == pytest.approx(np.linalg.cond(z), rel=1e-10, abs=0)


def test_collinearity_warning() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=100)
    y = rng.normal(size=100)
    independent = np.column_stack([x, rng.normal(size=100)])
    assert collinearity_warning(least_squares(independent, y)) is None
    nearly = np.column_stack([x, x + 1e-3 * rng.normal(size=100)])
    message = collinearity_warning(least_squares(nearly, y))
    assert message is not None and "nearly collinear" in message
    assert f"> {COLLINEARITY_THRESHOLD:g}" in message
    duplicated = np.column_stack([x, 3 * x - 1])
    message = collinearity_warning(least_squares(duplicated, y))
    assert message is not None and "linearly dependent" in message


def test_a_constant_column_has_its_own_warning_not_a_collinearity_one() -> None:
    rng = np.random.default_rng(8)
    X = np.column_stack([rng.normal(size=50), np.full(50, 7.0), rng.normal(size=50)])
    ls = least_squares(X, rng.normal(size=50))
    raw, standardized = condition_numbers(ls)
    assert raw is None  # [1, X] is singular: infinite
    assert standardized is not None and standardized < 2  # the varying columns alone
    assert collinearity_warning(ls) is None


@pytest.mark.parametrize(("name", "warned"), [("norris", False), ("longley", True)])
def test_longley_is_collinear_and_norris_is_not(name: str, warned: bool) -> None:
    X, y = load(name)
    assert (collinearity_warning(least_squares(X, y)) is not None) is warned


# -- Durbin-Watson ------------------------------------------------------------------------------


def durbin_watson_of(residual: np.ndarray) -> float:
    return float(np.sum(np.diff(residual) ** 2) / np.sum(residual**2))


@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 1 << 16])
def test_durbin_watson_streamed_in_chunks(chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", chunk_rows)
    X, y = load("longley")
    run = residual_run(X, y, least_squares(X, y))
    assert run.durbin_watson == pytest.approx(durbin_watson_of(ols_residuals(X, y)), rel=1e-9)


def test_durbin_watson_of_wide_data_pairs_the_same_rows() -> None:
    """Wide data has fewer rows a chunk than its target alone would (chunk_rows): the
    streamed residuals must still pair each row of X with its own y."""
    rng = np.random.default_rng(10)
    n, d = 60_000, 20
    assert regression.data.chunk_rows(d) < min(n, regression.data.chunk_rows(1))
    X = rng.normal(size=(n, d))
    y = X @ np.linspace(-1.0, 1.0, d) + np.cumsum(rng.normal(size=n)) * 0.01
    ls = least_squares(X, y)
    residual = y - ls.y_mean - (X - ls.x_mean) @ ls.weight
    run = residual_run(X, y, ls)
    assert run.durbin_watson == pytest.approx(durbin_watson_of(residual), rel=1e-9)


def test_residual_runs_of_shards_join_in_order() -> None:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(101, 2))
    y = X @ [1.0, 2.0] + np.cumsum(rng.normal(size=101))  # serially correlated errors
    ls = least_squares(X, y)
    whole = residual_run(X, y, ls)
    cuts = [0, 1, 1, 40, 77, 101]  # shards of 1, 0, 39, 37 and 24 rows
    shards = [residual_run(X[a:b], y[a:b], ls) for a, b in itertools.pairwise(cuts)]
    assert shards[1].empty and shards[1].durbin_watson is None
    joined = ResidualRun.concat([ResidualRun.from_array(s.as_array()) for s in shards])
    # the same rows' residuals, through BLAS calls of other shapes: equal to rounding
    assert joined.first == pytest.approx(whole.first, rel=1e-13)
    assert joined.last == pytest.approx(whole.last, rel=1e-13)
    assert joined.squares == pytest.approx(whole.squares, rel=1e-13)
    assert joined.steps == pytest.approx(whole.steps, rel=1e-13)
    assert whole.durbin_watson is not None and whole.durbin_watson < 1  # positive correlation


def test_durbin_watson_reads_the_sign_of_serial_correlation() -> None:
    X = np.linspace(0, 1, 400).reshape(-1, 1)
    rng = np.random.default_rng(10)
    white = rng.normal(size=400)
    alternating = np.where(np.arange(400) % 2 == 0, 1.0, -1.0) + 0.1 * white
    for noise, low, high in [(white, 1.7, 2.3), (alternating, 3.5, 4.0)]:
        y = 2 * X[:, 0] + noise
        dw = residual_run(X, y, least_squares(X, y)).durbin_watson
        assert dw is not None and low < dw < high


# -- how far the trained parameters are ---------------------------------------------------------


def test_trained_distance_in_relative_terms_and_standard_errors() -> None:
    X, y = load("norris")
    result = summary(X, y)
    estimates = np.array([c.estimate for c in result.coefficients])
    se = np.array([c.std_err for c in result.coefficients])
    same = trained_distance(result, estimates[1:], estimates[0], optimality_gap=0.0, converged=True)
    assert (same.max_rel_diff, same.max_diff_std_errs) == (0.0, 0.0)
    off = trained_distance(
        result,
        estimates[1:] + 0.5 * se[1:],
        estimates[0] - 2 * se[0],
        optimality_gap=0.1,
        converged=False,
    )
    assert off.max_diff_std_errs == pytest.approx(2.0, rel=1e-12)
    assert off.max_rel_diff == pytest.approx(2 * se[0] / abs(estimates[0]), rel=1e-12)
    assert off.to_dict() == {
        "converged": False,
        "optimality_gap": 0.1,
        "max_rel_diff": off.max_rel_diff,
        "max_diff_std_errs": off.max_diff_std_errs,
    }


def test_trained_distance_without_standard_errors() -> None:
    X = np.array([[0.0], [1.0]])
    result = summary(X, np.array([1.0, 3.0]))  # no residual degrees of freedom
    distance = trained_distance(result, np.array([2.5]), 1.0, optimality_gap=None, converged=True)
    assert distance.max_diff_std_errs is None
    assert distance.max_rel_diff == pytest.approx(0.25)


# -- intervals of predictions -------------------------------------------------------------------


def test_interval_basis_is_undefined_without_degrees_of_freedom_or_full_rank() -> None:
    assert (
        interval_basis(least_squares(np.array([[0.0], [1.0]]), np.array([1.0, 3.0])), 0.95) is None
    )
    x = np.arange(10.0)
    dependent = least_squares(np.column_stack([x, 2 * x]), np.sin(x))
    assert interval_basis(dependent, 0.95) is None
    X, y = load("norris")
    basis = interval_basis(least_squares(X, y), 0.9)
    assert basis is not None
    assert (basis.samples, basis.df_resid, basis.confidence) == (36, 34, 0.9)
    assert basis.sigma == pytest.approx(NORRIS["residual_sd"], rel=1e-9)


@pytest.mark.parametrize("chunk_rows", [3, 1 << 16])
def test_prediction_intervals_by_the_textbook_formula(
    chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """se(mean) = sigma sqrt(a' (A'A)^-1 a) with a = [1, x] and A the design: the same
    quantity as the centered form the code uses, computed the plain way."""
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(12)
    X = rng.normal(size=(40, 3)) + np.array([2.0, 0.0, -1.0])
    y = X @ [0.5, -1.0, 2.0] + 1.0 + rng.normal(size=40)
    ls = least_squares(X, y)
    basis = interval_basis(ls, 0.95)
    assert basis is not None
    new = rng.normal(size=(11, 3)) * 3
    center = ls.predict(new) + 0.01  # intervals go around the given predictions
    bands = prediction_intervals(basis, new, center, 0.9)
    design = np.column_stack([np.ones(40), X])
    a = np.column_stack([np.ones(11), new])
    h = np.einsum("ij,jk,ik->i", a, np.linalg.inv(design.T @ design), a)
    q = sps.t.ppf(0.95, 36)
    sigma = np.sqrt(np.sum(ols_residuals(X, y) ** 2) / 36)
    np.testing.assert_allclose(bands.mean_upper - center, q * sigma * np.sqrt(h), rtol=1e-9)
    np.testing.assert_allclose(center - bands.mean_lower, q * sigma * np.sqrt(h), rtol=1e-9)
    np.testing.assert_allclose(bands.upper - center, q * sigma * np.sqrt(1 + h), rtol=1e-9)
    np.testing.assert_allclose(center - bands.lower, q * sigma * np.sqrt(1 + h), rtol=1e-9)
    assert bands.confidence == 0.9
