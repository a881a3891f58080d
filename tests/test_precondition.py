"""Issue 14: the epoch strategies, whitening (--precondition), the best epoch, and an honest
exit status (--require-converged, exit 3)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from certified import PONTIUS_B, WAMPLER1_B, WAMPLER2_B
from conftest import assert_one_error, clean_env, expect_exit, run_linreg

from regression import artifacts
from regression.batches import StreamSource
from regression.checkpoint import RunIdentity, load_checkpoint, save_checkpoint
from regression.config import TrainConfig
from regression.data import Dataset
from regression.datafile import load_dataset
from regression.distributed import SINGLE
from regression.epochs import (
    STREAM_BLOCK_ROWS,
    BlockEpochs,
    FactorEpochs,
    FactorFirstEpochs,
    GraphedEpochs,
    MiniBatchEpochs,
    SlicedEpochs,
    SumEpochs,
    choose_epochs,
)
from regression.errors import ConfigError
from regression.model import Scaling
from regression.pipeline import AUTO_WHITEN_CONDITION, run_training
from regression.report import metrics_document
from regression.statistics import condition_numbers
from regression.train import Checkpointer, LoopState, train

DATA = Path(__file__).parent / "data"


def cpu(**options: object) -> TrainConfig:
    return TrainConfig(device="cpu", dtype="float64", **options)  # type: ignore[arg-type]


# -- the strategy, chosen once ---------------------------------------------------------------


def fake_source(device: str, n: int = 100, dtype: torch.dtype = torch.float32) -> object:
    """What choose_epochs reads of a source: it needs no data and no device."""
    return SimpleNamespace(device=torch.device(device), n=n, d=2, dtype=dtype)


@pytest.mark.parametrize(
    ("source", "config", "factored", "kind"),
    [
        (fake_source("cpu"), TrainConfig(batch_size=10), True, MiniBatchEpochs),
        (fake_source("cuda"), TrainConfig(batch_size=10), False, MiniBatchEpochs),
        (fake_source("cpu", dtype=torch.float64), TrainConfig(), True, FactorEpochs),
        (fake_source("cpu"), TrainConfig(), True, FactorFirstEpochs),
        (fake_source("cpu"), TrainConfig(), False, SumEpochs),
        (fake_source("cpu"), TrainConfig(batch_size=100), False, SumEpochs),  # B >= N
        (fake_source("cuda"), TrainConfig(), True, GraphedEpochs),
        (fake_source("mps"), TrainConfig(), True, BlockEpochs),
    ],
)
def test_each_strategy_is_chosen_where_it_should_be(
    source: object, config: TrainConfig, factored: bool, kind: type
) -> None:
    """The one decision of how epochs run, with its reason."""
    choice = choose_epochs(source, config, sizes=[100], world=SINGLE, factored=factored)  # type: ignore[arg-type]
    assert choice.kind is kind
    assert choice.reason


def test_a_streamed_full_batch_on_a_gpu_goes_through_slices() -> None:
    """Rows streamed from disk (more than one block) cannot be one resident block."""
    n = STREAM_BLOCK_ROWS + 1
    X, y = np.zeros((n, 2)), np.zeros(n)
    source = StreamSource(
        X, y, Scaling.identity(2), device=torch.device("cpu"), dtype=torch.float32
    )
    source.device = torch.device("cuda")  # what the choice reads; nothing is copied
    choice = choose_epochs(source, TrainConfig(), sizes=[n], world=SINGLE, factored=True)
    assert choice.kind is SlicedEpochs
    source.n = STREAM_BLOCK_ROWS  # one block: resident, a captured graph
    assert choose_epochs(
        source, TrainConfig(), sizes=[n - 1], world=SINGLE, factored=True
    ).kind is (GraphedEpochs)


def test_train_reports_the_strategy_it_ran() -> None:
    X = torch.linspace(0, 1, 50, dtype=torch.float64).reshape(-1, 1)
    y = 2 * X + 1
    trained = train(X, y, config=cpu(epochs=5), lr=0.5)
    assert trained.strategy is not None and trained.strategy.kind is SumEpochs
    batched = train(X, y, config=cpu(epochs=2, batch_size=10), lr=0.1)
    assert batched.strategy is not None and batched.strategy.kind is MiniBatchEpochs


# -- whitening -------------------------------------------------------------------------------


def correlated(target: float, n: int = 400) -> Dataset:
    """Three features in unlike units, two of them equal up to 1/target of their spread, so
    the standardized features' condition number (of their singular values) is about 2 target."""
    rng = np.random.default_rng(5)
    a, c = rng.normal(size=n), rng.normal(size=n)
    b = a + rng.normal(size=n) / target
    X = np.stack([a, b, c], 1) * np.array([3.0, 0.01, 50.0]) + np.array([10.0, -4.0, 1000.0])
    y = X @ np.array([1.5, -200.0, 0.02]) + 3.0 + 0.1 * rng.normal(size=n)
    return Dataset(X=X, y=y, feature_names=["a", "b", "c"], target_name="y", source="test")


def lstsq(data: Dataset) -> tuple[np.ndarray, float]:
    """np.linalg.lstsq on centered, column-scaled features (the well-posed form)."""
    mean = data.X.mean(axis=0)
    design = np.column_stack([data.X - mean, np.ones(data.samples)])
    scale = np.abs(design).max(axis=0)
    solution = np.linalg.lstsq(design / scale, data.y, rcond=None)[0] / scale
    return solution[:-1], float(solution[-1] - solution[:-1] @ mean)


@pytest.mark.parametrize("target", [1e2, 1e4, 1e6, 1e9])
def test_whitening_reaches_least_squares_whatever_the_conditioning(target: float) -> None:
    """In at most 50 epochs (here 2 or 3) whitened descent meets the float64 reference: the
    optimality gap at rounding level, and the predictions of np.linalg.lstsq to 1e-7 of
    std(y). Coefficients along the near-collinear direction are determined only to about
    eps * cond^2 relative (the residuals' part of a backward-stable solve's error), so they
    are compared at 10 eps cond^2 (at least 1e-9, at most 1e-3; measured: 7e-12 at cond 2e2,
    3e-8 at 2e4, 5e-7 at 2e6, 1.4e-6 at 2e9)."""
    data = correlated(target)
    result = run_training(cpu(precondition="whiten"), data=data)
    condition = condition_numbers(result.ols)[1]
    assert condition is not None and target < condition < 10 * target
    assert len(result.history) <= 50 and result.converged
    # at rounding level: 1e-9, or eps cond where that is larger (the whitening transform is
    # as accurate as the factor it comes from; measured 1.6e-8 at cond 2e9 on an AVX-512 CPU)
    gap_rounding = max(1e-9, np.finfo(np.float64).eps * condition)
    assert result.optimality_gap is not None and result.optimality_gap < gap_rounding
    weight, bias = lstsq(data)
    predicted = data.X @ result.params.weight + result.params.bias
    reference = data.X @ weight + bias
    assert np.max(np.abs(predicted - reference)) < 1e-7 * data.y.std()
    rtol = min(1e-3, max(1e-9, 10 * np.finfo(np.float64).eps * condition**2))
    np.testing.assert_allclose(result.params.weight, weight, rtol=rtol)
    assert result.not_converged is None


@pytest.mark.parametrize("target", [1e4, 1e6])
def test_standardized_descent_does_not_get_there_in_50_epochs(target: float) -> None:
    """What whitening fixes: the same problems, standardized, are far off after 50 epochs."""
    result = run_training(cpu(precondition="standardize", epochs=50), data=correlated(target))
    assert result.optimality_gap is not None and result.optimality_gap > 1e-6
    assert result.not_converged is not None and "--precondition whiten" in result.not_converged


def test_auto_whitens_ill_conditioned_data_only() -> None:
    ill = run_training(cpu(), data=correlated(1e6))
    assert ill.precondition is not None and ill.precondition.name == "whiten"
    assert ill.precondition.condition > AUTO_WHITEN_CONDITION
    assert "auto" in ill.precondition.reason
    well = run_training(cpu(), data=load_dataset(DATA / "norris.csv", None))
    assert well.precondition is not None and well.precondition.name == "standardize"
    assert well.precondition.condition <= AUTO_WHITEN_CONDITION
    decayed = run_training(cpu(weight_decay=0.01), data=correlated(1e6))
    assert decayed.precondition is not None and decayed.precondition.name == "standardize"


def test_whiten_refuses_weight_decay() -> None:
    with pytest.raises(ConfigError, match="weight-decay"):
        TrainConfig(precondition="whiten", weight_decay=0.1)
    with pytest.raises(ConfigError, match="precondition"):
        TrainConfig(precondition="orthogonal")


def test_whitened_inputs_are_uncorrelated_and_map_back_to_data_units() -> None:
    data = correlated(1e4)
    result = run_training(cpu(precondition="whiten"), data=data)
    scaling = result.scaling
    assert scaling.transform is not None
    u = scaling.apply(data.X)
    np.testing.assert_allclose(np.cov(u, rowvar=False, bias=True), np.eye(3), atol=1e-8)
    w_u = np.array([0.3, -1.2, 2.0])
    weight, bias = scaling.to_data_units(w_u, 0.7)
    # the transform's entries are about cond times those of u: rounding grows by as much
    np.testing.assert_allclose(data.X @ weight + bias, u @ w_u + 0.7, rtol=1e-7, atol=1e-7)


def test_whitening_leaves_out_a_duplicated_column() -> None:
    """A column equal to another spans nothing new: its whitened input is 0 and the fit is
    the least-squares one."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=200)
    X = np.stack([a, 2 * a + 1, rng.normal(size=200)], 1)
    y = X[:, 0] - X[:, 2] + 0.1 * rng.normal(size=200)
    data = Dataset(X=X, y=y, feature_names=["a", "b", "c"], target_name="y", source="test")
    result = run_training(cpu(precondition="whiten"), data=data)
    assert result.scaling.transform is not None
    assert np.count_nonzero(np.all(np.abs(result.scaling.transform) < 1e-300, axis=0)) == 1
    assert result.optimality_gap is not None and abs(result.optimality_gap) < 1e-9


def test_float32_whitened_training_does_not_diverge() -> None:
    result = run_training(TrainConfig(device="cpu", precondition="whiten"), data=correlated(1e6))
    assert all(np.isfinite(result.history)) and len(result.history) <= 50
    assert result.optimality_gap is not None and result.optimality_gap < 1e-3


# -- certified problems, default options -----------------------------------------------------


def polynomial(coefficients: tuple[float, ...]) -> Dataset:
    """Wampler1 and Wampler2's model: x = 0..20, features x..x^5, y exactly the polynomial."""
    x = np.arange(21.0)
    X = np.stack([x**k for k in range(1, len(coefficients))], 1)
    y = sum(c * x**k for k, c in enumerate(coefficients))
    names = [f"x{k}" for k in range(1, len(coefficients))]
    return Dataset(X=X, y=np.asarray(y), feature_names=names, target_name="y", source="poly")


@pytest.mark.parametrize(
    ("name", "certified"),
    [("pontius", PONTIUS_B), ("wampler1", WAMPLER1_B), ("wampler2", WAMPLER2_B)],
)
def test_certified_problems_train_to_their_digits_in_50_epochs(
    name: str, certified: tuple[float, ...]
) -> None:
    """NIST StRD: Pontius to a gap below 1e-9, the exact fits Wampler1 and Wampler2 to their
    certified coefficients within 1e-7 relative, with default options and float64."""
    data = load_dataset(DATA / "pontius.csv", None) if name == "pontius" else polynomial(certified)
    result = run_training(cpu(), data=data)
    assert len(result.history) <= 50 and result.not_converged is None
    trained = np.array([result.params.bias, *result.params.weight])
    if result.optimality_gap is not None:
        assert result.optimality_gap < 1e-9
    np.testing.assert_allclose(trained, certified, rtol=1e-7)


# -- the best epoch --------------------------------------------------------------------------


def oscillating() -> tuple[torch.Tensor, torch.Tensor, TrainConfig, float]:
    """Two correlated features and heavy momentum with a long step: the loss goes up and
    down, and its lowest value is not at the end."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(500, 1, generator=generator, dtype=torch.float64)
    X = torch.cat([a, a + 0.3 * torch.randn(500, 1, generator=generator, dtype=torch.float64)], 1)
    y = X @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64) + 0.5
    return X, y, cpu(epochs=37, tol=0.0, momentum=0.95), 0.9


def test_the_model_keeps_the_epoch_with_the_lowest_loss() -> None:
    X, y, config, lr = oscillating()
    trained = train(X, y, config=config, lr=lr)
    history = trained.history
    best = int(np.argmin(history))
    assert best + 1 < len(history) and history[-1] > 10 * history[best]  # it oscillates
    assert trained.best_epoch == best + 1
    with torch.no_grad():
        loss = torch.nn.MSELoss()(trained.model(X), y).item()
    assert loss == pytest.approx(history[best], rel=1e-12)


def test_a_resumed_run_keeps_the_same_best_epoch() -> None:
    X, y, config, lr = oscillating()
    saved: list[LoopState] = []
    reference = train(X, y, config=config, lr=lr, checkpointer=Checkpointer(saved.append, 10))
    state = next(s for s in saved if s.epoch == 30)
    assert state.best is not None and state.best[0] < 30
    resumed = train(X, y, config=config, lr=lr, resume=state)
    assert resumed.best_epoch == reference.best_epoch
    assert torch.equal(resumed.model.weight, reference.model.weight)
    assert torch.equal(resumed.model.bias, reference.model.bias)


def test_a_checkpoint_holds_the_best_epoch(tmp_path: Path) -> None:
    X, y, config, lr = oscillating()
    saved: list[LoopState] = []
    train(X, y, config=config, lr=lr, checkpointer=Checkpointer(saved.append, 30))
    identity = RunIdentity(config="x", data_sha256="0" * 64, lr=lr, momentum=0.95)
    save_checkpoint(tmp_path / "checkpoint.safetensors", saved[0], identity)
    loaded = load_checkpoint(tmp_path / "checkpoint.safetensors", identity)
    assert saved[0].best is not None and loaded.best is not None
    assert loaded.best[:2] == saved[0].best[:2]
    assert torch.equal(loaded.best[2], saved[0].best[2])
    assert torch.equal(loaded.best[3], saved[0].best[3])


def test_a_rising_loss_is_a_warning_and_the_start_is_kept() -> None:
    """A step 10 % past the stability limit of standardized descent (lr 1.1 with L = 2): the
    error grows by 1.2 an epoch, the loss ends above the first epoch's, which is said, and
    the model keeps the zero start, the lowest loss recorded."""
    rng = np.random.default_rng(4)
    X = rng.normal(5.0, 2.0, size=(300, 1))
    y = 3 * X[:, 0] - 1 + 0.1 * rng.normal(size=300)
    data = Dataset(X=X, y=y, feature_names=["x"], target_name="y", source="test")
    config = cpu(precondition="standardize", lr=1.1, epochs=12, tol=0.0)
    result = run_training(config, data=data)
    assert all(np.isfinite(result.history)) and result.history[-1] > result.history[0]
    assert any(w.startswith("the training loss rose") for w in result.warnings)
    assert result.best_epoch == 1 and metrics_document(result)["best_epoch"] == 1
    assert np.all(result.params.weight == 0) and result.params.bias == 0


def test_mini_batches_keep_the_epoch_with_the_lowest_full_batch_loss() -> None:
    """Each mini-batch epoch's parameters are measured from the factor: the model is that of
    the run stopped at its best epoch."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2000, 2))
    y = X @ np.array([1.0, -1.0]) + 0.5 * rng.normal(size=2000)
    data = Dataset(X=X, y=y, feature_names=["a", "b"], target_name="y", source="test")
    config = cpu(batch_size=4, lr=0.2, epochs=8, tol=0.0)
    result = run_training(config, data=data)
    assert 1 <= result.best_epoch <= 8
    stopped = run_training(replace(config, epochs=result.best_epoch), data=data)
    np.testing.assert_array_equal(stopped.params.weight, result.params.weight)
    assert stopped.params.bias == result.params.bias


# -- the command line ------------------------------------------------------------------------

LONGLEY = str(DATA / "longley.csv")
STOPPED = ("--data", LONGLEY, "--target", "y", "--dtype", "float64", "--epochs", "5")
STOPPED += ("--precondition", "standardize", "--no-plot")


def test_require_converged_exits_3_with_the_run_written(tmp_path: Path) -> None:
    result = expect_exit(
        run_linreg("train", *STOPPED, "--require-converged", "-q", "--out", "run", cwd=tmp_path),
        3,
    )
    line = assert_one_error(result, "training did not converge", "5 epochs", "whiten")
    assert line.startswith("error: training did not converge")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["config.toml", "history.csv", "metrics.json", artifacts.MODEL_FILE]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(w.startswith("training did not converge") for w in metrics["warnings"])


def test_without_the_flag_not_converging_is_a_warning_even_with_quiet(tmp_path: Path) -> None:
    result = expect_exit(run_linreg("train", *STOPPED, "-q", "--out", "run", cwd=tmp_path), 0)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: training did not converge")


def test_a_converging_run_passes_require_converged(tmp_path: Path) -> None:
    args = ("--data", LONGLEY, "--target", "y", "--dtype", "float64", "--no-plot")
    result = expect_exit(
        run_linreg("train", *args, "--require-converged", "-q", "--out", "r", cwd=tmp_path), 0
    )
    assert result.stderr == "" and result.stdout == ""


def test_require_converged_needs_a_tolerance(tmp_path: Path) -> None:
    result = run_linreg("train", "--tol", "0", "--require-converged", cwd=tmp_path)
    assert_one_error(expect_exit(result, 2), "--require-converged", "--tol")


def test_a_whitened_model_file_predicts_like_its_metrics(tmp_path: Path) -> None:
    pontius = str(DATA / "pontius.csv")
    expect_exit(
        run_linreg(
            "train", "--data", pontius, "--precondition", "whiten", "--no-plot", "--out", "w",
            cwd=tmp_path,
        ),
        0,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["precondition"] == "whiten" and metrics["standardize"] is True
    assert metrics["precondition_reason"] == "--precondition whiten"
    assert isinstance(metrics["best_epoch"], int) and metrics["epoch_strategy"]
    model = artifacts.load_model(tmp_path / "w" / artifacts.MODEL_FILE)
    assert model.precondition == "whiten"
    assert model.scaling_transform is not None and model.scaling_transform.shape == (2, 2)
    predicted = expect_exit(
        run_linreg(
            "predict", tmp_path / "w" / artifacts.MODEL_FILE, "--data", pontius, cwd=tmp_path
        ),
        0,
    ).stdout.split()
    assert predicted[0] == "prediction"
    data = load_dataset(DATA / "pontius.csv", None)
    expected = data.X @ np.array(metrics["params"]["weight"]) + metrics["params"]["bias"]
    np.testing.assert_allclose(np.array(predicted[1:], dtype=float), expected, rtol=1e-9)


def test_a_model_file_whose_transform_was_removed_is_refused(tmp_path: Path) -> None:
    data = load_dataset(DATA / "pontius.csv", None)
    result = run_training(cpu(precondition="whiten"), data=data)
    model = artifacts.ModelFile(
        weight=result.params.weight,
        bias=result.params.bias,
        feature_names=tuple(data.feature_names),
        target_name=data.target_name,
        scaling_mean=result.scaling.mean,
        scaling_scale=result.scaling.scale,
        linear_weight=result.linear_weight,
        linear_bias=result.linear_bias,
        standardize=True,
        dtype="float64",
        precondition="whiten",
        scaling_transform=None,
    )
    artifacts.save_model(tmp_path / "m.safetensors", model)
    with pytest.raises(artifacts.ModelFileError, match="precondition"):
        artifacts.load_model(tmp_path / "m.safetensors")


def metrics_of(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = f"run{len(list(tmp_path.iterdir()))}"
    expect_exit(
        run_linreg("train", *args, "--no-plot", "-q", "--out", out, cwd=tmp_path, env=env), 0
    )
    metrics: dict[str, object] = json.loads((tmp_path / out / "metrics.json").read_text())
    return metrics


def test_standardize_flags_are_aliases_of_precondition(tmp_path: Path) -> None:
    assert metrics_of(tmp_path, "--no-standardize")["precondition"] == "none"
    assert metrics_of(tmp_path, "--standardize")["precondition"] == "standardize"
    env = clean_env({"LINREG_PRECONDITION": "whiten"})
    assert metrics_of(tmp_path, env=env)["precondition"] == "whiten"
    # the command line's alias wins over the environment's option, as any option would
    assert metrics_of(tmp_path, "--no-standardize", env=env)["precondition"] == "none"
    both = run_linreg("train", "--standardize", "--precondition", "whiten", cwd=tmp_path)
    assert_one_error(expect_exit(both, 2), "--precondition", "--standardize")
    bogus = run_linreg("train", "--precondition", "bogus", cwd=tmp_path)
    assert_one_error(expect_exit(bogus, 2), "--precondition", "bogus")


def test_print_config_shows_the_preconditioner(tmp_path: Path) -> None:
    printed = expect_exit(run_linreg("train", "--print-config", cwd=tmp_path), 0).stdout
    assert 'precondition = "auto"' in printed.splitlines()
    assert not any(line.startswith("standardize") for line in printed.splitlines())
