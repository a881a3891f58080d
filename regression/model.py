"""The model: ``torch.nn.Linear`` on (optionally) standardized features, and its parameters
in the data's own units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import chunk_rows, release
from .threads import scratch


@dataclass(frozen=True)
class Scaling:
    """The affine map from data units to training units: z = (x - mean) / scale."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def identity(cls, features: int) -> Scaling:
        return cls(mean=np.zeros(features), scale=np.ones(features))

    def to_data_units(self, weight: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
        """Parameters fitted on z = (x - mean) / scale, as weight and bias acting on x."""
        w = np.asarray(weight, dtype=np.float64) / self.scale
        return w, float(bias) - float(w @ self.mean)


class ZeroLinear(torch.nn.Linear):
    """``nn.Linear`` whose parameters start at zero: the loss is convex, so the start only
    needs to be deterministic, and zeros are that without touching any random state (nor
    paying for nn.Linear's Kaiming draw, a third of its construction)."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()


def build_model(features: int, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Linear:
    """A zero-initialized ``nn.Linear(features, 1)``."""
    return ZeroLinear(features, 1, device=device, dtype=dtype)


def to_training_tensor(
    X: np.ndarray, scaling: Scaling, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The one copy of the features that training uses: standardized in float64 chunk by
    chunk (by torch, on every core), stored in ``dtype`` on ``device``."""
    n, d = X.shape
    out = torch.empty((n, d), dtype=dtype, device=device)
    mean, scale = torch.from_numpy(scaling.mean), torch.from_numpy(scaling.scale)
    size = chunk_rows(d)
    for start in range(0, n, size):
        stop = min(start + size, n)
        rows = X[start:stop]
        if rows.dtype != np.float64 or not rows.flags.writeable or min(rows.strides) < 0:
            rows = np.array(rows, dtype=np.float64)  # what torch.from_numpy can take
        release(X, start, stop)
        if out.dtype == torch.float64 and out.device.type == "cpu":
            torch.sub(torch.from_numpy(rows), mean, out=out[start:stop]).div_(scale)
        else:  # standardized in float64 in this thread's scratch buffer, then cast
            standardized = torch.from_numpy(scratch(rows.size).reshape(rows.shape))
            torch.sub(torch.from_numpy(rows), mean, out=standardized).div_(scale)
            out[start:stop] = standardized
    return out


NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float64: np.dtype(np.float64),
    torch.float32: np.dtype(np.float32),
}


def target_tensor(y: np.ndarray, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The target as an (N, 1) column, matching ``nn.Linear``'s output shape."""
    np_dtype = NUMPY_DTYPES.get(dtype) or torch.empty((), dtype=dtype).numpy().dtype
    column = np.ascontiguousarray(y, dtype=np_dtype)
    if not column.flags.writeable:  # a memory-mapped file: torch wants memory it may write
        column = column.copy()
    tensor = torch.from_numpy(column).reshape(-1, 1)
    return tensor if device.type == "cpu" else tensor.to(device)
