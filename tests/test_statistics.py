"""OLS inference: standard errors against the NIST StRD certified values, and t, p and
confidence intervals against scipy.stats computed independently here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from regression.metrics import least_squares
from regression.statistics import Statistics, ols_statistics

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
    "estimates": [
        -3482258.63459582,
        15.0618722713733,
        -0.358191792925910e-01,
        -2.02022980381683,
        -1.03322686717359,
        -0.511041056535807e-01,
        1829.15146461355,
    ],
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
    np.testing.assert_allclose(result.residual_std_err, np.sqrt(result_rss(X, y) / 17), rtol=1e-10)


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
