"""A CPU full-batch epoch in one read of the rows (Numba): for nn.Linear's residuals
r = X @ weight + bias - y, the summed MSELoss sum(r^2), and X.T r and sum(r) (half its
gradient), all from each row while it is in registers.

Through torch, a float32 epoch on (N, 16) data is two matrix-vector products per cache-sized
slice: the first reads the slice from memory, the second from the cache, and MKL's ``sgemv``
spends about 1.7 ns a row on 16 columns. Fused, each row is read once, and the epoch costs
about the time its memory takes to read (benchmarks/RESULTS.md: 1e7 x 16 float32 went from
2.0-3.2 passes over X to about 1.2-1.8).

The sums are float32 over blocks of BLOCK_ROWS rows (in vector lanes: a few dozen additions
each), then float64 over the blocks, so their error does not grow with N.

The loops are compiled for the machine on first use (about 0.7 s) and cached beside this file,
or in Numba's user cache where that is read-only: later processes load them with Numba itself
(about 0.3 s), which is why only large data takes this path.

This module imports Numba; ``regression.train`` imports it only for float32 full batches of
at least ``FUSED_MIN_BYTES``, and goes through torch where Numba is missing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK_ROWS = 512  # rows summed in float32 before their sums are added in float64

# Both loops: nogil, as threads.CorePool runs one call per core; fastmath, which lets the
# sums be reassociated so that they vectorize; cached on disk.


@njit(
    "void(float32[:, ::1], float32[::1], float32[::1], float32, float64[::1])",
    nogil=True,
    fastmath=True,
    boundscheck=False,
    error_model="numpy",
    cache=True,
)
def _rows(
    X: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.float32, out: np.ndarray
) -> None:
    """out += [X.T r, sum(r^2), sum(r)] over the rows of X (any width), four rows at a time:
    the four residuals are independent, and each pass over a row's columns serves four."""
    d = X.shape[1]
    block = np.zeros(d, np.float32)
    loss_total = 0.0
    sum_total = 0.0
    for first in range(0, X.shape[0], BLOCK_ROWS):
        Xb = X[first : first + BLOCK_ROWS]
        yb = y[first : first + BLOCK_ROWS]
        n = Xb.shape[0]
        block[:] = 0
        l0 = l1 = l2 = l3 = np.float32(0.0)
        s0 = s1 = s2 = s3 = np.float32(0.0)
        fours = n - n % 4
        for i in range(0, fours, 4):
            r0 = bias - yb[i]
            r1 = bias - yb[i + 1]
            r2 = bias - yb[i + 2]
            r3 = bias - yb[i + 3]
            for j in range(d):
                w = weight[j]
                r0 += Xb[i, j] * w
                r1 += Xb[i + 1, j] * w
                r2 += Xb[i + 2, j] * w
                r3 += Xb[i + 3, j] * w
            l0 += r0 * r0
            l1 += r1 * r1
            l2 += r2 * r2
            l3 += r3 * r3
            s0 += r0
            s1 += r1
            s2 += r2
            s3 += r3
            for j in range(d):
                block[j] += (r0 * Xb[i, j] + r1 * Xb[i + 1, j]) + (
                    r2 * Xb[i + 2, j] + r3 * Xb[i + 3, j]
                )
        for i in range(fours, n):
            r = bias - yb[i]
            for j in range(d):
                r += Xb[i, j] * weight[j]
            l0 += r * r
            s0 += r
            for j in range(d):
                block[j] += r * Xb[i, j]
        for j in range(d):
            out[j] += block[j]
        loss_total += float((l0 + l1) + (l2 + l3))
        sum_total += float((s0 + s1) + (s2 + s3))
    out[d] += loss_total
    out[d + 1] += sum_total


@njit(
    "void(float32[::1], float32[::1], float32, float32, float64[::1])",
    nogil=True,
    fastmath=True,
    boundscheck=False,
    error_model="numpy",
    cache=True,
)
def _column(
    x: np.ndarray, y: np.ndarray, weight: np.float32, bias: np.float32, out: np.ndarray
) -> None:
    """The same for one feature column, vectorized along the rows."""
    grad_total = 0.0
    loss_total = 0.0
    sum_total = 0.0
    for first in range(0, x.shape[0], BLOCK_ROWS):
        xb = x[first : first + BLOCK_ROWS]
        yb = y[first : first + BLOCK_ROWS]
        g = np.float32(0.0)
        loss = np.float32(0.0)
        total = np.float32(0.0)
        for i in range(xb.shape[0]):
            r = xb[i] * weight + (bias - yb[i])
            g += r * xb[i]
            loss += r * r
            total += r
        grad_total += float(g)
        loss_total += float(loss)
        sum_total += float(total)
    out[0] += grad_total
    out[1] += loss_total
    out[2] += sum_total


def sums(X: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """[X.T r, sum(r^2), sum(r)] in float64 for r = X @ weight + bias - y, where X is a
    C-contiguous (n, d) float32 array and y, weight contiguous float32 vectors."""
    d = X.shape[1]
    out = np.zeros(d + 2)
    if d == 1:
        _column(X.reshape(-1), y, np.float32(weight[0]), np.float32(bias), out)
    else:
        _rows(X, y, weight, np.float32(bias), out)
    return out
