"""The model: ``torch.nn.Linear`` on (optionally) standardized features, and its parameters
in the data's own units."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .data import chunk_rows, release
from .threads import scratch


@dataclass(frozen=True)
class Scaling:
    """The affine map from data units to training units: z = (x - mean) / scale, and with a
    ``transform`` (whitening, see ``whitened``) u = z @ transform."""

    mean: np.ndarray
    scale: np.ndarray
    transform: np.ndarray | None = None  # (D, D)

    @classmethod
    def identity(cls, features: int) -> Scaling:
        return cls(mean=np.zeros(features), scale=np.ones(features))

    def whitened(self, factor: np.ndarray, samples: int) -> Scaling:
        """These standardized coordinates decorrelated: ``factor`` is the triangular factor
        of the centered data (Xc = Q @ factor), so the standardized rows have the factor
        R = factor / scale, and with R = U S V' the inputs u = z @ T, T = sqrt(N) V S^-1,
        have E[(u - mean u)(u - mean u)'] = I: the Hessian of the loss over them is 2 I (and
        2 for the intercept). Directions the data does not span (S at rounding level of its
        largest value: a constant or duplicated column) get a zero column of T, so their
        inputs are 0 and their weights stay 0."""
        _, singular, vt = np.linalg.svd(factor / self.scale)
        kept = singular > singular[0] * WHITEN_RCOND if singular.size else singular > 0
        inverse = np.divide(math.sqrt(samples), singular, out=np.zeros_like(singular), where=kept)
        return Scaling(mean=self.mean, scale=self.scale, transform=vt.T * inverse)

    def factor(self, factor: np.ndarray) -> np.ndarray:
        """The triangular factor of the centered data (Xc = Q @ factor) in training units:
        Uc = Q @ (the result)."""
        scaled: np.ndarray = factor / self.scale
        return scaled if self.transform is None else scaled @ self.transform

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Rows (or one row) of data in training units, in float64."""
        z: np.ndarray = (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale
        return z if self.transform is None else z @ self.transform

    def to_data_units(self, weight: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
        """Parameters fitted in training units, as weight and bias acting on x."""
        w = np.asarray(weight, dtype=np.float64)
        if self.transform is not None:
            w = self.transform @ w
        w = w / self.scale
        return w, float(bias) - float(w @ self.mean)

    def from_data_units(self, weight: np.ndarray, bias: float) -> tuple[np.ndarray, float]:
        """The training-unit parameters that act on x as ``weight`` and ``bias`` do (the
        inverse of ``to_data_units``; whitened, the least-squares solution of T w = scale *
        weight, which leaves the directions the data does not span at 0)."""
        w = np.asarray(weight, dtype=np.float64)
        b = float(bias) + float(w @ self.mean)
        scaled = w * self.scale
        if self.transform is not None:
            scaled = np.linalg.lstsq(self.transform, scaled, rcond=None)[0]
        return scaled, b


# Singular values of the standardized factor below this share of the largest are treated as
# directions the data does not span (whitening leaves them out)
WHITEN_RCOND = 1e-13


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
    transform = None if scaling.transform is None else torch.from_numpy(scaling.transform)
    size = chunk_rows(d)
    for start in range(0, n, size):
        stop = min(start + size, n)
        rows = X[start:stop]
        if rows.dtype != np.float64 or not rows.flags.writeable or min(rows.strides) < 0:
            rows = np.array(rows, dtype=np.float64)  # what torch.from_numpy can take
        release(X, start, stop)
        if transform is not None:  # whitened: standardized, then multiplied, in float64
            standardized = torch.from_numpy(scratch(rows.size).reshape(rows.shape))
            torch.sub(torch.from_numpy(rows), mean, out=standardized).div_(scale)
            out[start:stop] = standardized @ transform
        elif out.dtype == torch.float64 and out.device.type == "cpu":
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
