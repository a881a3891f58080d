"""One training run from data to results: what ``linreg train`` asks of the library."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .data import Dataset, column_stats, synthetic
from .device import resolve_device
from .metrics import Fit, LeastSquares, fit_metrics, least_squares, optimality_gap
from .model import Scaling, target_tensor, to_training_tensor
from .statistics import Statistics, ols_statistics
from .train import ProgressCallback, auto_lr, train


@dataclass(frozen=True)
class Params:
    """A linear model in the data's units: y = x @ weight + bias."""

    weight: np.ndarray
    bias: float

    def to_dict(self) -> dict[str, object]:
        return {"weight": [float(w) for w in self.weight], "bias": float(self.bias)}


@dataclass(frozen=True)
class RunResult:
    config: TrainConfig
    data: Dataset
    device: str
    scaling: Scaling
    linear_weight: np.ndarray  # the trained nn.Linear parameters, in training units
    linear_bias: float
    params: Params
    true_params: Params | None
    ols: LeastSquares
    predicted: np.ndarray  # float64 predictions on the training data
    train: Fit
    optimality_gap: float | None
    statistics: Statistics
    history: list[float]
    converged: bool
    lr: float
    seconds: float


def run_training(
    config: TrainConfig,
    *,
    data: Dataset | None = None,
    confidence: float = 0.95,
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Make or take the data, fit it, and measure the fit against the least-squares optimum."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    if data is None:
        data = synthetic(config)
    X, y = data.X, data.y
    stats = column_stats(X)
    ols = least_squares(X, y, x_mean=stats.mean)
    scaling = (
        Scaling(mean=stats.mean, scale=stats.scale)
        if config.standardize
        else Scaling.identity(data.features)
    )
    inputs = to_training_tensor(X, scaling, device=device, dtype=dtype)
    target = target_tensor(y, device=device, dtype=dtype)
    lr = config.lr
    if lr is None:
        lr = _auto_lr(config, inputs, ols, scaling)
    trained = train(inputs, target, config=config, lr=lr, progress=progress)
    with torch.no_grad():
        predicted = trained.model(inputs).reshape(-1).detach().cpu().numpy().astype(np.float64)
    linear_weight = trained.model.weight.detach().cpu().numpy().astype(np.float64).reshape(-1)
    linear_bias = float(trained.model.bias.detach().cpu().item())
    weight, bias = scaling.to_data_units(linear_weight, linear_bias)
    fit = fit_metrics(y, predicted)
    y64 = np.asarray(y, dtype=np.float64)
    tss = float(np.sum((y64 - ols.y_mean) ** 2))
    return RunResult(
        config=config,
        data=data,
        device=str(device),
        scaling=scaling,
        linear_weight=linear_weight,
        linear_bias=linear_bias,
        params=Params(weight, bias),
        true_params=(
            Params(np.asarray(config.weights), config.bias) if data.source == "synthetic" else None
        ),
        ols=ols,
        predicted=predicted,
        train=fit,
        optimality_gap=optimality_gap(fit.mse, ols.mse),
        statistics=ols_statistics(ols, data.feature_names, tss, confidence),
        history=trained.history,
        converged=trained.converged,
        lr=lr,
        seconds=time.perf_counter() - start,
    )


def _auto_lr(
    config: TrainConfig, inputs: torch.Tensor, ols: LeastSquares, scaling: Scaling
) -> float:
    """Feed auto_lr the second moments of the training inputs, derived from the least-squares
    factor (Xc'Xc = R'R) without another pass over the data."""
    n = ols.samples
    shift = (ols.x_mean - scaling.mean) / scaling.scale  # mean of the training inputs
    centered = (ols.r.T @ ols.r) / n / np.outer(scaling.scale, scaling.scale)
    max_row_norm2 = 0.0
    if 0 < config.batch_size < n:
        max_row_norm2 = max(
            float((inputs[i : i + 65536].double() ** 2).sum(dim=1).max())
            for i in range(0, n, 65536)
        )
    return auto_lr(
        second_moment=centered + np.outer(shift, shift),
        mean=shift,
        samples=n,
        batch_size=config.batch_size,
        max_row_norm2=max_row_norm2,
        weight_decay=config.weight_decay,
    )
