"""Goodness of fit, and the float64 least-squares reference every run is judged against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import chunks, column_stats, first_row
from .distributed import SINGLE, World


@dataclass(frozen=True)
class Fit:
    """How well predictions match the target: mse, rmse, mae and r2 (None for a constant target)."""

    mse: float
    rmse: float
    mae: float
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
    ``Xc.T @ Xc == r.T @ r`` without ever forming that Gram matrix in finite precision.
    """

    weight: np.ndarray
    bias: float
    rss: float  # residual sum of squares
    tss: float  # total sum of squares of y about its mean
    samples: int
    x_mean: np.ndarray
    y_mean: float
    r: np.ndarray
    rank: int

    @property
    def mse(self) -> float:
        return self.rss / self.samples

    def predict(self, X: np.ndarray) -> np.ndarray:
        return linear_predict(X, self.weight, self.bias)


def least_squares(
    X: np.ndarray, y: np.ndarray, x_mean: np.ndarray | None = None, world: World = SINGLE
) -> LeastSquares:
    """Solve in float64 by a streamed QR factorization of the centered data (TSQR).

    Each chunk of [X - mean(X), y - mean(y)] is stacked under the running triangular factor and
    refactored, so memory stays at one chunk and the accuracy is that of a Householder QR
    (NIST StRD certified digits), not that of the normal equations. Rank-deficient designs
    (a constant or duplicated column) get the minimum-norm weights. Under torchrun each rank
    factors its shard and the ranks' triangular factors are stacked and factored once more
    (the same TSQR step), so the result is that of the whole data.
    """
    local_n, d = X.shape
    n = int(world.sum(local_n))
    if x_mean is None:
        x_mean = column_stats(X, world).mean  # exact for a constant column
    y_mean = float(column_stats(np.asarray(y).reshape(-1, 1), world).mean[0])
    factor = np.zeros((0, d + 1))
    tss = 0.0
    for (_, x_rows), (_, y_rows) in zip(chunks(X), chunks(y), strict=True):
        block = np.empty((len(x_rows), d + 1))
        block[:, :d] = x_rows - x_mean
        block[:, d] = y_rows - y_mean
        tss += float(block[:, d] @ block[:, d])
        factor = np.asarray(np.linalg.qr(np.vstack([factor, block]), mode="r"))
    factor = np.vstack([factor, np.zeros((d + 1 - factor.shape[0], d + 1))])  # n <= d
    if world.distributed:
        factor = np.asarray(np.linalg.qr(np.vstack(world.gather(factor)), mode="r"))
        tss = float(world.sum(tss))
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
        rank=rank,
    )


def linear_fit(
    X: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float, world: World = SINGLE
) -> Fit:
    """The metrics of y ~ X @ weight + bias in float64, a chunk at a time (no N-sized
    temporaries, so memory-mapped data stays on disk), over the rows of every rank."""
    shift = float(first_row(np.asarray(y).reshape(-1, 1), world)[0])
    sq = ab = ys = ys2 = 0.0
    for (_, chunk), (_, y_chunk) in zip(chunks(X), chunks(y), strict=True):
        residual = y_chunk - (chunk @ weight + bias)
        sq += float(residual @ residual)
        ab += float(np.abs(residual).sum())
        centered = y_chunk - shift
        ys += float(centered.sum())
        ys2 += float(centered @ centered)
    n, sq, ab, ys, ys2 = (float(v) for v in world.sum(np.array([X.shape[0], sq, ab, ys, ys2])))
    mse = sq / n
    ss_tot = ys2 - ys * ys / n
    r2 = 1.0 - sq / ss_tot if ss_tot > 0 else None  # shifted sums: exactly 0 if y is constant
    return Fit(mse=mse, rmse=float(np.sqrt(mse)), mae=ab / n, r2=r2)


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
