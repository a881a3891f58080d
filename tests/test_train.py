"""Training: nn.Linear + SGD against np.linalg.lstsq, early stopping, the automatic step size,
the data-unit conversion and the device choice."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import regression.data
import regression.epochs
import regression.fused
import regression.metrics
import regression.model
import regression.pipeline
import regression.train
from regression.batches import StandardizingSource, TensorSource
from regression.config import TrainConfig
from regression.data import Dataset, column_stats, synthetic
from regression.device import resolve_device
from regression.distributed import SINGLE
from regression.errors import DeviceUnavailableError, DivergedError
from regression.model import Scaling, target_tensor, to_training_tensor
from regression.pipeline import RunResult, run_training
from regression.train import Checkpointer, Curvature, EarlyStopping, LoopState, Progress, train

without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The oracle: float64 weights, bias and mse of np.linalg.lstsq on [X, 1]."""
    X64, y64 = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    design = np.column_stack([X64, np.ones(len(y64))])
    coef, *_ = np.linalg.lstsq(design, y64, rcond=None)
    return coef[:-1], float(coef[-1]), float(np.mean((design @ coef - y64) ** 2))


def gap_against_oracle(result: RunResult) -> float:
    """(training mse - lstsq mse) / lstsq mse, computed here from the returned parameters."""
    X = np.asarray(result.data.X, dtype=np.float64)
    y = np.asarray(result.data.y, dtype=np.float64)
    _, _, best = lstsq(X, y)
    mse = float(np.mean((X @ result.params.weight + result.params.bias - y) ** 2))
    return (mse - best) / best


def cpu(**options: object) -> TrainConfig:
    return TrainConfig(device="cpu", **options)  # type: ignore[arg-type]


# -- against least squares ------------------------------------------------------------------


def test_default_demo_config_reaches_least_squares_in_float32() -> None:
    config = TrainConfig()
    assert (config.samples, config.features, config.dtype) == (100, 1, "float32")
    result = run_training(dataclasses.replace(config, device="cpu"))
    weight, bias, best = lstsq(result.data.X, result.data.y)
    assert result.optimality_gap is not None
    assert -1e-6 < result.optimality_gap < 1e-4
    assert -1e-6 < gap_against_oracle(result) < 1e-4
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-4)
    assert result.params.bias == pytest.approx(bias, rel=1e-4, abs=0)
    np.testing.assert_allclose(result.ols.weight, weight, rtol=1e-12)
    assert result.ols.mse == pytest.approx(best, rel=1e-12, abs=0)
    assert result.converged and len(result.history) < config.epochs
    # the demo's data: y = 2x + 1 + 0.1 N(0, 1)
    assert result.params.weight[0] == pytest.approx(2.0, abs=0.1)
    assert result.params.bias == pytest.approx(1.0, abs=0.1)
    assert result.true_params is not None
    assert result.true_params.to_dict() == {"weight": [2.0], "bias": 1.0}
    assert result.device == "cpu"


def test_float64_without_early_stopping_is_tighter() -> None:
    result = run_training(cpu(dtype="float64", tol=0.0, epochs=300))
    weight, bias, _ = lstsq(result.data.X, result.data.y)
    assert len(result.history) == 300 and not result.converged
    assert abs(result.optimality_gap) < 1e-12
    assert abs(gap_against_oracle(result)) < 1e-12
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-10)
    assert result.params.bias == pytest.approx(bias, rel=1e-10, abs=0)


@pytest.mark.parametrize(
    ("dtype", "tol", "max_gap", "rtol"),
    [("float32", 1e-6, 1e-4, 1e-3), ("float64", 0.0, 1e-12, 1e-9)],
)
def test_several_features(dtype: str, tol: float, max_gap: float, rtol: float) -> None:
    config = cpu(
        samples=400, features=5, weight=(1.0, -2.0, 3.0, 0.5, 4.0), bias=-1.5, dtype=dtype, tol=tol
    )
    result = run_training(config)
    weight, bias, _ = lstsq(result.data.X, result.data.y)
    assert abs(result.optimality_gap) < max_gap
    assert abs(gap_against_oracle(result)) < max_gap
    np.testing.assert_allclose(result.params.weight, weight, rtol=rtol)
    assert result.params.bias == pytest.approx(bias, rel=rtol, abs=0)
    assert result.params.weight.shape == (5,)


def test_no_standardize_still_reports_data_unit_params() -> None:
    config = cpu(
        samples=200,
        features=2,
        weight=(3.0, -1.0),
        precondition="none",
        dtype="float64",
        tol=0.0,
        epochs=3000,
    )
    result = run_training(config)
    weight, bias, _ = lstsq(result.data.X, result.data.y)
    # without standardizing, the trained nn.Linear acts on the data as it is
    np.testing.assert_array_equal(result.scaling.mean, [0.0, 0.0])
    np.testing.assert_array_equal(result.scaling.scale, [1.0, 1.0])
    np.testing.assert_array_equal(result.linear_weight, result.params.weight)
    assert result.linear_bias == result.params.bias
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-9)
    assert result.params.bias == pytest.approx(bias, rel=1e-9, abs=0)
    assert abs(result.optimality_gap) < 1e-12


def test_no_standardize_float32_default_run_is_close() -> None:
    result = run_training(cpu(precondition="none"))
    assert 0 <= result.optimality_gap < 1e-4
    weight, bias, _ = lstsq(result.data.X, result.data.y)
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-3)
    assert result.params.bias == pytest.approx(bias, rel=1e-3, abs=0)


def test_standardized_training_units_differ_but_params_are_in_data_units() -> None:
    result = run_training(cpu(samples=200, features=2, weight=(3.0, -1.0), dtype="float64", tol=0))
    X = np.asarray(result.data.X)
    stats = column_stats(X)
    np.testing.assert_array_equal(result.scaling.mean, stats.mean)
    np.testing.assert_array_equal(result.scaling.scale, stats.scale)
    # the trained nn.Linear acts on z = (x - mean) / std: its weights are w * std
    np.testing.assert_allclose(result.linear_weight, result.params.weight * stats.std, rtol=1e-12)
    weight, bias, _ = lstsq(X, result.data.y)
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-9)
    rows = result.figure_rows
    np.testing.assert_allclose(result.predicted, X[rows] @ weight + bias, rtol=1e-9)


# -- SGD variants ---------------------------------------------------------------------------


def test_mini_batch_runs_and_reduces_the_loss() -> None:
    config = cpu(samples=256, features=3, batch_size=32, epochs=40, tol=0.0)
    result = run_training(config)
    assert len(result.history) == 40
    assert all(math.isfinite(loss) for loss in result.history)
    # from the zero start (mse ~ E[y^2] ~ 17) to near the noise floor (0.01)
    assert result.history[-1] < 0.01 * result.history[0]
    assert result.train.r2 is not None and result.train.r2 > 0.95
    weight, _, _ = lstsq(result.data.X, result.data.y)
    np.testing.assert_allclose(result.params.weight, weight, atol=0.15)
    # with more than one step per epoch, the automatic step is below the full-batch one
    full = run_training(dataclasses.replace(config, batch_size=0, epochs=1))
    assert result.lr < full.lr


def test_momentum_is_accepted_and_converges() -> None:
    result = run_training(cpu(momentum=0.9, dtype="float64", tol=0.0, epochs=400))
    weight, _, _ = lstsq(result.data.X, result.data.y)
    assert abs(result.optimality_gap) < 1e-10
    np.testing.assert_allclose(result.params.weight, weight, rtol=1e-8)
    plain = run_training(cpu(dtype="float64", tol=0.0, epochs=5))
    heavy = run_training(cpu(momentum=0.9, dtype="float64", tol=0.0, epochs=5))
    assert not np.array_equal(plain.linear_weight, heavy.linear_weight)  # momentum is used


def test_weight_decay_shrinks_the_weights() -> None:
    options = {"samples": 200, "features": 3, "weight": (2.0, -3.0, 1.0), "dtype": "float64"}
    free = run_training(cpu(**options, weight_decay=0.0))
    decayed = run_training(cpu(**options, weight_decay=0.5))
    assert np.all(np.abs(decayed.linear_weight) < np.abs(free.linear_weight))
    assert np.all(np.abs(decayed.params.weight) < np.abs(free.params.weight))
    assert np.all(np.sign(decayed.params.weight) == np.sign(free.params.weight))
    # the intercept is not penalized: in training units it stays at the mean of y
    assert decayed.linear_bias == pytest.approx(float(np.mean(decayed.data.y)), rel=1e-6, abs=0)
    # ridge on standardized features (MSE + wd/2 |w|^2): w = (Z'Z/n + wd/2)^-1 Z'y/n
    Z = (decayed.data.X - decayed.scaling.mean) / decayed.scaling.scale
    yc = decayed.data.y - decayed.data.y.mean()
    ridge = np.linalg.solve(Z.T @ Z / len(yc) + 0.25 * np.eye(3), Z.T @ yc / len(yc))
    np.testing.assert_allclose(decayed.linear_weight, ridge, rtol=1e-4)
    assert decayed.optimality_gap > 0.01


# -- determinism ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, 16])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_config_gives_bit_identical_params(batch_size: int, dtype: str) -> None:
    config = cpu(samples=150, features=2, batch_size=batch_size, epochs=30, dtype=dtype)
    first, second = run_training(config), run_training(config)
    np.testing.assert_array_equal(first.linear_weight, second.linear_weight, strict=True)
    assert first.linear_bias == second.linear_bias
    np.testing.assert_array_equal(first.params.weight, second.params.weight, strict=True)
    assert first.params.bias == second.params.bias
    assert first.history == second.history


def test_mini_batch_order_follows_the_seed() -> None:
    data = synthetic(cpu(samples=150, features=2))
    one = run_training(cpu(samples=150, features=2, batch_size=16, epochs=5, seed=1), data=data)
    two = run_training(cpu(samples=150, features=2, batch_size=16, epochs=5, seed=2), data=data)
    assert not np.array_equal(one.linear_weight, two.linear_weight)


# -- divergence -----------------------------------------------------------------------------


def test_huge_lr_without_standardize_diverges_with_a_hint() -> None:
    config = cpu(lr=1e6, precondition="none", epochs=500)
    with pytest.raises(DivergedError) as info:
        run_training(config)
    message = str(info.value)
    assert "--lr" in message
    assert "1e+06" in message
    assert "at epoch" in message


def test_train_raises_on_the_first_non_finite_loss() -> None:
    X = torch.tensor([[1e3], [2e3]], dtype=torch.float32)
    y = torch.tensor([[1.0], [2.0]])
    seen: list[Progress] = []
    with pytest.raises(DivergedError, match=r"lower --lr"):
        train(X, y, config=cpu(epochs=1000, tol=0.0), lr=10.0, progress=seen.append)
    assert 0 < len(seen) < 1000
    assert all(math.isfinite(p.loss) for p in seen)


# -- the loop itself ------------------------------------------------------------------------


def test_train_reports_every_epoch_through_the_callback() -> None:
    data = synthetic(cpu(dtype="float64"))
    scaling = Scaling(mean=column_stats(data.X).mean, scale=column_stats(data.X).scale)
    X = to_training_tensor(data.X, scaling, device=torch.device("cpu"), dtype=torch.float64)
    y = target_tensor(data.y, device=torch.device("cpu"), dtype=torch.float64)
    assert X.shape == (100, 1) and y.shape == (100, 1)
    seen: list[Progress] = []
    trained = train(
        X, y, config=cpu(epochs=25, tol=0.0, dtype="float64"), lr=0.1, progress=seen.append
    )
    assert [p.epoch for p in seen] == list(range(1, 26))
    assert all(p.epochs == 25 for p in seen)
    assert [p.loss for p in seen] == trained.history
    assert all(b.elapsed >= a.elapsed >= 0 for a, b in itertools.pairwise(seen))
    assert trained.lr == 0.1 and not trained.converged
    # full batch with a stable step: the loss falls every epoch
    assert all(b < a for a, b in itertools.pairwise(trained.history))
    # the first loss is that of the zero-initialized model: mean(y^2)
    assert trained.history[0] == pytest.approx(float(np.mean(data.y**2)), rel=1e-12, abs=0)


def test_train_stops_early_when_the_loss_settles() -> None:
    data = synthetic(cpu(dtype="float64"))
    X = torch.from_numpy((data.X - data.X.mean(0)) / data.X.std(0))
    y = torch.from_numpy(data.y).reshape(-1, 1)
    trained = train(X, y, config=cpu(epochs=1000, tol=1e-6, patience=3), lr=0.5)
    assert trained.converged
    assert len(trained.history) < 20


# -- early stopping -------------------------------------------------------------------------


def test_early_stopping_with_tol_zero_never_stops() -> None:
    stopper = EarlyStopping(tol=0.0, patience=1)
    assert not any(stopper.update(1.0) for _ in range(100))
    assert not stopper.converged


def test_flat_loss_converges_after_patience_epochs() -> None:
    stopper = EarlyStopping(tol=1e-3, patience=4)
    results = [stopper.update(2.0) for _ in range(5)]
    # the first epoch sets the best; the next four are within tol of it
    assert results == [False, False, False, False, True]
    assert stopper.converged


def test_loss_settling_within_tol_converges() -> None:
    stopper = EarlyStopping(tol=1e-2, patience=3)
    for loss in (10.0, 5.0, 2.0):
        assert not stopper.update(loss)
    assert not stopper.update(1.999)
    assert not stopper.update(1.995)
    assert stopper.update(1.998)


@pytest.mark.parametrize(
    "losses",
    [
        [1.0 * 1.01**k for k in range(200)],  # rising 1 % a step
        [1.0 + k for k in range(200)],  # rising fast
        [1.0 if k % 2 == 0 else 2.0 for k in range(200)],  # oscillating
        [2.0**k for k in range(200)],  # diverging
    ],
    ids=["rising", "rising-fast", "oscillating", "diverging"],
)
def test_rising_loss_never_counts_as_converged(losses: list[float]) -> None:
    stopper = EarlyStopping(tol=1e-3, patience=3)
    assert not any(stopper.update(loss) for loss in losses)
    assert not stopper.converged


def test_steadily_improving_loss_never_converges() -> None:
    stopper = EarlyStopping(tol=1e-3, patience=2)
    assert not any(stopper.update(0.9**k) for k in range(300))


def test_improvement_resets_the_patience_count() -> None:
    stopper = EarlyStopping(tol=1e-3, patience=3)
    assert [stopper.update(x) for x in (1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5)] == [
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]


# -- the automatic step size -----------------------------------------------------------------


def test_auto_lr_is_one_half_for_one_standardized_feature_full_batch() -> None:
    curvature = Curvature.of(np.array([[1.0]]), np.array([0.0]), 0.0)
    assert curvature.gradient_descent_lr() == pytest.approx(0.5, rel=1e-15, abs=0)
    # perfectly conditioned: the heavy-ball step is the same, with no momentum
    lr, momentum = curvature.heavy_ball()
    assert lr == pytest.approx(0.5, rel=1e-15, abs=0) and momentum == pytest.approx(0, abs=1e-15)
    result = run_training(cpu())
    assert result.lr == pytest.approx(0.5, rel=1e-12, abs=0)
    assert result.momentum == pytest.approx(0.0, abs=1e-12)


def test_auto_lr_matches_the_largest_hessian_eigenvalue() -> None:
    rng = np.random.default_rng(0)
    A = np.column_stack([rng.normal(1.0, 2.0, size=(500, 3)), np.ones(500)])
    eigenvalues = np.linalg.eigvalsh(2 * A.T @ A / 500)
    Z = A[:, :3]
    curvature = Curvature.of(Z.T @ Z / 500, Z.mean(axis=0), 0.3)
    assert curvature.largest == pytest.approx(eigenvalues[-1] + 0.3, rel=1e-12, abs=0)
    assert curvature.smallest == pytest.approx(eigenvalues[0] + 0.3, rel=1e-9, abs=0)
    assert curvature.gradient_descent_lr() == pytest.approx(1 / curvature.largest, rel=1e-15)


def test_heavy_ball_is_polyaks_optimum() -> None:
    curvature = Curvature(largest=50.0, smallest=2.0)  # condition 25
    lr, momentum = curvature.heavy_ball()
    assert lr == pytest.approx(4 / (np.sqrt(50) + np.sqrt(2)) ** 2, rel=1e-15)
    assert momentum == pytest.approx(((np.sqrt(25) - 1) / (np.sqrt(25) + 1)) ** 2, rel=1e-12)


def test_a_zero_curvature_direction_does_not_set_the_momentum() -> None:
    # a constant column (centered: all zeros) has zero variance: no curvature along it
    curvature = Curvature.of(np.diag([1.0, 0.0]), np.zeros(2), 0.0)
    assert curvature.smallest == pytest.approx(2.0) and curvature.condition == pytest.approx(1.0)


def test_auto_lr_for_single_rows_is_the_per_row_bound() -> None:
    curvature = Curvature.of(np.array([[1.0]]), np.array([0.0]), 0.0)
    lr = curvature.minibatch_lr(100, 1, 9.0)
    assert lr == pytest.approx(1 / (2 * (9.0 + 1.0)), rel=1e-15, abs=0)


def test_auto_momentum_reaches_the_optimum_on_ill_conditioned_data() -> None:
    # strongly correlated features: plain gradient descent crawls, heavy ball does not
    rng = np.random.default_rng(3)
    base = rng.normal(size=(2000, 1))
    X = np.hstack([base, base + 0.01 * rng.normal(size=(2000, 1))])
    y = X @ np.array([1.0, -1.0]) + 0.1 * rng.normal(size=2000)
    data = Dataset(X=X, y=y, feature_names=("a", "b"), target_name="y", source="memory")
    # standardized, the heavy-ball case (auto whitens such data: see test_precondition.py)
    config = cpu(dtype="float64", epochs=3000, tol=0.0, precondition="standardize")
    auto = run_training(config, data=data)
    plain = run_training(replace(config, momentum=0.0), data=data)
    assert auto.momentum > 0.5
    assert auto.optimality_gap is not None and auto.optimality_gap < 1e-9
    assert plain.optimality_gap is not None and plain.optimality_gap > 1e-3


# -- Scaling -------------------------------------------------------------------------------


def test_to_data_units_round_trip_equals_fitting_raw() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal([5.0, -3.0, 100.0], [2.0, 0.1, 30.0], size=(300, 3))
    X[:, 1] = 4.25  # a constant column: scale 1, weight 0
    y = X @ np.array([1.5, 0.0, -0.02]) + 7.0 + rng.normal(size=300)
    stats = column_stats(X)
    scaling = Scaling(mean=stats.mean, scale=stats.scale)
    assert scaling.scale[1] == 1.0
    Z = (X - scaling.mean) / scaling.scale
    w_z, b_z, _ = lstsq(np.delete(Z, 1, axis=1), y)
    weight, bias = scaling.to_data_units(np.insert(w_z, 1, 0.0), b_z)
    w_raw, b_raw, _ = lstsq(np.delete(X, 1, axis=1), y)
    np.testing.assert_allclose(np.delete(weight, 1), w_raw, rtol=1e-10)
    assert weight[1] == 0.0
    assert bias == pytest.approx(b_raw, rel=1e-10, abs=0)
    np.testing.assert_allclose(X @ weight + bias, Z @ np.insert(w_z, 1, 0.0) + b_z, rtol=1e-12)


def test_identity_scaling_changes_nothing() -> None:
    scaling = Scaling.identity(3)
    weight, bias = scaling.to_data_units(np.array([1.0, -2.0, 0.5]), 4.0)
    np.testing.assert_array_equal(weight, [1.0, -2.0, 0.5])
    assert bias == 4.0


# -- devices ---------------------------------------------------------------------------------


def test_resolve_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@without_cuda
def test_auto_without_cuda_is_cpu() -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS, which auto prefers")
    assert resolve_device("auto") == torch.device("cpu")


@without_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_explicit_cuda_without_cuda_is_an_error(name: str) -> None:
    with pytest.raises(DeviceUnavailableError) as info:
        resolve_device(name)
    message = str(info.value)
    assert message.startswith(f"--device {name}:")
    assert "--device cpu" in message


@without_cuda
def test_training_on_unavailable_cuda_fails_before_training() -> None:
    with pytest.raises(DeviceUnavailableError, match="--device cuda"):
        run_training(TrainConfig(device="cuda"))


@needs_cuda
def test_cuda_index_beyond_the_device_count_is_an_error() -> None:
    name = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DeviceUnavailableError, match=name):
        resolve_device(name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(
    ("options", "rtol"),
    [
        ({"dtype": "float32"}, 1e-4),
        ({"dtype": "float64", "tol": 0.0, "epochs": 300}, 1e-10),
        ({"dtype": "float32", "batch_size": 16, "epochs": 20, "features": 3}, 1e-4),
    ],
)
def test_training_on_cuda_matches_cpu(options: dict[str, object], rtol: float) -> None:
    on_cpu = run_training(TrainConfig(device="cpu", **options))  # type: ignore[arg-type]
    on_gpu = run_training(TrainConfig(device="cuda", **options))  # type: ignore[arg-type]
    assert on_gpu.device.startswith("cuda")
    np.testing.assert_allclose(on_gpu.params.weight, on_cpu.params.weight, rtol=rtol)
    assert on_gpu.params.bias == pytest.approx(on_cpu.params.bias, rel=rtol, abs=0)
    assert on_gpu.train.mse == pytest.approx(on_cpu.train.mse, rel=10 * rtol, abs=0)


def test_loss_settling_above_an_earlier_low_converges() -> None:
    # float32 rounding: the loss dips once, then stays flat slightly above that low
    stopper = EarlyStopping(tol=1e-6, patience=3)
    losses = [10.0, 1.0, 0.999998, 1.0, 1.0, 1.0, 1.0]
    assert [stopper.update(x) for x in losses] == [False] * 6 + [True]


@pytest.mark.parametrize("layout", ["C", "Fortran", "reversed", "read-only", "float32"])
def test_training_tensor_is_the_standardized_data_whatever_its_layout(layout: str) -> None:
    rng = np.random.default_rng(21)
    base = rng.normal(3.0, 2.0, size=(70_000, 3))
    X = {
        "C": base,
        "Fortran": np.asfortranarray(base),
        "reversed": base[::-1],
        "read-only": base.copy(),
        "float32": base.astype(np.float32),
    }[layout]
    if layout == "read-only":
        X.flags.writeable = False
    before = X.copy()
    scaling = Scaling(mean=np.array([3.0, 2.5, -1.0]), scale=np.array([2.0, 0.5, 4.0]))
    for dtype in (torch.float64, torch.float32):
        tensor = to_training_tensor(X, scaling, device=torch.device("cpu"), dtype=dtype)
        expected = (np.asarray(X, dtype=np.float64) - scaling.mean) / scaling.scale
        assert tensor.dtype == dtype and tensor.shape == X.shape
        np.testing.assert_array_equal(tensor.numpy(), expected.astype(tensor.numpy().dtype))
    np.testing.assert_array_equal(X, before)  # the data is read, never changed


# -- stopping at the known optimum -------------------------------------------------------


def test_early_stopping_at_the_optimum() -> None:
    stopper = EarlyStopping(tol=1e-3, patience=5, optimum=2.0)  # within tol**2 = 1e-6
    assert not stopper.update(3.0)
    assert not stopper.at_optimum(2.0 * (1 + 2e-6))
    assert stopper.at_optimum(2.0 * (1 + 0.5e-6))
    assert stopper.update(2.0 * (1 + 0.5e-6)) and stopper.converged
    assert not EarlyStopping(tol=0.0, patience=5, optimum=2.0).update(2.0)  # --tol 0 runs all
    assert not EarlyStopping(tol=1e-6, patience=5, optimum=0.0).update(0.0)  # exact fits: no


def _optimum_problem(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Standardized-looking data and its least-squares mse (the oracle: lstsq)."""
    rng = np.random.default_rng(31)
    X = rng.normal(size=(5000, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 1.5 + 0.3 * rng.normal(size=5000)
    _, _, best = lstsq(X, y)
    return torch.tensor(X, dtype=dtype), torch.tensor(y, dtype=dtype).reshape(-1, 1), best


def test_float64_full_batch_stops_at_the_optimum_without_a_last_step() -> None:
    """The first epoch whose loss is within tol**2 of the optimum ends the run, and its step
    is not taken: the model's loss is the last loss recorded (to rounding)."""
    X, y, best = _optimum_problem(torch.float64)
    config = TrainConfig(epochs=500, tol=1e-4, patience=5, momentum=0.0, device="cpu")
    plain = train(X, y, config=config, lr=0.5)
    short = train(X, y, config=config, lr=0.5, optimum=best)
    assert short.converged and len(short.history) < len(plain.history)
    assert short.history == plain.history[: len(short.history)]  # the same steps until then
    assert short.history[-1] <= best * (1 + 1e-8)
    assert all(loss > best * (1 + 1e-8) for loss in short.history[:-1])
    with torch.no_grad():
        final = float(torch.nn.MSELoss()(short.model(X), y))
    # the same parameters: equal up to the order of the loss's sums (a step would move it
    # by far more; two summations differ in the last bit on some CPUs)
    assert final == pytest.approx(short.history[-1], rel=1e-14)


@pytest.mark.parametrize("case", ["float32", "weight decay", "mini-batch", "tol 0"])
def test_the_optimum_is_not_used_where_it_cannot_be_trusted(case: str) -> None:
    """float32 losses are too coarse to compare with a float64 optimum at 1e-6, weight decay
    moves the optimum, a mini-batch epoch's loss is not the loss of one point, and --tol 0
    runs every epoch: those runs are the same with or without it."""
    dtype = torch.float32 if case == "float32" else torch.float64
    X, y, best = _optimum_problem(dtype)
    config = TrainConfig(
        epochs=60 if case == "tol 0" else 300,
        tol=0.0 if case == "tol 0" else 1e-6,
        weight_decay=0.01 if case == "weight decay" else 0.0,
        batch_size=500 if case == "mini-batch" else 0,
        device="cpu",
    )
    lr = 0.05 if case == "mini-batch" else 0.5
    plain = train(X, y, config=config, lr=lr)
    given = train(X, y, config=config, lr=lr, optimum=best)
    assert given.history == plain.history
    assert torch.equal(given.model.weight, plain.model.weight)


# -- losses read every k epochs (what CUDA runs do, so that a step does not wait) ------------


def _read_problem() -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _ = _optimum_problem(torch.float32)
    return X, y


@pytest.mark.parametrize("batch_size", [0, 700])
def test_reading_the_loss_every_k_epochs_changes_no_number(batch_size: int) -> None:
    X, y = _read_problem()
    config = TrainConfig(epochs=30, tol=0.0, batch_size=batch_size, momentum=0.5, device="cpu")
    val = (X[:500], y[:500])
    every: list[Progress] = []
    each = train(X, y, config=config, lr=0.05, val=val)
    batched = train(X, y, config=config, lr=0.05, val=val, read_every=8, progress=every.append)
    assert batched.history == each.history and batched.val_history == each.val_history
    assert torch.equal(batched.model.weight, each.model.weight)
    assert [p.epoch for p in every] == list(range(1, 31))  # every epoch reported, in order
    assert [p.loss for p in every] == each.history


def test_reading_every_k_epochs_stops_at_the_next_read() -> None:
    """The stopping rule sees the losses k at a time: the run stops at the first read at or
    after the epoch where the rule was met, with the same losses until then."""
    X, y = _read_problem()
    config = TrainConfig(epochs=1000, tol=1e-3, patience=3, device="cpu")
    each = train(X, y, config=config, lr=0.05)
    batched = train(X, y, config=config, lr=0.05, read_every=8)
    assert each.converged and batched.converged
    stop = len(each.history)
    assert len(batched.history) == -(-stop // 8) * 8
    assert batched.history[:stop] == each.history


def test_reading_every_k_epochs_names_the_epoch_that_diverged() -> None:
    X, y = _read_problem()
    config = TrainConfig(epochs=200, tol=0.0, device="cpu")
    with pytest.raises(DivergedError) as each:
        train(X, y, config=config, lr=50.0)
    with pytest.raises(DivergedError) as batched:
        train(X, y, config=config, lr=50.0, read_every=16)
    assert str(batched.value) == str(each.value)


def test_reading_every_k_epochs_saves_checkpoints_at_their_epochs() -> None:
    X, y = _read_problem()
    config = TrainConfig(epochs=10, tol=0.0, device="cpu")
    saved: dict[str, list[LoopState]] = {"each": [], "batched": []}
    for name, k in (("each", 1), ("batched", 4)):
        train(
            X, y, config=config, lr=0.05, read_every=k,
            checkpointer=Checkpointer(saved[name].append, 3),
        )  # fmt: skip
    assert [s.epoch for s in saved["batched"]] == [3, 6, 9]
    for a, b in zip(saved["each"], saved["batched"], strict=True):
        assert a.history == b.history and len(b.history) == b.epoch
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# -- CPU full batches in slices, shared by threads ---------------------------------------------


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 4 KB, so that a few thousand rows make many of them."""
    monkeypatch.setattr(regression.epochs, "CPU_SLICE_BYTES", 4096)


def _sliced_problem() -> tuple[torch.Tensor, torch.Tensor]:
    X, y, _ = _optimum_problem(torch.float64)
    return X, y


@pytest.mark.usefixtures("small_slices")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sliced_epochs_equal_one_block_whatever_the_threads(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices taken in turn by 1, 2 or 3 threads give the one-block full-batch run to
    float64 rounding (the gradients add up in another order), and the same run twice gives
    the same bits."""
    X, y = _sliced_problem()
    config = TrainConfig(epochs=40, tol=0.0, momentum=0.5, device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sliced = train(X, y, config=config, lr=0.1)
        again = train(X, y, config=config, lr=0.1)
        assert torch.get_num_threads() == threads  # put back after training
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(regression.epochs, "CPU_SLICE_BYTES", 1 << 40)  # one block
    whole = train(X, y, config=config, lr=0.1)
    np.testing.assert_allclose(sliced.history, whole.history, rtol=1e-12)
    np.testing.assert_allclose(
        sliced.model.weight.detach(), whole.model.weight.detach(), rtol=1e-11
    )
    assert sliced.history == again.history
    assert torch.equal(sliced.model.weight, again.model.weight)


@pytest.mark.usefixtures("small_slices")
def test_sliced_training_puts_the_thread_count_back_after_an_error() -> None:
    X, y = _sliced_problem()
    before = torch.get_num_threads()
    with pytest.raises(DivergedError):
        train(X, y, config=TrainConfig(epochs=200, tol=0.0, device="cpu"), lr=50.0)
    assert torch.get_num_threads() == before


@pytest.mark.usefixtures("small_slices")
def test_threads_share_the_slices_only_with_more_than_one_thread() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert regression.epochs._Sums.start(10).pool is None
        torch.set_num_threads(2)
        sums = regression.epochs._Sums.start(10)
        assert sums.pool is not None and sums.pool.workers == 2
        assert torch.get_num_threads() == 1  # each thread's operations run on one core
        sums.close()
        assert torch.get_num_threads() == 2
        assert regression.epochs._Sums.start(1).pool is None
    finally:
        torch.set_num_threads(before)


# -- the closed form against autograd through nn.Linear and MSELoss ------------------------


def _closed_form_epoch(
    X: torch.Tensor, y: torch.Tensor, model: torch.nn.Linear, threads: int, *, fused: bool
) -> torch.Tensor:
    """One _Sums epoch over X in slices of 700 rows on ``threads`` threads; sets the model's
    gradient and returns the summed loss."""
    source = TensorSource(X, y)
    n = X.shape[0]
    blocks = [(first, min(first + 700, n)) for first in range(0, n, 700)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    regression.epochs.FUSED = fused
    try:
        sums = regression.epochs._Sums.start(len(blocks))
        try:
            assert (sums._fused_arrays(source) is not None) == fused  # the path asked for
            return sums.epoch(model, source, blocks)
        finally:
            sums.close()
    finally:
        regression.epochs.FUSED = True
        torch.set_num_threads(before)


def _epoch_problem(
    rows: int, features: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    generator = torch.Generator().manual_seed(features)
    X = torch.randn(rows, features, generator=generator, dtype=dtype)
    y = X.sum(dim=1, keepdim=True) * 2 + 3 + torch.randn(rows, 1, generator=generator, dtype=dtype)
    model = torch.nn.Linear(features, 1, dtype=dtype)
    with torch.no_grad():  # not at the optimum: every part of the gradient is large
        model.weight.copy_(torch.linspace(-1, 1, features, dtype=dtype))
        model.bias.fill_(0.5)
    return X, y, model


def _autograd_epoch(
    X: torch.Tensor, y: torch.Tensor, model: torch.nn.Linear
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed MSELoss through nn.Linear and autograd, and its weight and bias gradients."""
    expected = torch.nn.MSELoss(reduction="sum")(model(X), y)
    expected.backward()
    want_weight, want_bias = model.weight.grad.clone(), model.bias.grad.clone()  # type: ignore[union-attr]
    model.weight.grad = model.bias.grad = None
    return expected.detach(), want_weight, want_bias


@pytest.mark.parametrize("features", [1, 2, 16])
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_closed_form_epoch_is_autograds_gradient(
    features: int, dtype: torch.dtype, rtol: float, threads: int
) -> None:
    """The slices' summed MSELoss and its gradient, as autograd computes them through
    nn.Linear and MSELoss(reduction="sum") on the whole batch, to the dtype's rounding."""
    X, y, model = _epoch_problem(3000, features, dtype)
    expected, want_weight, want_bias = _autograd_epoch(X, y, model)
    loss = _closed_form_epoch(X, y, model, threads, fused=False)
    assert model.weight.grad is not None and model.bias.grad is not None
    assert model.weight.grad.shape == model.weight.shape and model.bias.grad.shape == (1,)
    assert model.weight.grad.dtype == dtype
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected.double(), rtol=rtol, atol=0)
    torch.testing.assert_close(model.weight.grad, want_weight, rtol=rtol, atol=rtol * 10)
    torch.testing.assert_close(model.bias.grad, want_bias, rtol=rtol, atol=rtol * 10)


@pytest.mark.parametrize("features", [1, 2, 3, 15, 16, 17, 32, 40])
@pytest.mark.parametrize("rows", [1, 3, 5, 511, 2 * 512 + 7, 100_003])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_epoch_is_autograds_gradient_in_float64(
    features: int, rows: int, threads: int
) -> None:
    """The fused float32 epoch's loss and gradient against autograd's on the same float32
    values in float64 (the oracle), for widths on and off the four-row unrolling and the
    vector width (16 lanes; 16 and 32 have their own builds), and row counts on and off its
    blocks and groups of 16 rows. Tolerance: float32 sums of
    up to 512 rows, added in float64: 1e-5 relative (torch's own float32 epoch is held to
    2e-5 above); the gradient's atol covers components that nearly cancel."""
    X, y, model = _epoch_problem(rows, features, torch.float32)
    oracle = _epoch_problem(rows, features, torch.float64)[2]
    expected, want_weight, want_bias = _autograd_epoch(X.double(), y.double(), oracle)
    loss = _closed_form_epoch(X, y, model, threads, fused=True)
    assert model.weight.grad is not None and model.bias.grad is not None
    assert model.weight.grad.shape == model.weight.shape and model.bias.grad.shape == (1,)
    assert model.weight.grad.dtype == torch.float32 and loss.dtype == torch.float64
    scale = float(want_weight.abs().max()) + float(want_bias.abs())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        model.weight.grad.double(), want_weight, rtol=1e-5, atol=1e-6 * scale
    )
    torch.testing.assert_close(model.bias.grad.double(), want_bias, rtol=1e-5, atol=1e-6 * scale)


def test_fused_epochs_on_many_rows_keep_float32_rounding() -> None:
    """On 1e6 rows the error does not grow with N: float32 sums of 512-row blocks, added in
    float64. Tolerance: 1e-6 relative, about 16 float32 roundings (2^-24 each)."""
    X, y, model = _epoch_problem(1_000_000, 4, torch.float32)
    oracle = _epoch_problem(1_000_000, 4, torch.float64)[2]
    expected, want_weight, want_bias = _autograd_epoch(X.double(), y.double(), oracle)
    loss = _closed_form_epoch(X, y, model, 2, fused=True)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert model.weight.grad is not None and model.bias.grad is not None
    torch.testing.assert_close(model.weight.grad.double(), want_weight, rtol=1e-6, atol=0)
    torch.testing.assert_close(model.bias.grad.double(), want_bias, rtol=1e-6, atol=0)


@pytest.mark.parametrize("features", [1, 16])
def test_a_fused_run_is_the_run_through_torch_and_is_deterministic(
    features: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole float32 runs: the fused epochs follow torch's float32 epochs to float32 rounding
    (1e-4 relative over 30 epochs), and the same run twice gives the same bits."""
    assert regression.fused.available()
    X, y, _ = _epoch_problem(20_000, features, torch.float32)
    config = TrainConfig(epochs=30, tol=0.0, momentum=0.5, device="cpu")
    seen: list[bool] = []
    fused_epoch = regression.epochs._Sums._fused_epoch

    def spy(self: object, *args: object) -> object:
        seen.append(True)
        return fused_epoch(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(regression.epochs._Sums, "_fused_epoch", spy)
    fused = train(X, y, config=config, lr=0.1)
    calls = len(seen)
    # every epoch went through the fused loops, and at most one measurement of the last
    # parameters (see train._keep_best)
    assert calls in (30, 31)
    again = train(X, y, config=config, lr=0.1)
    assert fused.history == again.history
    assert torch.equal(fused.model.weight, again.model.weight)
    monkeypatch.setattr(regression.epochs, "FUSED", False)
    through_torch = train(X, y, config=config, lr=0.1)
    assert len(seen) == 2 * calls
    np.testing.assert_allclose(fused.history, through_torch.history, rtol=1e-4)
    torch.testing.assert_close(fused.model.weight, through_torch.model.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda X, y: (X.double(), y.double()), "float64"),
        (lambda X, y: (X.t().contiguous().t(), y), "X not contiguous"),
        (lambda X, y: (X, torch.cat([y, y], dim=1)[:, :1]), "y not contiguous"),
        (lambda X, y: (X, y.double()), "y float64"),
        (lambda X, y: (X.repeat(1, 1025), y), "wider than fused.MAX_FEATURES"),
    ],
)
def test_the_fused_epoch_takes_only_contiguous_float32_data(
    make: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    why: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y, _ = _epoch_problem(3000, 4, torch.float32)
    sums = regression.epochs._Sums(None)
    assert sums._fused_arrays(TensorSource(X, y)) is not None
    assert sums._fused_arrays(TensorSource(*make(X, y))) is None, why
    monkeypatch.setattr(regression.epochs, "FUSED", False)
    assert regression.epochs._Sums(None)._fused_arrays(TensorSource(X, y)) is None


def test_a_diverging_fused_run_stops_with_the_error_torchs_epochs_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Overflow in the C loop (inf and nan residuals) is the same DivergedError, at the
    same epoch, as through torch."""
    X, y, _ = _epoch_problem(20_000, 16, torch.float32)
    config = TrainConfig(epochs=500, tol=0.0, device="cpu")
    messages = []
    for flag in (True, False):
        monkeypatch.setattr(regression.epochs, "FUSED", flag)
        with pytest.raises(DivergedError) as error:
            train(X, y, config=config, lr=50.0)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "epoch" in messages[0]


def test_the_fused_loops_are_built() -> None:
    """The install builds regression/_fused.c (optional: without a C compiler it is skipped
    and torch does the sums, so this only fails where a compiler was there to build it)."""
    if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler here: the build is skipped")
    assert regression.fused.available()


def test_the_fused_loops_refuse_widths_they_do_not_take() -> None:
    """Python's and C's MAX_FEATURES agree: the widest rows are taken, one more is refused
    by the C loop itself, not only by the check before the call."""
    if not regression.fused.available():
        pytest.skip("the fused loops were not built here")
    widest = regression.fused.MAX_FEATURES
    X = np.ones((3, widest), dtype=np.float32)
    sums = regression.fused.sums(X, np.zeros(3, np.float32), np.ones(widest, np.float32), 0.0)
    assert sums[widest] == pytest.approx(3 * widest**2)
    function = regression.fused._function()
    assert function is not None
    out = np.zeros(widest + 3)
    wide = np.ones((3, widest + 1), dtype=np.float32)
    weight = np.ones(widest + 1, np.float32)
    y = np.zeros(3, np.float32)
    status = function(
        wide.ctypes.data, y.ctypes.data, 3, widest + 1, weight.ctypes.data, 0.0, out.ctypes.data
    )
    assert status == -1 and not out.any()
    with pytest.raises(ValueError, match="4096"):
        regression.fused.sums(wide, y, weight, 0.0)


def test_without_the_built_loops_torch_computes_the_epochs(tmp_path: Path) -> None:
    """A copy of the package without the built extension (as where no compiler was found)
    trains the same float32 run through torch's epochs."""
    root = Path(__file__).parent.parent
    for package in ("regression", "cli", "plots"):
        shutil.copytree(
            root / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
        )
    script = (
        "import json, torch\n"
        "import regression.fused\n"
        "from regression.config import TrainConfig\n"
        "from regression.train import train\n"
        "g = torch.Generator().manual_seed(3)\n"
        "X = torch.randn(5000, 3, generator=g)\n"
        "y = X.sum(dim=1, keepdim=True) * 2 + 3 + torch.randn(5000, 1, generator=g)\n"
        "r = train(X, y, config=TrainConfig(epochs=10, tol=0.0, device='cpu'), lr=0.1)\n"
        "print(json.dumps([regression.fused.available(), r.history]))\n"
    )
    outputs = []
    for where in (tmp_path, root):
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=where,
            env={**os.environ, "PYTHONPATH": str(where)},
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(json.loads(done.stdout))
    (copy_built, copy_history), (built, history) = outputs
    assert not copy_built and built
    np.testing.assert_allclose(copy_history, history, rtol=1e-5)


@pytest.mark.parametrize("features", [1, 4])
def test_cpu_full_batch_training_is_the_tutorial_loop(features: int) -> None:
    """train() on the CPU, full batch, against the plain loop it replaces: nn.Linear,
    MSELoss, zero_grad, backward and SGD's step, from the same zero start. float64, so the
    only difference is rounding."""
    generator = torch.Generator().manual_seed(7)
    X = torch.randn(5000, features, generator=generator, dtype=torch.float64)
    y = (
        1.5 * X.sum(dim=1, keepdim=True)
        - 2
        + torch.randn(5000, 1, generator=generator, dtype=torch.float64)
    )
    config = TrainConfig(epochs=25, tol=0.0, momentum=0.3, device="cpu", dtype="float64")
    trained = train(X, y, config=config, lr=0.2)
    model = torch.nn.Linear(features, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.3)
    history, measured_at = [], []
    for _ in range(25):
        loss = torch.nn.MSELoss()(model(X), y)
        measured_at.append([param.detach().clone() for param in model.parameters()])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    np.testing.assert_allclose(trained.history, history, rtol=1e-12)
    # the loop keeps the parameters of the lowest loss, unless the last ones are as good
    best = int(np.argmin(history))
    final = torch.nn.MSELoss()(model(X), y).item()
    margin = max(config.tol, regression.train.KEEP_MARGIN_EPS * torch.finfo(torch.float64).eps)
    if best + 1 < len(history) and final > history[best] * (1 + margin):
        assert trained.best_epoch == best + 1
        weight, bias = measured_at[best]
    else:
        assert trained.best_epoch == len(history)
        weight, bias = model.weight, model.bias
    torch.testing.assert_close(trained.model.weight, weight, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(trained.model.bias, bias, rtol=1e-12, atol=1e-14)


def test_a_small_run_uses_one_thread_and_puts_the_count_back() -> None:
    """Runs on less than SMALL_DATA_BYTES of data train on one torch thread; larger ones
    keep torch's count outside the slice threads (whose pool sets one per thread)."""
    before = torch.get_num_threads()
    seen: list[int] = []
    try:
        torch.set_num_threads(2)
        run_training(
            TrainConfig(samples=1000, epochs=3, device="cpu"),
            progress=lambda _: seen.append(torch.get_num_threads()),
        )
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# -- float64 data read in place, standardized slice by slice --------------------------------


def _float64_data(n: int = 6000, d: int = 3) -> tuple[np.ndarray, np.ndarray, Scaling]:
    rng = np.random.default_rng(21)
    X = rng.normal(50.0, 4.0, size=(n, d))
    y = X @ np.arange(1.0, d + 1) + rng.normal(size=n)
    return X, y, Scaling(mean=X.mean(axis=0), scale=X.std(axis=0))


def test_rows_read_in_place_are_the_training_tensors_rows() -> None:
    X, y, scaling = _float64_data()
    cpu = torch.device("cpu")
    target = target_tensor(y, device=cpu, dtype=torch.float64)
    copy = to_training_tensor(X, scaling, device=cpu, dtype=torch.float64)
    for scale in (scaling, Scaling.identity(3)):
        source = StandardizingSource(X, target, scale)
        expected = to_training_tensor(X, scale, device=cpu, dtype=torch.float64)
        for first, last in [(0, 100), (100, 5000), (5999, 6000)]:
            rows, y_rows = source.rows(first, last)
            assert torch.equal(rows, expected[first:last])  # bit for bit
            assert torch.equal(y_rows, target[first:last])
    materialized = StandardizingSource(X, target, scaling).materialize()
    assert isinstance(materialized, TensorSource) and torch.equal(materialized.X, copy)
    assert np.array_equal(X, _float64_data()[0])  # the data is only read


@pytest.mark.parametrize(
    ("make", "accepted"),
    [
        (lambda X: X, True),
        (lambda X: X.astype(np.float32), False),
        (lambda X: np.asfortranarray(X), False),
        (lambda X: X[:, :2], False),
        (lambda X: np.require(X, requirements="C").copy().view(), True),
    ],
)
def test_only_writable_contiguous_float64_data_in_memory_is_read_in_place(
    make: object, accepted: bool
) -> None:
    X, _, _ = _float64_data()
    assert StandardizingSource.accepts(make(X)) is accepted  # type: ignore[operator]


def test_read_only_and_memory_mapped_data_is_copied(tmp_path: Path) -> None:
    X, _, _ = _float64_data()
    frozen = X.copy()
    frozen.flags.writeable = False
    assert not StandardizingSource.accepts(frozen)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r+")
    assert not StandardizingSource.accepts(mapped)


_SUMS_EPOCH = regression.epochs._Sums.epoch  # before any test patches it


def _float64_run(
    monkeypatch: pytest.MonkeyPatch, after: int, epochs: int
) -> tuple[RunResult, list[str]]:
    """A float64 CPU full-batch run on data in memory, over the data (not from the factor),
    with the copy made after ``after`` epochs; returns it and the kinds of source each
    epoch's slices came from."""
    X, y, _ = _float64_data()
    data = Dataset(X=X, y=y, feature_names=["a", "b", "c"], target_name="y", source="test")
    monkeypatch.setattr(StandardizingSource, "MATERIALIZE_AFTER", after)
    kinds: list[str] = []
    epoch = _SUMS_EPOCH

    def spy(self: object, model: torch.nn.Linear, source: object, blocks: object) -> object:
        kinds.append(type(source).__name__)
        return epoch(self, model, source, blocks)  # type: ignore[arg-type]

    monkeypatch.setattr(regression.epochs._Sums, "epoch", spy)
    # without the factor, which would stand in for every epoch (see FullBatchLoss)
    monkeypatch.setattr(regression.pipeline, "_full_batch_loss", lambda ols, scaling: None)
    config = TrainConfig(epochs=epochs, tol=0.0, dtype="float64", device="cpu", lr=0.3)
    return run_training(config, data=data), kinds


def test_a_float64_run_reads_the_data_in_place_then_copies_it_if_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The data is read in place for MATERIALIZE_AFTER epochs, then copied: the same bits
    as a run on the copy from the start."""
    copied, kinds_copied = _float64_run(monkeypatch, 0, 8)
    late, kinds_late = _float64_run(monkeypatch, 3, 8)
    never, kinds_never = _float64_run(monkeypatch, 100, 8)
    # the copy is made at epoch 1 + after
    assert kinds_copied == ["TensorSource"] * 8
    assert kinds_late == ["StandardizingSource"] * 3 + ["TensorSource"] * 5
    assert kinds_never == ["StandardizingSource"] * 8
    for run in (late, never):
        assert run.history == copied.history
        assert np.array_equal(run.params.weight, copied.params.weight)
        assert run.params.bias == copied.params.bias


def test_float32_and_mini_batch_runs_train_on_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y, scaling = _float64_data()
    cpu = torch.device("cpu")
    for options, kind in [
        ({"dtype": "float64"}, StandardizingSource),
        ({"dtype": "float32"}, TensorSource),
        ({"dtype": "float64", "batch_size": 100}, TensorSource),
    ]:
        config = TrainConfig(device="cpu", **options)  # type: ignore[arg-type]
        dtype = getattr(torch, config.dtype)
        source = regression.pipeline._source(
            X, y, scaling, config=config, device=cpu, dtype=dtype, world=SINGLE
        )
        assert type(source) is kind


# -- epochs from the least-squares factor -----------------------------------------------------


@pytest.mark.parametrize("method", ["tsqr", "cholesky"])
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("start", ["zero", "elsewhere"])
def test_the_factor_gives_the_full_batchs_loss_and_gradient(
    method: str, standardize: bool, start: str
) -> None:
    """FullBatchLoss (from the least-squares factor, by TSQR or by the Cholesky factor of the
    moments) against the slices' closed form over the data, which is autograd's (tested
    above), at the zero start and away from it."""
    X, y, scaling = _float64_data(n=30_000 if method == "cholesky" else 6000)
    if not standardize:
        scaling = Scaling.identity(3)
    ols = regression.metrics.least_squares(X, y)
    assert ols.method == method
    loss = regression.pipeline._full_batch_loss(ols, scaling)
    cpu = torch.device("cpu")
    source = TensorSource(
        to_training_tensor(X, scaling, device=cpu, dtype=torch.float64),
        target_tensor(y, device=cpu, dtype=torch.float64),
    )
    model = regression.model.build_model(3, device=cpu, dtype=torch.float64)
    if start == "elsewhere":
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
            model.bias.fill_(3.0)
    n = len(y)
    blocks = [(first, min(first + 1000, n)) for first in range(0, n, 1000)]
    expected = float(regression.epochs._Sums(None).epoch(model, source, blocks)) / n
    want_weight, want_bias = model.weight.grad / n, model.bias.grad / n  # type: ignore[operator]
    assert loss.mean(model) == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(model.weight.grad, want_weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.bias.grad, want_bias, rtol=1e-9, atol=1e-12)


def _without_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regression.pipeline, "_full_batch_loss", lambda ols, scaling: None)


@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-10), ("float32", 1e-4)])
def test_a_run_from_the_factor_is_the_run_over_the_data(
    dtype: str, rtol: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y, _ = _float64_data()
    data = Dataset(X=X, y=y, feature_names=["a", "b", "c"], target_name="y", source="test")
    config = TrainConfig(epochs=30, tol=0.0, dtype=dtype, device="cpu", momentum=0.2)
    fast = run_training(config, data=data)
    _without_factor(monkeypatch)
    slow = run_training(config, data=data)
    np.testing.assert_allclose(fast.history, slow.history, rtol=rtol)
    np.testing.assert_allclose(fast.params.weight, slow.params.weight, rtol=rtol)
    assert fast.params.bias == pytest.approx(slow.params.bias, rel=rtol)


def test_longley_from_the_factor_is_longley_over_the_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Badly conditioned data (standardized condition number 1.2e4, 699 heavy-ball epochs):
    the factor's epochs follow the data's to rounding."""
    path = Path(__file__).parent / "data" / "longley.csv"
    config = TrainConfig(data=str(path), target="y", dtype="float64", device="cpu")
    fast = run_training(config)
    _without_factor(monkeypatch)
    slow = run_training(config)
    assert len(fast.history) == len(slow.history)
    np.testing.assert_allclose(fast.history, slow.history, rtol=1e-9)
    np.testing.assert_allclose(fast.params.weight, slow.params.weight, rtol=1e-9)
    assert fast.optimality_gap == pytest.approx(slow.optimality_gap, rel=1e-4)


# float32: 9 epochs over the data, and at most one measurement of the last parameters
@pytest.mark.parametrize(("dtype", "passes"), [("float64", (0,)), ("float32", (9, 10))])
def test_float64_full_batch_epochs_read_no_data(
    dtype: str, passes: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64 takes every epoch from the factor; float32 its first, then goes over the data
    in its own arithmetic."""
    X, y, _ = _float64_data()
    data = Dataset(X=X, y=y, feature_names=["a", "b", "c"], target_name="y", source="test")
    seen: list[int] = []
    epoch = _SUMS_EPOCH

    def spy(self: object, model: torch.nn.Linear, source: object, blocks: object) -> object:
        seen.append(1)
        return epoch(self, model, source, blocks)  # type: ignore[arg-type]

    monkeypatch.setattr(regression.epochs._Sums, "epoch", spy)
    config = TrainConfig(epochs=10, tol=0.0, dtype=dtype, device="cpu")  # type: ignore[arg-type]
    result = run_training(config, data=data)
    assert len(result.history) == 10
    assert len(seen) in passes


def test_a_wide_near_exact_fit_trains() -> None:
    """20 features (a chunk of X has fewer rows than one of y alone) fitting exactly, so the
    least squares go through the TSQR and the evaluation pairs streamed chunks of X and y."""
    config = TrainConfig(samples=60_000, features=20, noise=0.0, dtype="float64", device="cpu")
    assert regression.data.chunk_rows(20) < regression.data.chunk_rows(1)
    result = run_training(config)
    assert result.ols.method == "tsqr"
    assert result.optimality_gap is None  # an exact fit
    np.testing.assert_allclose(result.ols.weight, np.asarray(config.weights), atol=1e-10)
