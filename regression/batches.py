"""Where the training loop gets its rows: slices of a tensor already on the device, rows of
the data standardized as they are read (float64 on the CPU, for the first epochs), or chunks
streamed from a (memory-mapped) NumPy array, standardized on the way."""

from __future__ import annotations

import numpy as np
import torch

from .data import release
from .model import Scaling, to_training_tensor
from .threads import scratch


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
        x = self.scaling.apply(self.X[start:stop])
        y = np.array(self.y[start:stop], dtype=self.np_dtype).reshape(-1, 1)
        release(self.X, start, stop)  # the file's pages go back: memory stays at one block
        release(self.y, start, stop)
        return self._to_device(x.astype(self.np_dtype)), self._to_device(y)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)


class StandardizingSource:
    """The rows of float64 data in memory, standardized as they are read, each read into the
    reading thread's scratch buffer (valid until that thread's next read): the same values,
    bit for bit, as the rows of the training tensor ``materialize`` makes.

    A float64 CPU full batch that train() takes over the data (without a FullBatchLoss,
    which needs no rows at all) starts on this instead of a standardized copy of the data: a
    fresh copy costs a pass that writes new memory (page faults included: 40 ms for 1e6 x 16
    here), where standardizing each cached slice again costs about 1.2 ms an epoch. The
    first epochs, all a well-conditioned fit needs, go without the copy; the loop makes it
    after MATERIALIZE_AFTER epochs, when the slices' standardizing has cost about half of it.
    """

    MATERIALIZE_AFTER = 16  # epochs

    def __init__(self, X: np.ndarray, y: torch.Tensor, scaling: Scaling) -> None:
        self.data = X
        self.X, self.y, self.scaling = torch.from_numpy(X), y, scaling
        self.mean, self.scale = torch.from_numpy(scaling.mean), torch.from_numpy(scaling.scale)
        self.transform = None if scaling.transform is None else torch.from_numpy(scaling.transform)
        self.n, self.d = int(X.shape[0]), int(X.shape[1])
        self.device, self.dtype = torch.device("cpu"), torch.float64

    @staticmethod
    def accepts(X: np.ndarray) -> bool:
        """Whether X can be read in place: float64, C-contiguous, writable, in memory."""
        return bool(
            X.dtype == np.float64
            and X.flags.c_contiguous
            and X.flags.writeable
            and not memory_mapped(X)
        )

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        into = torch.from_numpy(scratch((stop - start) * self.d)).view(stop - start, self.d)
        torch.sub(self.X[start:stop], self.mean, out=into).div_(self.scale)
        if self.transform is not None:  # whitened (a new tensor: rare, see pipeline._source)
            return into @ self.transform, self.y[start:stop]
        return into, self.y[start:stop]

    def materialize(self) -> TensorSource:
        """The standardized copy, as the training tensor."""
        copy = to_training_tensor(self.data, self.scaling, device=self.device, dtype=self.dtype)
        return TensorSource(copy, self.y)


def memory_mapped(array: np.ndarray) -> bool:
    """Whether the array is (a view of) a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base  # type: ignore[assignment]
    return False


Source = TensorSource | StandardizingSource | StreamSource


def max_row_norm2(source: Source, chunk: int = 1 << 16) -> float:
    """The largest squared norm of a training row, for the mini-batch step size."""
    best = 0.0
    for start in range(0, source.n, chunk):
        X, _ = source.rows(start, min(start + chunk, source.n))
        best = max(best, float((X.double() ** 2).sum(dim=1).max()))
    return best
