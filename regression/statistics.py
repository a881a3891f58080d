"""Inference for the least-squares solution: standard errors, t and p values, intervals, the
likelihood criteria, and the collinearity and serial-correlation diagnostics.

Everything is computed in float64 from sufficient statistics: the TSQR factor of the centered
design, the means and the sums of squares (``LeastSquares``), plus one streamed pass over the
residuals in row order for Durbin-Watson. Nothing needs the whole data set in memory, and the
per-shard pieces combine (``ResidualRun.concat``), so the same numbers come out of streamed
and distributed runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .artifacts import IntervalBasis
from .data import chunks, paired_chunks
from .metrics import LeastSquares, matmul
from .threads import scratch

# Above this condition number of the standardized features (a scale-free measure), the run
# warns of collinearity: Belsley, Kuh and Welsch's rule of thumb for condition indices.
COLLINEARITY_THRESHOLD = 30.0
# A fit is exact when rss <= this * sum(y^2), the residuals at the rounding level of y (as for
# the optimality gap); the likelihood criteria are then undefined.
EXACT_FIT = (1e-12) ** 2


@dataclass(frozen=True)
class Coefficient:
    name: str
    estimate: float
    std_err: float | None
    t: float | None
    p: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Trained:
    """How far the trained parameters are from the least-squares solution the statistics
    describe."""

    converged: bool
    optimality_gap: float | None  # (trained mse - least-squares mse) / least-squares mse
    max_rel_diff: float | None  # max |trained - least squares| / |least squares|, all params
    max_diff_std_errs: float | None  # max |trained - least squares| / std err, all params

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class Statistics:
    """The classical OLS summary. Undefined values (no residual degrees of freedom, a
    rank-deficient design, a perfect fit) are None."""

    coefficients: list[Coefficient]
    r2: float | None
    adj_r2: float | None
    residual_std_err: float | None
    df_resid: int
    f_stat: float | None
    f_pvalue: float | None
    log_likelihood: float | None
    aic: float | None
    bic: float | None
    condition_number: float | None  # of [1, X] in the data's units (statsmodels' number)
    condition_number_standardized: float | None  # of the standardized features
    durbin_watson: float | None
    confidence: float
    trained: Trained | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": [vars(c) for c in self.coefficients],
            "r2": self.r2,
            "adj_r2": self.adj_r2,
            "residual_std_err": self.residual_std_err,
            "df_resid": self.df_resid,
            "f_stat": self.f_stat,
            "f_pvalue": self.f_pvalue,
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "bic": self.bic,
            "condition_number": self.condition_number,
            "condition_number_standardized": self.condition_number_standardized,
            "durbin_watson": self.durbin_watson,
            "confidence": self.confidence,
            "trained": self.trained.to_dict() if self.trained is not None else None,
        }


def ols_statistics(
    ls: LeastSquares,
    feature_names: tuple[str, ...],
    tss: float,
    confidence: float = 0.95,
    *,
    durbin_watson: float | None = None,
) -> Statistics:
    """Statistics of ``ls`` (intercept first). ``tss`` is the total sum of squares of y;
    ``durbin_watson`` comes from a pass over the residuals (``residual_run``).

    Degrees of freedom follow R's ``lm`` and statsmodels: the model has ``rank`` weights
    (a constant or duplicated feature column does not count) and the intercept.
    """
    from scipy import special  # imported here: only runs that report statistics pay for it

    n, d = ls.samples, ls.weight.shape[0]
    df_model = ls.rank
    df_resid = n - df_model - 1
    names = ("intercept", *feature_names)
    estimates = [ls.bias, *map(float, ls.weight)]
    std_errs: list[float | None] = [None] * (d + 1)
    sigma2 = ls.rss / df_resid if df_resid > 0 else None
    if sigma2 is not None and ls.rank == d:
        r_inv = np.linalg.solve(ls.r, np.eye(d)) if d else np.zeros((0, 0))
        cov_w = sigma2 * (r_inv @ r_inv.T)  # sigma^2 (Xc'Xc)^-1
        var_b = sigma2 / n + float(ls.x_mean @ cov_w @ ls.x_mean)
        std_errs = [math.sqrt(var_b), *map(math.sqrt, np.diag(cov_w))]
    quantile = float(special.stdtrit(df_resid, 0.5 + confidence / 2)) if df_resid > 0 else None
    coefficients = []
    for name, estimate, se in zip(names, estimates, std_errs, strict=True):
        t = estimate / se if se else None
        p = float(2 * special.stdtr(df_resid, -abs(t))) if t is not None else None
        half = quantile * se if se is not None and quantile is not None else None
        coefficients.append(
            Coefficient(
                name=name,
                estimate=estimate,
                std_err=se,
                t=t,
                p=p,
                ci_low=estimate - half if half is not None else None,
                ci_high=estimate + half if half is not None else None,
            )
        )
    r2 = 1.0 - ls.rss / tss if tss > 0 else None
    adj_r2 = 1.0 - (1.0 - r2) * (n - 1) / df_resid if r2 is not None and df_resid > 0 else None
    f_stat = f_pvalue = None
    if df_model > 0 and sigma2 and sigma2 > 0 and tss > 0:
        f_stat = ((tss - ls.rss) / df_model) / sigma2
        f_pvalue = float(special.fdtrc(df_model, df_resid, f_stat))
    log_likelihood = aic = bic = None
    exact = ls.rss <= EXACT_FIT * (ls.tss + n * ls.y_mean**2)  # residuals at rounding level
    if not exact:
        # the Gaussian log-likelihood at the maximum-likelihood variance rss / n
        log_likelihood = -n / 2 * (math.log(2 * math.pi) + math.log(ls.rss / n) + 1)
        k = df_model + 1  # the weights and the intercept (statsmodels counts the same)
        aic = -2 * log_likelihood + 2 * k
        bic = -2 * log_likelihood + math.log(n) * k
    raw, standardized = condition_numbers(ls)
    return Statistics(
        coefficients=coefficients,
        r2=r2,
        adj_r2=adj_r2,
        residual_std_err=math.sqrt(sigma2) if sigma2 is not None else None,
        df_resid=df_resid,
        f_stat=f_stat,
        f_pvalue=f_pvalue,
        log_likelihood=log_likelihood,
        aic=aic,
        bic=bic,
        condition_number=raw,
        condition_number_standardized=standardized,
        durbin_watson=None if exact else durbin_watson,  # the order of rounding errors
        confidence=confidence,
    )


def trained_distance(
    statistics: Statistics,
    weight: np.ndarray,
    bias: float,
    *,
    optimality_gap: float | None,
    converged: bool,
) -> Trained:
    """How far ``weight`` and ``bias`` (the trained model, data units) are from the
    least-squares estimates: relatively, and in standard errors (the sampling uncertainty of
    the estimates, so a value well below 1 means the training error does not matter)."""
    estimates = np.array([c.estimate for c in statistics.coefficients])
    diff = np.abs(np.array([bias, *weight], dtype=np.float64) - estimates)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(estimates))
    max_rel = float(rel.max(initial=0.0))
    std_errs = [c.std_err for c in statistics.coefficients]
    max_se = None
    if all(se is not None and se > 0 for se in std_errs):
        max_se = float((diff / np.array(std_errs, dtype=np.float64)).max(initial=0.0))
    return Trained(
        converged=converged,
        optimality_gap=optimality_gap,
        max_rel_diff=max_rel if math.isfinite(max_rel) else None,
        max_diff_std_errs=max_se,
    )


# -- collinearity ----------------------------------------------------------------------------


def condition_numbers(ls: LeastSquares) -> tuple[float | None, float | None]:
    """The condition number of the design [1, X] in the data's units, and that of the
    standardized features (constant columns left out); None when infinite (linearly dependent
    columns).

    The first is statsmodels' ``condition_number``: the ratio of the extreme singular values
    of [1, X], the square root of that of the eigenvalues of its Gram matrix. It comes from
    the TSQR factor without forming the Gram matrix: with Xc = Q R and e = 1 / sqrt(n),
    [1, X] = [e, Q] @ [[sqrt(n), sqrt(n) m'], [0, R]], and [e, Q] has orthonormal columns,
    so [1, X] has the singular values of that small triangle (computed to float64 accuracy
    even for Longley's 4.9e9). It depends on the units and offsets of the features; the
    second, the condition number of their correlation matrix's square root, does not.
    """
    n, d = ls.samples, ls.weight.shape[0]
    raw = None
    if ls.rank == d:
        triangle = np.zeros((d + 1, d + 1))
        triangle[0, 0] = math.sqrt(n)
        triangle[0, 1:] = math.sqrt(n) * ls.x_mean
        triangle[1:, 1:] = ls.r
        raw = _condition(np.linalg.svd(triangle, compute_uv=False), n)
    return raw, _standardized_condition(ls)


def _standardized_condition(ls: LeastSquares) -> float | None:
    """The second of ``condition_numbers`` (also None without a varying column)."""
    norms = np.sqrt(np.sum(ls.r**2, axis=0))  # sqrt(n) times the standard deviations
    varying = norms > 0
    if not varying.any():
        return None
    if np.count_nonzero(varying) == 1:  # one column, scaled to norm 1: one singular value, 1
        return 1.0
    scaled = ls.r[:, varying] / norms[varying]
    return _condition(np.linalg.svd(scaled, compute_uv=False), ls.samples)


def _condition(singular_values: np.ndarray, n: int) -> float | None:
    largest, smallest = float(singular_values[0]), float(singular_values[-1])
    if smallest <= np.finfo(np.float64).eps * max(n, len(singular_values)) * largest:
        return None  # numerically singular: infinite
    return largest / smallest


def collinearity_warning(ls: LeastSquares) -> str | None:
    """A warning when the features are linearly dependent or nearly so (the condition number
    of the standardized features above ``COLLINEARITY_THRESHOLD``); constant columns have
    their own warning and are left out here."""
    if not (np.abs(ls.r) > 0).any():  # every column constant
        return None
    standardized = _standardized_condition(ls)
    if standardized is None:
        return (
            "the features are linearly dependent (a column is a combination of others): the "
            "least-squares weights are the minimum-norm solution and have no standard errors"
        )
    if standardized > COLLINEARITY_THRESHOLD:
        return (
            f"the features are nearly collinear (condition number of the standardized "
            f"features {standardized:.3g} > {COLLINEARITY_THRESHOLD:g}): their weights are "
            "unstable and have large standard errors"
        )
    return None


# -- serial correlation ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualRun:
    """Sums over consecutive least-squares residuals e_i (rows in order), enough to join
    neighbouring runs: chunks of a file, or the shards of distributed ranks in rank order.
    A run of no rows has NaN ends."""

    first: float  # e of the first row
    last: float  # e of the last row
    squares: float  # sum of e_i^2
    steps: float  # sum of (e_i - e_{i-1})^2 within the run

    @property
    def durbin_watson(self) -> float | None:
        """sum (e_i - e_{i-1})^2 / sum e_i^2: about 2 without serial correlation, towards 0
        with positive and towards 4 with negative correlation; None for zero residuals."""
        return self.steps / self.squares if self.squares > 0 else None

    def as_array(self) -> np.ndarray:
        return np.array([self.first, self.last, self.squares, self.steps])

    @classmethod
    def from_array(cls, values: np.ndarray) -> ResidualRun:
        first, last, squares, steps = map(float, values)
        return cls(first=first, last=last, squares=squares, steps=steps)

    @property
    def empty(self) -> bool:
        return math.isnan(self.first)

    @classmethod
    def concat(cls, runs: Sequence[ResidualRun]) -> ResidualRun:
        """The run of the rows of ``runs`` one after the other."""
        joined = cls(first=math.nan, last=math.nan, squares=0.0, steps=0.0)
        for run in runs:
            if run.empty:
                continue
            if joined.empty:
                joined = run
                continue
            joined = cls(
                first=joined.first,
                last=run.last,
                squares=joined.squares + run.squares,
                steps=joined.steps + run.steps + (run.first - joined.last) ** 2,
            )
        return joined


def residual_run(X: np.ndarray, y: np.ndarray, ls: LeastSquares) -> ResidualRun:
    """One streamed pass over the rows of X and y, in order, chunk by chunk (X may be
    memory-mapped)."""
    return ResidualRun.concat(
        [chunk_residual_run(chunk, y_rows, ls) for chunk, y_rows in paired_chunks(X, y)]
    )


def chunk_residual_run(chunk: np.ndarray, y_rows: np.ndarray, ls: LeastSquares) -> ResidualRun:
    """The run of one float64 chunk. The residuals are formed from centered data,
    (y - mean y) - (X - mean X) @ w, which keeps their digits when the intercept is large
    (Longley's is -3.5e6 for residuals of about 300); the temporaries are scratch buffers
    (see data.float64_rows)."""
    m = len(y_rows)
    centered = np.subtract(
        chunk, ls.x_mean, out=scratch(chunk.size, slot="run rows").reshape(chunk.shape)
    )
    e = np.subtract(y_rows, ls.y_mean, out=scratch(m, slot="run residuals"))
    e -= matmul(centered, ls.weight, out=scratch(m, slot="run product"))  # see metrics.matmul
    steps = np.subtract(e[1:], e[:-1], out=scratch(max(m - 1, 0), slot="run steps"))
    return ResidualRun(
        first=float(e[0]),
        last=float(e[-1]),
        squares=float(np.einsum("i,i->", e, e)),
        steps=float(np.einsum("i,i->", steps, steps)),
    )


# -- intervals of predictions -----------------------------------------------------------------


def interval_basis(ls: LeastSquares, confidence: float) -> IntervalBasis | None:
    """What a model file needs for the intervals of its predictions; None when they are
    undefined (no residual degrees of freedom, or linearly dependent features)."""
    d = ls.weight.shape[0]
    df_resid = ls.samples - ls.rank - 1
    if df_resid <= 0 or ls.rank < d:
        return None
    return IntervalBasis(
        r=np.asarray(ls.r, dtype=np.float64),
        x_mean=np.asarray(ls.x_mean, dtype=np.float64),
        sigma=math.sqrt(ls.rss / df_resid),
        samples=ls.samples,
        df_resid=df_resid,
        confidence=confidence,
    )


@dataclass(frozen=True)
class Intervals:
    """Intervals around given predictions, one per row."""

    confidence: float
    mean_lower: np.ndarray  # confidence interval of the mean response at x
    mean_upper: np.ndarray
    lower: np.ndarray  # prediction interval of a new observation at x
    upper: np.ndarray


def prediction_intervals(
    basis: IntervalBasis, X: np.ndarray, center: np.ndarray, confidence: float
) -> Intervals:
    """The least-squares fit's intervals at the rows of X, around ``center`` (the model's
    predictions): center -+ t * se with, for h = (x - m)' (Xc'Xc)^-1 (x - m),
    se_mean = sigma sqrt(1/n + h) and se_pred = sigma sqrt(1 + 1/n + h).

    h comes from a triangular solve with the TSQR factor (Xc'Xc = R'R, so h = |R^-T (x-m)|^2),
    chunk by chunk."""
    from scipy import linalg, special

    n = X.shape[0]
    leverage = np.empty(n)
    for start, block in chunks(X):
        chunk = block - basis.x_mean
        if basis.r.shape[0]:
            u = linalg.solve_triangular(basis.r, chunk.T, trans="T", lower=False)
            leverage[start : start + len(chunk)] = np.sum(u * u, axis=0)
        else:
            leverage[start : start + len(chunk)] = 0.0
    quantile = float(special.stdtrit(basis.df_resid, 0.5 + confidence / 2))
    inv_n = 1.0 / basis.samples
    half_mean = quantile * basis.sigma * np.sqrt(inv_n + leverage)
    half_pred = quantile * basis.sigma * np.sqrt(1.0 + inv_n + leverage)
    center = np.asarray(center, dtype=np.float64)
    return Intervals(
        confidence=confidence,
        mean_lower=center - half_mean,
        mean_upper=center + half_mean,
        lower=center - half_pred,
        upper=center + half_pred,
    )
