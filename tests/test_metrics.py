"""The float64 least-squares reference and the fit metrics, against np.linalg.lstsq, hand
formulas and the NIST StRD certified values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from certified import LONGLEY_B, NORRIS_B, NORRIS_RSS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import regression.data
import regression.metrics
from regression.metrics import fit_metrics, least_squares, optimality_gap

DATA = Path(__file__).parent / "data"

LONGLEY_RSS = 836424.055505915
CERTIFIED_RTOL = 1e-9  # at least 9 significant digits, as the StRD asks of good software


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixture CSV as (X, y); Norris has columns x,y and Longley y,x1..x6."""
    table = np.loadtxt(DATA / f"{name}.csv", delimiter=",", skiprows=1)
    if name == "norris":
        return table[:, :1], table[:, 1]
    return table[:, 1:], table[:, 0]


def lstsq_with_intercept(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The oracle: weights, bias and residual sum of squares from np.linalg.lstsq on [X, 1]."""
    design = np.column_stack([X, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    rss = float(np.sum((design @ coef - y) ** 2))
    return coef[:-1], float(coef[-1]), rss


# -- least squares against lstsq -------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "seed"), [(50, 1, 0), (200, 3, 1), (1000, 8, 2), (40, 39, 3)])
def test_least_squares_matches_lstsq(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + rng.uniform(-5, 5, d)
    y = X @ rng.normal(size=d) + 3.0 + rng.normal(size=n)
    ls = least_squares(X, y)
    weight, bias, rss = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.weight, weight, rtol=1e-10, atol=1e-12)
    assert ls.bias == pytest.approx(bias, rel=1e-10, abs=0)
    # (40, 39) fits exactly: its rss is rounding noise, hence the absolute floor
    assert ls.rss == pytest.approx(rss, rel=1e-10, abs=1e-20)
    assert ls.mse == pytest.approx(rss / n, rel=1e-10, abs=1e-20)
    assert ls.samples == n and ls.rank == d
    np.testing.assert_allclose(ls.x_mean, X.mean(axis=0), rtol=1e-13)
    assert ls.y_mean == pytest.approx(y.mean(), rel=1e-13, abs=0)
    np.testing.assert_allclose(ls.predict(X), X @ weight + bias, rtol=1e-10)
    # r is the triangular factor of the centered design: Xc'Xc = r'r
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(ls.r.T @ ls.r, Xc.T @ Xc, rtol=1e-10, atol=1e-8 * n)
    assert np.allclose(ls.r, np.triu(ls.r))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_least_squares_matches_lstsq_property(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    ls = least_squares(X, y)
    if ls.rank < d:  # a random design is full rank unless n <= d
        assert n <= d
    weight, bias, rss = lstsq_with_intercept(X, y)
    if n > d:
        cond = np.linalg.cond(X - X.mean(axis=0))
        np.testing.assert_allclose(ls.weight, weight, rtol=1e-12 * cond, atol=1e-12 * cond)
        assert ls.bias == pytest.approx(bias, rel=1e-12 * cond, abs=1e-12 * cond)
    # predictions and rss are unique even when the weights are not
    np.testing.assert_allclose(ls.predict(X), X @ weight + bias, rtol=1e-9, atol=1e-9)
    assert ls.rss == pytest.approx(rss, rel=1e-9, abs=1e-20)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunked_least_squares_equals_unchunked(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(10.0, 2.0, size=(301, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + rng.normal(size=301)
    whole = least_squares(X, y)
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", chunk)
    chunked = least_squares(X, y)
    np.testing.assert_allclose(chunked.weight, whole.weight, rtol=1e-12)
    assert chunked.bias == pytest.approx(whole.bias, rel=1e-12, abs=0)
    assert chunked.rss == pytest.approx(whole.rss, rel=1e-10, abs=0)
    np.testing.assert_allclose(chunked.x_mean, whole.x_mean, rtol=1e-14)
    np.testing.assert_allclose(np.abs(chunked.r), np.abs(whole.r), rtol=1e-10, atol=1e-10)


def test_chunked_least_squares_accepts_float32_memmap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    X = rng.random((500, 2)).astype(np.float32)
    y = (X @ np.array([2.0, -1.0], dtype=np.float32) + 0.5).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", 64)
    ls = least_squares(mapped, y)
    weight, bias, _ = lstsq_with_intercept(X.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(ls.weight, weight, rtol=1e-10)
    assert ls.bias == pytest.approx(bias, rel=1e-10, abs=0)


# -- rank-deficient designs: the minimum-norm weights -------------------------------------


def min_norm_oracle(X: np.ndarray, y: np.ndarray, keep: list[int]) -> np.ndarray:
    """lstsq on the independent columns ``keep`` (centered, so the intercept is free)."""
    Xk = X[:, keep]
    w, *_ = np.linalg.lstsq(Xk - Xk.mean(axis=0), y - y.mean(), rcond=None)
    return w


def _rank_deficient_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(50, 3))
    return X, X @ np.array([1.0, 2.0, -1.0]) + 0.5 + 0.1 * rng.normal(size=50)


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        0.1,
        3.7,
        12345.678,
    ],
)
def test_constant_column_gets_minimum_norm_weights(value: float) -> None:
    X, y = _rank_deficient_data()
    X = np.column_stack([X, np.full(len(y), value)])
    ls = least_squares(X, y)
    expected = np.append(min_norm_oracle(X, y, [0, 1, 2]), 0.0)
    assert np.all(np.isfinite(ls.weight)) and np.isfinite(ls.bias)
    assert ls.rank == 3
    np.testing.assert_allclose(ls.weight, expected, rtol=1e-10, atol=1e-12)
    weight, bias, rss = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.predict(X), X @ weight + bias, rtol=1e-10)
    assert ls.rss == pytest.approx(rss, rel=1e-10, abs=0)


@pytest.mark.parametrize("value", [0.0, 0.1, 3.7, 12345.678])
def test_constant_column_gets_zero_weight(value: float) -> None:
    """The mean of the moments pass is exact for a constant column, so its centered values
    are exactly zero and it is dropped as rank-deficient."""
    X, y = _rank_deficient_data()
    X = np.column_stack([X, np.full(len(y), value)])
    ls = least_squares(X, y)
    expected = np.append(min_norm_oracle(X, y, [0, 1, 2]), 0.0)
    assert ls.rank == 3
    np.testing.assert_allclose(ls.weight, expected, rtol=1e-10, atol=1e-12)
    weight, bias, _ = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.predict(X), X @ weight + bias, rtol=1e-10)
    assert ls.bias == pytest.approx(
        y.mean() - X[:, :3].mean(axis=0) @ expected[:3], rel=1e-10, abs=0
    )


def test_duplicated_column_splits_the_weight_evenly() -> None:
    X, y = _rank_deficient_data()
    X = np.column_stack([X, X[:, 0]])
    ls = least_squares(X, y)
    w = min_norm_oracle(X, y, [0, 1, 2])
    # minimum norm: w0 * x0 is shared equally by the two copies
    expected = np.array([w[0] / 2, w[1], w[2], w[0] / 2])
    assert ls.rank == 3
    np.testing.assert_allclose(ls.weight, expected, rtol=1e-10)
    Xc = X - X.mean(axis=0)
    oracle, *_ = np.linalg.lstsq(Xc, y - y.mean(), rcond=None)
    np.testing.assert_allclose(ls.weight, oracle, rtol=1e-10)
    weight, bias, rss = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.predict(X), X @ weight + bias, rtol=1e-10)
    assert ls.rss == pytest.approx(rss, rel=1e-10, abs=0)


@pytest.mark.parametrize(("n", "d"), [(3, 5), (4, 4), (2, 1)])
def test_fewer_rows_than_unknowns_gives_minimum_norm_exact_fit(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 10 + d)
    X = rng.normal(size=(n, d))
    y = rng.normal(size=n)
    ls = least_squares(X, y)
    Xc = X - X.mean(axis=0)
    oracle, *_ = np.linalg.lstsq(Xc, y - y.mean(), rcond=None)
    assert ls.rank == min(n - 1, d)
    assert np.all(np.isfinite(ls.weight))
    np.testing.assert_allclose(ls.weight, oracle, rtol=1e-10, atol=1e-12)
    # n - 1 centered rows and at least as many unknowns: the data are fitted exactly
    np.testing.assert_allclose(ls.predict(X), y, rtol=0, atol=1e-12)
    assert ls.rss == pytest.approx(0.0, abs=1e-24)


def test_single_row_predicts_its_target() -> None:
    ls = least_squares(np.array([[3.0, -1.0]]), np.array([7.5]))
    assert ls.rank == 0
    np.testing.assert_array_equal(ls.weight, [0.0, 0.0])
    assert ls.bias == 7.5
    assert ls.rss == 0.0


# -- NIST StRD certified values -------------------------------------------------------------


def test_norris_certified_coefficients() -> None:
    X, y = load("norris")
    assert X.shape == (36, 1)
    ls = least_squares(X, y)
    assert ls.bias == pytest.approx(NORRIS_B[0], rel=CERTIFIED_RTOL, abs=0)
    assert ls.weight[0] == pytest.approx(NORRIS_B[1], rel=CERTIFIED_RTOL, abs=0)
    assert ls.rss == pytest.approx(NORRIS_RSS, rel=CERTIFIED_RTOL, abs=0)


def test_longley_certified_coefficients() -> None:
    X, y = load("longley")
    assert X.shape == (16, 6)
    ls = least_squares(X, y)
    np.testing.assert_allclose([ls.bias, *ls.weight], LONGLEY_B, rtol=CERTIFIED_RTOL)
    assert ls.rss == pytest.approx(LONGLEY_RSS, rel=CERTIFIED_RTOL, abs=0)


def test_longley_certified_coefficients_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = load("longley")
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", 3)
    ls = least_squares(X, y)
    np.testing.assert_allclose([ls.bias, *ls.weight], LONGLEY_B, rtol=CERTIFIED_RTOL)


# -- fit metrics ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 100), seed=st.integers(0, 2**32 - 1))
def test_fit_metrics_match_hand_formulas(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n) * 3 + 1
    predicted = y + rng.normal(size=n)
    fit = fit_metrics(y, predicted)
    residual = y - predicted
    mse = sum(r * r for r in residual) / n
    assert fit.mse == pytest.approx(mse, rel=1e-12, abs=0)
    assert fit.rmse == pytest.approx(mse**0.5, rel=1e-12, abs=0)
    assert fit.mae == pytest.approx(sum(abs(r) for r in residual) / n, rel=1e-12, abs=0)
    mean = sum(y) / n
    r2 = 1 - sum(r * r for r in residual) / sum((v - mean) ** 2 for v in y)
    assert fit.r2 == pytest.approx(r2, rel=1e-10, abs=1e-12)
    assert fit.to_dict() == {"mse": fit.mse, "rmse": fit.rmse, "mae": fit.mae, "r2": fit.r2}


def test_fit_metrics_small_example() -> None:
    fit = fit_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.0]))
    # residuals -0.5, 0, 1, 0; ss_tot = 5
    assert fit.mse == pytest.approx(1.25 / 4, rel=1e-15, abs=0)
    assert fit.rmse == pytest.approx((1.25 / 4) ** 0.5, rel=1e-15, abs=0)
    assert fit.mae == pytest.approx(1.5 / 4, rel=1e-15, abs=0)
    assert fit.r2 == pytest.approx(1 - 1.25 / 5, rel=1e-15, abs=0)


def test_fit_metrics_perfect_fit() -> None:
    y = np.array([1.0, -2.0, 5.0])
    fit = fit_metrics(y, y.copy())
    assert (fit.mse, fit.rmse, fit.mae, fit.r2) == (0.0, 0.0, 0.0, 1.0)


def test_fit_metrics_r2_is_none_for_constant_target() -> None:
    fit = fit_metrics(np.full(5, 2.0), np.array([1.0, 2.0, 3.0, 2.0, 2.0]))
    assert fit.r2 is None
    assert fit.mse == pytest.approx(2.0 / 5, rel=1e-15, abs=0)
    assert fit.to_dict()["r2"] is None


def test_fit_metrics_computes_in_float64_and_accepts_columns() -> None:
    y = np.array([1e6, 1e6 + 1, 1e6 + 2], dtype=np.float32)  # exactly representable
    predicted = np.array([1e6, 1e6 + 1, 1e6 + 4], dtype=np.float32).reshape(-1, 1)
    fit = fit_metrics(y, predicted)
    assert fit.mse == pytest.approx(4 / 3, rel=1e-15, abs=0)
    assert fit.mae == pytest.approx(2 / 3, rel=1e-15, abs=0)
    assert fit.r2 == pytest.approx(1 - 4 / 2, rel=1e-15, abs=0)
    assert isinstance(fit.mse, float) and isinstance(fit.r2, float)


@pytest.mark.parametrize(
    ("mse", "ls_mse", "gap"),
    [(1.1, 1.0, 0.1), (1.0, 1.0, 0.0), (3.0, 0.5, 5.0), (0.99, 1.0, -0.01)],
)
def test_optimality_gap(mse: float, ls_mse: float, gap: float) -> None:
    assert optimality_gap(mse, ls_mse, 4.0) == pytest.approx(gap, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("ls_mse", [0.0, -1e-30, 1e-32, 3.9e-24])
def test_optimality_gap_is_none_for_an_exact_fit(ls_mse: float) -> None:
    # residuals at float64 rounding level of y (mean square 4) are an exact fit
    assert optimality_gap(0.5, ls_mse, 4.0) is None
    assert optimality_gap(0.5, 1e-20, 4.0) is not None


# -- the normal-equations route for large, well-conditioned data ------------------------------


def _large(n: int, d: int, *, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d) + rng.uniform(-50, 50, d)
    return X, X @ rng.normal(size=d) - 7.0 + noise * rng.normal(size=n)


@pytest.mark.parametrize(("n", "d"), [(70_000, 16), (600_000, 1)])
def test_large_well_conditioned_data_takes_the_normal_equations(n: int, d: int) -> None:
    """Above NORMAL_EQUATIONS_MIN_VALUES values, well conditioned: the Cholesky route, with
    lstsq's answer to 1e-10."""
    X, y = _large(n, d, seed=d)
    ls = least_squares(X, y)
    assert ls.method == "cholesky"
    weight, bias, rss = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.weight, weight, rtol=1e-10)
    assert ls.bias == pytest.approx(bias, rel=1e-10)
    assert ls.rss == pytest.approx(rss, rel=1e-10)
    assert ls.tss == pytest.approx(float(np.sum((y - y.mean()) ** 2)), rel=1e-12)
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(ls.r.T @ ls.r, Xc.T @ Xc, rtol=1e-10)


@pytest.mark.parametrize("case", ["small", "collinear", "exact", "constant column"])
def test_the_tsqr_keeps_what_the_normal_equations_would_get_wrong(case: str) -> None:
    """Small data, a condition number beyond 100 (cond^2 > 1e4), a near-exact fit or a
    constant column go through the TSQR and still match lstsq to 1e-10."""
    X, y = _large(70_000, 4, seed=5)
    if case == "small":
        X, y = X[:1000], y[:1000]
    elif case == "collinear":
        X[:, 1] = X[:, 0] + 1e-3 * np.random.default_rng(6).normal(size=len(y))
    elif case == "exact":
        y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 4.0 + 1e-6 * np.sin(np.arange(len(y)))
    else:
        X[:, 2] = 12.5
    ls = least_squares(X, y)
    assert ls.method == "tsqr"
    if case == "constant column":
        assert ls.rank == 3 and ls.weight[2] == 0.0
        keep = [0, 1, 3]
        weight, bias, rss = lstsq_with_intercept(X[:, keep], y)
        np.testing.assert_allclose(ls.weight[keep], weight, rtol=1e-10)
    else:
        weight, bias, rss = lstsq_with_intercept(X, y)
        np.testing.assert_allclose(ls.weight, weight, rtol=1e-9)
    assert ls.bias == pytest.approx(bias, rel=1e-9)
    assert ls.rss == pytest.approx(rss, rel=1e-8)


def test_the_tsqr_of_wide_data_pairs_the_same_rows() -> None:
    """A near-exact fit (so the TSQR) of data wide enough that a chunk of X has fewer rows
    than a chunk of y alone would: each row of X must meet its own y."""
    rng = np.random.default_rng(12)
    n, d = 60_000, 20
    assert regression.data.chunk_rows(d) < min(n, regression.data.chunk_rows(1))
    X = rng.normal(size=(n, d))
    y = X @ np.linspace(-1.0, 1.0, d) + 3.0 + 1e-7 * rng.normal(size=n)
    ls = least_squares(X, y)
    assert ls.method == "tsqr"
    weight, bias, rss = lstsq_with_intercept(X, y)
    np.testing.assert_allclose(ls.weight, weight, rtol=1e-9, atol=1e-12)
    assert ls.bias == pytest.approx(bias, rel=1e-9)
    assert ls.rss == pytest.approx(rss, rel=1e-6)


def test_normal_equations_limits_are_what_the_docstring_says() -> None:
    X, y = _large(300_000, 3, seed=8)  # 1.2e6 values: at least NORMAL_EQUATIONS_MIN_VALUES
    sums = regression.data.moments(X, y)
    assert regression.metrics.normal_equations_factor(sums) is not None
    assert (
        regression.metrics.normal_equations_factor(regression.data.moments(X[:100], y[:100]))
        is None
    )


def test_linear_fits_equal_one_linear_fit_each() -> None:
    X, y = _large(5000, 3, seed=9)
    params = [(np.array([1.0, 2.0, 3.0]), 0.5), (np.zeros(3), -1.0)]
    seen: list[int] = []
    fits = regression.metrics.linear_fits(X, y, params, each=lambda c, _: seen.append(len(c)))
    assert sum(seen) == len(y)
    for fit, (weight, bias) in zip(fits, params, strict=True):
        single = regression.metrics.linear_fit(X, y, weight, bias)
        assert fit.mse == pytest.approx(single.mse, rel=1e-13)
        assert fit.mae == pytest.approx(single.mae, rel=1e-13)
        assert fit.r2 == pytest.approx(single.r2, rel=1e-13)
        direct = fit_metrics(y, X @ weight + bias)
        assert fit.mse == pytest.approx(direct.mse, rel=1e-12)
