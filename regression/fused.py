"""A CPU full-batch epoch in one read of the rows: for nn.Linear's residuals
r = X @ weight + bias - y on float32 data, the summed MSELoss sum(r^2), and X.T r and sum(r)
(half its gradient), all from each row while it is in registers.

Through torch, a float32 epoch on (N, 16) data is two matrix-vector products per cache-sized
slice: the first reads the slice from memory, the second from the cache, and MKL's ``sgemv``
spends about 1.7 ns a row on 16 columns. Fused, each row is read once, and the epoch costs
about what reading its memory costs (benchmarks/RESULTS.md).

The loops are C (``regression/_fused.c``), built with the package by setup.py and called
through ctypes, which lets go of the GIL for the call: one call runs on each core. Their sums
are float32 in vector lanes over blocks of 512 rows, then float64 over the blocks, so the
error does not grow with N. The build is optional: where it is missing, ``available()`` is
False and ``regression.train`` computes the same sums through torch.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path

import numpy as np

_POINTER = ctypes.c_void_p


@functools.cache
def _function() -> ctypes._NamedFuncPointer | None:
    """linreg_fused_sums from the extension built beside this file, or None where it was not
    built."""
    here = Path(__file__).parent
    paths = [here / f"_fused{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    path = next((path for path in paths if path.is_file()), None)
    if path is None:
        return None
    try:
        library = ctypes.CDLL(str(path))
    except OSError:  # a build for another platform, or a broken file: torch does the sums
        return None
    function = library.linreg_fused_sums
    function.argtypes = [
        _POINTER,  # X: n x d float32, C order
        _POINTER,  # y: n float32
        ctypes.c_int64,  # n
        ctypes.c_int64,  # d
        _POINTER,  # weight: d float32
        ctypes.c_float,  # bias
        _POINTER,  # out: d + 2 float64, added to
    ]
    function.restype = ctypes.c_int  # 0, or -1 for a width it does not take
    return function


def available() -> bool:
    """Whether the fused loops were built here."""
    return _function() is not None


# The widest rows the loops take (their accumulators live on the stack); _fused.c's
# MAX_FEATURES, checked against it by the tests
MAX_FEATURES = 4096


def sums(X: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """[X.T r, sum(r^2), sum(r)] in float64 for r = X @ weight + bias - y, where X is a
    C-contiguous (n, d) float32 array (1 <= d <= MAX_FEATURES) and y, weight contiguous
    float32 vectors of n and d."""
    function = _function()
    if function is None:
        raise RuntimeError("the fused loops (regression/_fused.c) were not built")
    n, d = X.shape
    if not (
        X.dtype == y.dtype == weight.dtype == np.float32
        and X.flags.c_contiguous
        and y.flags.c_contiguous
        and weight.flags.c_contiguous
        and y.shape == (n,)
        and weight.shape == (d,)
        and 1 <= d <= MAX_FEATURES
    ):
        raise ValueError(
            "sums() takes C-contiguous float32 X (n, d), y (n,) and weight (d,), "
            f"1 <= d <= {MAX_FEATURES}"
        )
    out = np.zeros(d + 2)
    if n:
        status = function(
            X.ctypes.data, y.ctypes.data, n, d, weight.ctypes.data, bias, out.ctypes.data
        )
        if status:
            raise ValueError(f"the fused loops do not take {d} features")
    return out
