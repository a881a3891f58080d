"""Where the training loop gets its rows: slices of a tensor already on the device, or
chunks streamed from a (memory-mapped) NumPy array, standardized on the way."""

from __future__ import annotations

import numpy as np
import torch

from .data import release
from .model import Scaling


class TensorSource:
    """The training data as one (N, D) tensor and an (N, 1) target on the device: rows are
    contiguous slices (views), never copies."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.device, self.dtype = X.device, X.dtype

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[start:stop], self.y[start:stop]


class StreamSource:
    """Rows read from NumPy arrays (a memory-mapped .npy stays on disk) a block at a time:
    standardized in float64, cast to the training dtype and copied to the device (through
    pinned memory, without blocking, on CUDA). Memory stays at a few blocks whatever N is."""

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scaling: Scaling,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.X, self.y, self.scaling = X, y, scaling
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.device, self.dtype = device, dtype
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        self.pin = device.type == "cuda"

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (np.asarray(self.X[start:stop], dtype=np.float64) - self.scaling.mean) / (
            self.scaling.scale
        )
        y = np.array(self.y[start:stop], dtype=self.np_dtype).reshape(-1, 1)
        release(self.X, start, stop)  # the file's pages go back: memory stays at one block
        release(self.y, start, stop)
        return self._to_device(x.astype(self.np_dtype)), self._to_device(y)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


Source = TensorSource | StreamSource


def max_row_norm2(source: Source, chunk: int = 1 << 16) -> float:
    """The largest squared norm of a training row, for the mini-batch step size."""
    best = 0.0
    for start in range(0, source.n, chunk):
        X, _ = source.rows(start, min(start + chunk, source.n))
        best = max(best, float((X.double() ** 2).sum(dim=1).max()))
    return best
