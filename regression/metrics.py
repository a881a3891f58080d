"""Goodness of fit, and the float64 least-squares reference every run is judged against."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .data import (
    Moments,
    chunk_rows,
    chunks,
    first_row,
    float64_rows,
    moments,
    paired_chunks,
    release,
)
from .distributed import SINGLE, World
from .threads import scratch


@dataclass(frozen=True)
class Fit:
    """How well predictions match the target: mse, rmse, mae and r2 (None for a constant
    target; mae None where only the rows' least-squares state is known, see FitState)."""

    mse: float
    rmse: float
    mae: float | None
    r2: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"mse": self.mse, "rmse": self.rmse, "mae": self.mae, "r2": self.r2}


def fit_metrics(y: np.ndarray, predicted: np.ndarray) -> Fit:
    """Metrics in float64, whatever the dtype of the inputs."""
    y64 = np.asarray(y, dtype=np.float64).reshape(-1)
    residual = y64 - np.asarray(predicted, dtype=np.float64).reshape(-1)
    mse = float(np.mean(residual**2))
    ss_tot = float(np.sum((y64 - y64.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / ss_tot if ss_tot > 0 else None
    return Fit(mse=mse, rmse=float(np.sqrt(mse)), mae=float(np.mean(np.abs(residual))), r2=r2)


@dataclass(frozen=True)
class LeastSquares:
    """The float64 least-squares solution of y ~ X @ weight + bias, with what inference needs.

    ``r`` is the upper-triangular factor of the centered design (Xc = Q @ r), so
    ``Xc.T @ Xc == r.T @ r`` without ever forming that Gram matrix in finite precision; the
    centered target is ``Q @ qty`` plus a part orthogonal to every column, of squared norm
    ``rss_tail``. Together they give the residual sum of squares of any weights:
    ``|Xc @ w - yc|^2 == |r @ w - qty|^2 + rss_tail``.
    """

    weight: np.ndarray
    bias: float
    rss: float  # residual sum of squares
    tss: float  # total sum of squares of y about its mean
    samples: int
    x_mean: np.ndarray
    y_mean: float
    r: np.ndarray
    qty: np.ndarray
    rss_tail: float
    rank: int
    method: str = "tsqr"  # "cholesky" (normal equations) or "tsqr"; see least_squares

    @property
    def mse(self) -> float:
        return self.rss / self.samples

    def predict(self, X: np.ndarray) -> np.ndarray:
        return linear_predict(X, self.weight, self.bias)


def least_squares(
    X: np.ndarray,
    y: np.ndarray,
    world: World = SINGLE,
    *,
    sums: Moments | None = None,
) -> LeastSquares:
    """Solve in float64, from the moments of [X, y] (``sums``, computed here if not given)
    when that is exact to float64 rounding, else by a streamed QR factorization (TSQR).

    The normal equations (the Cholesky factor of the centered Gram matrix) are used only
    for large, well-conditioned data that the model does not fit almost exactly
    (``normal_equations_factor``): there their error, about cond(X)^2 x 1e-16 in the
    weights and 1e-16 / (1 - R^2) in the residual sum of squares, stays below 1e-10, and
    they cost one BLAS-3 pass instead of a QR per chunk. Everything else (data sets of
    fewer than 2^16 values, NIST's certified ones included, constant or collinear columns,
    near-exact fits) gets the TSQR: each chunk of [X - mean(X), y - mean(y)] is stacked
    under the running triangular factor and refactored, so the accuracy is that of a
    Householder QR, not that of the normal equations. Rank-deficient designs get the
    minimum-norm weights. Under torchrun each rank factors its shard and the ranks' factors
    are stacked and factored once more, so the result is that of the whole data.
    """
    d = X.shape[1]
    if sums is None:
        sums = moments(X, y, world=world)
    n = sums.samples
    x_mean = sums.mean[:d]  # exact for a constant column
    y_mean = float(sums.mean[d])
    tss = float(sums.gram[d, d])
    factor = normal_equations_factor(sums)
    method = "cholesky"
    if factor is None:
        factor, method = _tsqr(X, y, x_mean, y_mean, world), "tsqr"
    return solve_factor(factor, n, x_mean, y_mean, tss, method)


def solve_factor(
    factor: np.ndarray, n: int, x_mean: np.ndarray, y_mean: float, tss: float, method: str
) -> LeastSquares:
    """The least squares of the rows whose centered [X, y] has the triangular ``factor``."""
    d = factor.shape[0] - 1
    r, z = factor[:d, :d], factor[:d, d]
    rss_tail = float(factor[d, d] ** 2)
    tiny = (
        np.finfo(np.float64).eps * max(d, n) * max(float(np.abs(np.diag(r)).max(initial=0)), 1e-300)
    )
    rank = int(np.sum(np.abs(np.diag(r)) > tiny))
    if rank == d:
        weight = np.linalg.solve(r, z) if d else np.zeros(0)
        rss = rss_tail
    else:
        weight, *_ = np.linalg.lstsq(r, z, rcond=None)
        rss = rss_tail + float(np.sum((r @ weight - z) ** 2))
    bias = y_mean - float(x_mean @ weight)
    return LeastSquares(
        weight=weight,
        bias=bias,
        rss=rss,
        tss=tss,
        samples=n,
        x_mean=x_mean,
        y_mean=y_mean,
        r=r,
        qty=z,
        rss_tail=rss_tail,
        rank=rank,
        method=method,
    )


@dataclass(frozen=True)
class FitState:
    """What an exact least-squares fit needs of its rows, and no more: their count, the
    means of [X, y] and the triangular factor of the centered [X, y] (its last column the
    target's part: ``qty`` and the residual tail). A model file carries it, so that
    ``linreg update`` folds new rows into the fit without reading the old ones."""

    samples: int
    mean: np.ndarray  # (D + 1,): the features' means, then the target's
    factor: np.ndarray  # (D + 1, D + 1), upper triangular

    @classmethod
    def of(cls, ls: LeastSquares) -> FitState:
        d = ls.weight.shape[0]
        factor = np.zeros((d + 1, d + 1))
        factor[:d, :d] = ls.r
        factor[:d, d] = ls.qty
        factor[d, d] = math.sqrt(ls.rss_tail)
        return cls(samples=ls.samples, mean=np.append(ls.x_mean, ls.y_mean), factor=factor)

    @property
    def features(self) -> int:
        return int(self.mean.shape[0]) - 1

    def merge(self, other: FitState) -> FitState:
        """The state of both row sets together: the two factors stacked over the row that
        moves their centres to the pooled mean (sqrt(n_a n_b / n) (mean_a - mean_b), as in
        Chan, Golub and LeVeque's update of the moments), factored again by Householder QR,
        so the merged factor is as accurate as a QR of all the rows."""
        if not other.samples or not self.samples:
            return self if not other.samples else other
        n = self.samples + other.samples
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.samples / n)
        shift = delta * math.sqrt(self.samples * other.samples / n)
        stacked = np.vstack([self.factor, other.factor, shift[None, :]])
        factor = np.asarray(np.linalg.qr(stacked, mode="r"))
        return FitState(samples=n, mean=mean, factor=factor)

    def least_squares(self) -> LeastSquares:
        d = self.features
        tss = float(self.factor[:, d] @ self.factor[:, d])
        return solve_factor(
            self.factor, self.samples, self.mean[:d], float(self.mean[d]), tss, "tsqr"
        )

    def moments(self) -> Moments:
        """The moments of the rows (the Gram matrix from the factor: F'F)."""
        return Moments(samples=self.samples, mean=self.mean, gram=self.factor.T @ self.factor)

    def fit(self, weight: np.ndarray, bias: float) -> Fit:
        """mse, rmse and r2 of y ~ X @ weight + bias over the rows, from the state alone
        (the mean absolute error needs the rows: None)."""
        d = self.features
        gap = self.factor[:, :d] @ weight - self.factor[:, d]
        offset = float(self.mean[:d] @ weight) + bias - float(self.mean[d])
        rss = float(gap @ gap) + self.samples * offset**2
        tss = float(self.factor[:, d] @ self.factor[:, d])
        mse = rss / self.samples
        r2 = 1.0 - rss / tss if tss > 0 else None
        return Fit(mse=mse, rmse=math.sqrt(mse), mae=None, r2=r2)


NORMAL_EQUATIONS_MIN_VALUES = 1 << 16  # N x (D + 1) below this, the TSQR costs < 0.5 ms
NORMAL_EQUATIONS_MAX_CONDITION = 1e4  # of the standardized Gram matrix (cond(X)^2)
NORMAL_EQUATIONS_MAX_R2 = 1.0 - 1e-6


def normal_equations_factor(sums: Moments) -> np.ndarray | None:
    """The Cholesky factor of the centered Gram matrix of [X, y] where it gives the least
    squares to float64 rounding (see ``least_squares``), else None."""
    d = sums.gram.shape[0] - 1
    if d < 1 or sums.samples * (d + 1) < NORMAL_EQUATIONS_MIN_VALUES:
        return None
    spread = np.diag(sums.gram)
    if not np.all(np.isfinite(sums.gram)) or np.any(spread <= 0):
        return None
    scale = np.sqrt(spread)
    correlation = sums.gram / np.outer(scale, scale)
    eigenvalues = np.linalg.eigvalsh(correlation[:d, :d])
    if eigenvalues[0] <= eigenvalues[-1] / NORMAL_EQUATIONS_MAX_CONDITION:
        return None
    factor = cholesky_factor(sums)
    if factor is None:
        return None
    r2 = 1.0 - float(factor[d, d] ** 2) / float(spread[d])
    return factor if r2 <= NORMAL_EQUATIONS_MAX_R2 else None


def cholesky_factor(sums: Moments) -> np.ndarray | None:
    """The upper-triangular R with R'R = the centered Gram matrix of [X, y] (what the TSQR
    computes, up to the signs of its rows); None if that matrix is not positive definite."""
    try:
        return np.asarray(np.linalg.cholesky(sums.gram).T)
    except np.linalg.LinAlgError:
        return None


def _tsqr(
    X: np.ndarray, y: np.ndarray, x_mean: np.ndarray, y_mean: float, world: World
) -> np.ndarray:
    """The (D + 1) x (D + 1) triangular factor of [X - x_mean, y - y_mean], streamed."""
    d = X.shape[1]
    factor = np.zeros((0, d + 1))
    for x_rows, y_rows in paired_chunks(X, y):
        block = np.empty((len(x_rows), d + 1))
        block[:, :d] = x_rows - x_mean
        block[:, d] = y_rows - y_mean
        factor = np.asarray(np.linalg.qr(np.vstack([factor, block]), mode="r"))
    factor = np.vstack([factor, np.zeros((d + 1 - factor.shape[0], d + 1))])  # n <= d
    if world.distributed:
        factor = np.asarray(np.linalg.qr(np.vstack(world.gather(factor)), mode="r"))
    return factor


def linear_fit(
    X: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float, world: World = SINGLE
) -> Fit:
    """The metrics of y ~ X @ weight + bias in float64, a chunk at a time (no N-sized
    temporaries, so memory-mapped data stays on disk), over the rows of every rank."""
    return linear_fits(X, y, [(weight, bias)], world)[0]


def linear_fits(
    X: np.ndarray,
    y: np.ndarray,
    params: Sequence[tuple[np.ndarray, float]],
    world: World = SINGLE,
    *,
    each: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> list[Fit]:
    """``linear_fit`` of several (weight, bias) pairs in one pass over the data. ``each``
    then gets every chunk of X and y, in order, as float64 (views of the data where it is
    float64 already: read only).

    The products go through torch (see ``matmul``), the sums through ``np.einsum``: none
    through NumPy's BLAS. Every temporary is a scratch buffer (see data.float64_rows)."""
    shift = float(first_row(np.asarray(y).reshape(-1, 1), world)[0])
    p = len(params)
    weights = np.column_stack([w for w, _ in params]).reshape(X.shape[1], p)
    biases = np.array([b for _, b in params], dtype=np.float64)[:, None]
    sq, ab = np.zeros(p), np.zeros(p)
    ys = ys2 = 0.0
    size = chunk_rows(X.shape[1])
    for start in range(0, X.shape[0], size):
        stop = min(start + size, X.shape[0])
        m = stop - start
        chunk = float64_rows(X, start, stop, "fit rows")
        y_chunk = float64_rows(y, start, stop, "fit target")
        # one row of residuals per parameter pair: the sums below then run along rows
        product = matmul(chunk, weights, out=scratch(m * p, slot="fit product").reshape(m, p))
        residual = scratch(p * m, slot="fit residual").reshape(p, m)
        np.add(product.T, biases, out=residual)
        np.subtract(y_chunk, residual, out=residual)
        sq += np.einsum("ij,ij->i", residual, residual)
        ab += np.abs(residual, out=residual).sum(axis=1)
        centered = np.subtract(y_chunk, shift, out=scratch(m, slot="fit centered"))
        ys += float(centered.sum())
        ys2 += float(np.einsum("i,i->", centered, centered))
        if each is not None:
            each(chunk, y_chunk)
        release(X, start, stop)
        release(y, start, stop)
    totals = world.sum(np.concatenate([[X.shape[0], ys, ys2], sq, ab]))
    n, ys, ys2 = (float(v) for v in totals[:3])
    ss_tot = ys2 - ys * ys / n  # shifted sums: exactly 0 if y is constant
    fits = []
    for total_sq, total_ab in zip(
        totals[3 : 3 + len(params)], totals[3 + len(params) :], strict=True
    ):
        mse = float(total_sq) / n
        r2 = 1.0 - float(total_sq) / ss_tot if ss_tot > 0 else None
        fits.append(Fit(mse=mse, rmse=float(np.sqrt(mse)), mae=float(total_ab) / n, r2=r2))
    return fits


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b for the passes of a training run, by torch's BLAS rather than NumPy's.

    NumPy's OpenBLAS runs a large product on threads that then spin, waiting for the next
    one, for about a tenth of a second: on a machine with few cores they take a core from
    whatever runs next (measured here: the moments pass of the next run, 30 -> 45 ms on two
    cores). torch's OpenMP threads stop spinning within a millisecond. torch is imported
    here, not above: ``linreg predict`` uses this module without it."""
    import torch

    left, right = (
        torch.from_numpy(np.ascontiguousarray(a)),
        torch.from_numpy(np.ascontiguousarray(b)),
    )
    if out is None:
        return (left @ right).numpy()
    torch.matmul(left, right, out=torch.from_numpy(out))
    return out


def linear_predict(X: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """X @ weight + bias in float64, a chunk at a time (X may be memory-mapped)."""
    out = np.empty(X.shape[0])
    for start, chunk in chunks(X):
        out[start : start + len(chunk)] = chunk @ weight + bias
    return out


def optimality_gap(mse: float, least_squares_mse: float, y_mean_square: float) -> float | None:
    """(mse - least-squares mse) / least-squares mse; None when the data fit exactly, that is
    when the least-squares residuals are at float64 rounding level of y (then the ratio would
    only measure rounding)."""
    if least_squares_mse <= (1e-12) ** 2 * y_mean_square:
        return None
    return (mse - least_squares_mse) / least_squares_mse
