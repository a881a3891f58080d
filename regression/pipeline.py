"""One training run from data to results: what ``linreg train`` asks of the library."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import CHECKPOINT_FILE, ModelFile, model_from_bytes, safetensors_file
from .batches import (
    Source,
    StandardizingSource,
    StreamSource,
    TensorSource,
    max_row_norm2,
    memory_mapped,
)
from .checkpoint import RunIdentity, load_checkpoint, save_checkpoint
from .config import TrainConfig, to_toml
from .data import (
    BackgroundDigest,
    Dataset,
    fingerprint,
    gather,
    moments,
    shard,
    split,
    synthetic,
)
from .datafile import load_dataset, table_options
from .device import resolve_device
from .distributed import SINGLE, World
from .errors import ConfigError, DataError, ModelFileError
from .metrics import (
    Fit,
    FitState,
    LeastSquares,
    least_squares,
    linear_fit,
    linear_fits,
    optimality_gap,
)
from .model import WHITEN_RCOND, Scaling, target_tensor, to_training_tensor
from .statistics import (
    ResidualRun,
    Statistics,
    chunk_residual_run,
    collinearity_warning,
    ols_statistics,
    trained_distance,
)
from .threads import single_threaded
from .train import Checkpointer, Curvature, FullBatchLoss, ProgressCallback, Trained, train


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
    data: Dataset  # the training rows
    val_data: Dataset | None  # the hold-out rows
    device: str
    scaling: Scaling
    linear_weight: np.ndarray  # the trained nn.Linear parameters, in training units
    linear_bias: float
    params: Params
    true_params: Params | None
    ols: LeastSquares
    figure_rows: np.ndarray  # the training rows the figure shows (all, or a seeded sample)
    predicted: np.ndarray  # the trained model's predictions on those rows
    train: Fit
    val: Fit | None
    optimality_gap: float | None
    confidence: float  # level of the statistics' intervals
    history: list[float]
    val_history: list[float] | None
    converged: bool
    lr: float
    momentum: float
    seconds: float
    train_seconds: float  # from the start to a trained model: data, reference, loop
    warnings: list[str]
    data_sha256: str  # of the training rows (see data.fingerprint)
    val_samples: int  # held-out rows, of all ranks
    durbin_watson: float | None = None  # of the least-squares residuals, in row order
    precondition: Precondition | None = None  # the training units, and why
    best_epoch: int = 0  # the epoch whose parameters the model has (see train._keep_best)
    strategy: str = ""  # how the epochs ran, and why (see epochs.choose_epochs)
    # why training did not converge, and what to try (None when it did); also in warnings
    not_converged: str | None = None
    dropped_rows: int = 0  # rows left out for missing values, of all ranks
    parent: Parent | None = None  # the model it started from (--init-model, update)
    new_samples: int | None = None  # linreg update: the rows read now (the rest: the parent's)

    def statistics(self) -> Statistics:
        """The least-squares inference (imports SciPy, so only computed when asked for), and
        how far the trained parameters are from the solution it describes."""
        stats = ols_statistics(
            self.ols,
            self.data.feature_names,
            self.ols.tss,
            self.confidence,
            durbin_watson=self.durbin_watson,
        )
        trained = trained_distance(
            stats,
            self.params.weight,
            self.params.bias,
            optimality_gap=self.optimality_gap,
            converged=self.converged,
        )
        return replace(stats, trained=trained)

    @property
    def train_samples(self) -> int:
        return self.ols.samples  # of all ranks

    @property
    def samples(self) -> int:
        return self.train_samples + self.val_samples


def run_training(
    config: TrainConfig,
    *,
    data: Dataset | None = None,
    confidence: float = 0.95,
    progress: ProgressCallback | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    world: World = SINGLE,
    update: bool = False,
) -> RunResult:
    """Make or read the data, hold out a validation share, fit the rest, and measure the fit
    against the least-squares optimum.

    ``config.init_model`` starts nn.Linear from that model's parameters (mapped into this
    run's training units). ``update`` (linreg update) also folds the new rows into that
    model's least-squares state: the reference, the statistics and the standardization are
    those of every row seen so far, and training runs on that state (float64, full batch).

    With ``config.checkpoint_every`` the loop state goes to ``run_dir``'s checkpoint file
    every that many epochs and when ``should_stop`` stops it; ``resume`` continues from that
    file (refused unless it was written by this version for the same options and data).
    """
    start = time.perf_counter()
    parent = load_parent(config.init_model, update=update) if config.init_model else None
    if data is None and update:
        assert parent is not None and config.data is not None
        data, parent = read_update_rows(parent, config)
    if data is None:
        data = (
            load_dataset(
                config.data,
                world=world,
                options=table_options(config),
                fmt=config.format,
                stream=config.batch_size > 0,
            )
            if config.data
            else synthetic(config)
        )
    if parent is not None:
        parent.check_features(data.feature_names)
    with single_threaded(data.X.nbytes < SMALL_DATA_BYTES):  # and the count put back
        return _run(
            config,
            data,
            start,
            confidence,
            progress,
            run_dir,
            resume,
            should_stop,
            world,
            parent=parent,
            update=update,
        )


@dataclass(frozen=True)
class Parent:
    """The model a run starts from (--init-model, linreg update): where, its SHA-256, and
    what it holds."""

    path: Path
    sha256: str
    model: ModelFile

    def check_features(self, names: tuple[str, ...]) -> None:
        """The data's features must be the model's, in its order (exit 2 otherwise)."""
        mine = self.model.feature_names
        if names == mine:
            return
        lost = [n for n in mine if n not in names]
        new = [n for n in names if n not in mine]
        parts = [f"missing from the data: {', '.join(lost)}"] if lost else []
        parts += [f"not in the model: {', '.join(new)}"] if new else []
        raise DataError(
            f"{self.path} has other features than the data ("
            + ("; ".join(parts) or f"in another order: {', '.join(mine)}")
            + "); start from a model of the same features, or train without it"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "version": self.model.version,
            "samples": self.model.state.samples if self.model.state is not None else None,
        }


def load_parent(path: str, *, update: bool) -> Parent:
    """The model file at ``path`` (refused like any model file when it is not a complete
    linreg model); ``update`` needs its least-squares state."""
    import hashlib

    raw = safetensors_file(Path(path), "model")  # read once: the digest is of what is loaded
    model = model_from_bytes(raw, Path(path))
    if update and model.state is None:
        raise ModelFileError(
            f"{path} carries no least-squares state (written by linreg {model.version}, "
            "before update existed): train a model on all rows with this version first"
        )
    return Parent(path=Path(path), sha256=hashlib.sha256(raw).hexdigest(), model=model)


def read_update_rows(parent: Parent, config: TrainConfig) -> tuple[Dataset, Parent]:
    """The new rows of linreg update, read with the parent model's columns and --missing
    policy (a row it drops is left out), and the parent as they see it.

    Where new rows can move the encoding (categorical levels, fill values: see
    ``folding``), both sides are brought to the encoding of all their rows together, the
    one ``linreg train`` would choose on them; otherwise the rows are encoded as the
    model's were."""
    from . import folding
    from .predict import read_for_model
    from .tables import Encoding

    assert config.data is not None
    model = parent.model
    encoding = None if model.encoding is None else Encoding.from_json(model.encoding)
    if encoding is not None and folding.moves(encoding):
        options = folding.read_options(encoding, config.target)
        new = load_dataset(config.data, options=options, fmt=config.format)
        model, data = folding.fold(model, new, label=config.data)
        return data, replace(parent, model=model)
    X, y, kept, _, _ = read_for_model(parent.model, config.data, config.target, fmt=config.format)
    if y is None:
        raise DataError(
            f"{config.data}: has no target column {parent.model.target_name!r} "
            "(--target names another)"
        )
    rows = kept & ~np.isnan(y)
    if parent.model.encoding is None and not rows.all():  # plain numbers: no missing policy
        first = int(np.flatnonzero(~rows)[0])
        raise DataError(f"{config.data}: data row {first + 1} has a missing value")
    if not rows.any():
        raise DataError(f"{config.data}: has no rows with values to fold in")
    data = Dataset(
        X=np.ascontiguousarray(X[rows]),
        y=np.ascontiguousarray(y[rows], dtype=np.float64),
        feature_names=parent.model.feature_names,
        target_name=parent.model.target_name,
        source=config.data,
        encoding=encoding,
        dropped=int((~rows).sum()),
    )
    return data, parent


def _run(
    config: TrainConfig,
    data: Dataset,
    start: float,
    confidence: float,
    progress: ProgressCallback | None,
    run_dir: Path | None,
    resume: bool,
    should_stop: Callable[[], bool] | None,
    world: World,
    *,
    parent: Parent | None = None,
    update: bool = False,
) -> RunResult:
    device = resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    # rows dropped for missing values: each rank's, when each read its own share
    dropped = int(world.sum(data.dropped)) if data.sharded else data.dropped
    # under torchrun each rank keeps its contiguous shard (a view) and splits that
    data, val_data = split(shard(data, world), fraction=config.val_fraction, seed=config.seed)
    X, y = data.X, data.y
    sums = moments(X, y, world=world)  # one pass: standardization and least squares
    ols = least_squares(X, y, world, sums=sums)
    state = None
    if update:  # every row so far: the parent's state and these rows' merged
        assert parent is not None and parent.model.state is not None
        state = parent.model.state.merge(FitState.of(ols))
        ols, sums = state.least_squares(), state.moments()
    stats = sums.column_stats(data.features)
    warnings = [
        f"feature {name!r} is constant in the training data: its weight is 0 and the "
        "intercept carries its value"
        for name, std in zip(data.feature_names, stats.std, strict=True)
        if std == 0
    ]
    if dropped:
        policy = data.encoding.missing if data.encoding is not None else config.missing
        why = "--missing drop" if policy == "drop" else "the target was missing"
        warnings.insert(0, f"{dropped} row(s) with missing values were dropped ({why})")
    precondition = choose_precondition(config, ols, Scaling(mean=stats.mean, scale=stats.scale))
    scaling = precondition.scaling
    _check_representable(config, dtype)
    source = _source(X, y, scaling, config=config, device=device, dtype=dtype, world=world)
    lr, momentum = _auto_step(config, source, ols, scaling, world)
    val = None
    if val_data is not None:
        val = (
            to_training_tensor(val_data.X, scaling, device=device, dtype=dtype),
            target_tensor(val_data.y, device=device, dtype=dtype),
        )
    data_sha256: str | None = None
    checkpointer = None
    identity = None
    if config.checkpoint_every or resume:  # checkpoints name the data
        data_sha256 = fingerprint(data, world)
        identity = RunIdentity(
            config=to_toml(config.to_dict()),
            data_sha256=data_sha256,
            lr=lr,
            momentum=momentum,
            validation=val is not None,
        )
        if config.checkpoint_every and world.is_main:  # one rank writes; all hold the same
            checkpointer = _checkpointer(
                _checkpoint_path(run_dir), identity, config.checkpoint_every
            )
    trained = train(
        source,
        config=config,
        lr=lr,
        momentum=momentum,
        val=val,
        progress=progress,
        resume=load_checkpoint(_checkpoint_path(run_dir), identity)
        if identity and resume
        else None,
        checkpointer=checkpointer,
        should_stop=should_stop,
        world=world,
        optimum=ols.mse,
        full_batch_loss=_full_batch_loss(ols, scaling),
        initial=None
        if parent is None
        else scaling.from_data_units(parent.model.weight, parent.model.bias),
    )
    train_seconds = time.perf_counter() - start
    collinear = collinearity_warning(ols)  # for the record: training does not need it
    if collinear is not None:
        warnings.append(collinear)
    # the data's digest is for the record: a thread computes it beside the evaluation pass
    local_digest = BackgroundDigest(data) if data_sha256 is None else None
    linear_weight = trained.model.weight.detach().cpu().numpy().astype(np.float64).reshape(-1)
    linear_bias = float(trained.model.bias.detach().cpu().item())
    weight, bias = scaling.to_data_units(linear_weight, linear_bias)
    # The metrics are those of the reported parameters, evaluated in float64: what
    # `linreg predict` gives, and free of the training dtype's rounding (so the optimality
    # gap is not negative beyond float64 rounding). One pass gives them, those of the
    # least-squares parameters and the Durbin-Watson statistic of its residuals.
    runs: list[ResidualRun] = []
    if state is not None:  # over every row so far: from the state (no Durbin-Watson)
        fit, ls_fit = state.fit(weight, bias), state.fit(ols.weight, ols.bias)
    else:
        fit, ls_fit = linear_fits(
            X,
            y,
            [(weight, bias), (ols.weight, ols.bias)],
            world,
            each=lambda chunk, y_rows: runs.append(chunk_residual_run(chunk, y_rows, ols)),
        )
    if local_digest is not None:
        data_sha256 = fingerprint(data, world, local=local_digest.result())
    assert data_sha256 is not None
    val_fit = None
    if val_data is not None:
        val_fit = linear_fit(val_data.X, val_data.y, weight, bias, world)
    figure_rows = _figure_rows(data.samples)
    figure_inputs = to_training_tensor(gather(X, figure_rows), scaling, device=device, dtype=dtype)
    y_mean_square = ols.tss / ols.samples + ols.y_mean**2
    # the optimum's mse by the same float64 arithmetic as the learned one, so that the gap
    # compares like with like (and is not negative by rounding)
    gap = optimality_gap(fit.mse, ls_fit.mse, y_mean_square)
    history = trained.history
    if history and history[-1] > history[0]:
        warnings.append(
            f"the training loss rose from {history[0]:.6g} (epoch 1) to {history[-1]:.6g} "
            f"(epoch {len(history)}); the model has the parameters of epoch "
            f"{trained.best_epoch}, the lowest loss recorded"
        )
    not_converged = _not_converged(config, trained, gap, precondition)
    if not_converged is not None:
        warnings.append(not_converged)
    assert trained.strategy is not None
    return RunResult(
        dropped_rows=dropped,
        config=config,
        data=data,
        val_data=val_data,
        device=str(device),
        scaling=scaling,
        linear_weight=linear_weight,
        linear_bias=linear_bias,
        params=Params(weight, bias),
        true_params=(
            Params(np.asarray(config.weights), config.bias) if data.source == "synthetic" else None
        ),
        ols=ols,
        figure_rows=figure_rows,
        predicted=_predict(trained.model, figure_inputs),
        train=fit,
        val=val_fit,
        optimality_gap=gap,
        confidence=confidence,
        history=trained.history,
        val_history=trained.val_history,
        converged=trained.converged,
        lr=lr,
        momentum=momentum,
        seconds=time.perf_counter() - start,
        train_seconds=train_seconds,
        warnings=warnings,
        data_sha256=data_sha256,
        val_samples=int(world.sum(val_data.samples if val_data else 0)),
        durbin_watson=_durbin_watson(ResidualRun.concat(runs), world),
        precondition=precondition,
        best_epoch=trained.best_epoch,
        strategy=f"{trained.strategy.kind.name}: {trained.strategy.reason}",
        not_converged=not_converged,
        parent=parent,
        new_samples=data.samples if update else None,
    )


def _not_converged(
    config: TrainConfig, trained: Trained, gap: float | None, precondition: Precondition
) -> str | None:
    """Why the run did not converge, and what to try; None if it did: the stopping rule was
    met and, where the optimum is known, the optimality gap is at most --tol (``--tol 0``
    runs every epoch and is not judged)."""
    epochs = len(trained.history)
    if config.tol == 0:  # every epoch was asked for: no stopping rule to judge by
        return None
    if trained.converged and (gap is None or gap <= config.tol):
        return None
    if trained.converged:
        where = f"the loss settled after {epochs} epochs"
    else:
        where = f"the stopping rule was not met in {epochs} epochs"
    if gap is not None:
        where += f", optimality gap {gap:.3g}" + (
            f" > --tol {config.tol:g}" if gap > config.tol else ""
        )
    tries = []
    if precondition.name != "whiten" and precondition.condition > AUTO_WHITEN_CONDITION:
        tries.append("--precondition whiten")
    if not trained.converged and epochs == config.epochs:
        tries.append("more --epochs")
    if config.lr is not None:
        tries.append("--lr auto")
    if trained.strategy is not None and not trained.strategy.kind.full_batch:
        tries.append("a larger --batch-size (0: the full batch)")
    if config.dtype == "float32":
        tries.append("--dtype float64")
    if not tries:
        tries.append("a larger --tol")
    return f"training did not converge: {where}; try {', '.join(tries)}"


def _full_batch_loss(ols: LeastSquares, scaling: Scaling) -> FullBatchLoss:
    """The training rows' loss as a function of the parameters (see FullBatchLoss), from
    the least-squares factor of the centered rows: with z = (x - m) / s the centered inputs
    are (x - mean(x)) / s, whose factor is r with column j divided by s_j (and, whitened,
    that times the transform)."""
    return FullBatchLoss(
        samples=ols.samples,
        factor=scaling.factor(ols.r),
        target=ols.qty,
        tail=ols.rss_tail,
        input_mean=scaling.apply(ols.x_mean),
        target_mean=ols.y_mean,
    )


# --precondition auto whitens where the standardized features' curvature has a condition
# number above this: heavy-ball descent needs about sqrt(condition) epochs per digit, so
# standardized descent takes a few epochs a digit up to here, and many more beyond
AUTO_WHITEN_CONDITION = 30.0


@dataclass(frozen=True)
class Precondition:
    """The training units a run uses, and why."""

    name: str  # none, standardize or whiten
    scaling: Scaling
    reason: str
    condition: float  # of the Hessian over standardized features: _standardized_condition


def choose_precondition(
    config: TrainConfig, ols: LeastSquares, standardized: Scaling
) -> Precondition:
    """The training units of ``config.precondition`` (``standardized``: the features'
    standardization). ``auto`` whitens where standardized descent would be slow (the
    condition number above AUTO_WHITEN_CONDITION) unless weight decay is asked for, which
    penalizes the standardized weights."""
    choice = config.precondition
    condition = _standardized_condition(ols, standardized)
    if choice == "auto" and config.weight_decay:
        reason = "auto: --weight-decay penalizes the standardized weights"
        choice = "standardize"
    elif choice == "auto":
        above = condition > AUTO_WHITEN_CONDITION
        reason = (
            f"auto: the standardized features' condition number {condition:.3g} "
            f"{'>' if above else '<='} {AUTO_WHITEN_CONDITION:g}"
        )
        choice = "whiten" if above else "standardize"
    else:
        reason = f"--precondition {choice}"
    scaling = {
        "none": lambda: Scaling.identity(standardized.mean.shape[0]),
        "standardize": lambda: standardized,
        "whiten": lambda: standardized.whitened(ols.r, ols.samples),
    }[choice]()
    return Precondition(choice, scaling, reason, condition)


def _standardized_condition(ols: LeastSquares, standardized: Scaling) -> float:
    """The condition number of the loss's Hessian over standardized inputs [z, 1]: z is
    centered, so its eigenvalues are those of Cov(z), the squared singular values of the
    standardized factor over N, and 1 (the intercept), times 2. From the singular values,
    not from eigenvalues of R'R, which lose every digit beyond a condition of 1e16;
    directions the data does not span are left out, as whitening leaves them out."""
    singular = np.linalg.svd(ols.r / standardized.scale, compute_uv=False)
    kept = singular[singular > singular[0] * WHITEN_RCOND] if singular.size else singular
    eigenvalues = np.append(kept**2 / ols.samples, 1.0)
    return float(eigenvalues.max() / eigenvalues.min())


def _curvature(ols: LeastSquares, scaling: Scaling, weight_decay: float) -> Curvature:
    """The curvature of the loss over the training inputs, from the least-squares factor
    (Xc'Xc = R'R), without another pass over the data."""
    n, scale = ols.samples, scaling.scale
    shift = scaling.apply(ols.x_mean)  # mean of the training inputs
    if scaling.transform is None:
        centered = (ols.r.T @ ols.r) / (n * np.outer(scale, scale))
    else:  # from the whitened factor, whose product is close to I (R'R would square cond)
        factor = scaling.factor(ols.r)
        centered = (factor.T @ factor) / n
    return Curvature.of(centered + np.outer(shift, shift), shift, weight_decay)


def _checkpoint_path(run_dir: Path | None) -> Path:
    return (run_dir or Path(".")) / CHECKPOINT_FILE


def _checkpointer(path: Path, identity: RunIdentity, every: int) -> Checkpointer:
    return Checkpointer(lambda state: save_checkpoint(path, state, identity), every)


def _durbin_watson(local: ResidualRun, world: World) -> float | None:
    """Over the training rows of all ranks in file order: each rank holds a contiguous shard,
    so their residual runs join in rank order."""
    runs = world.gather(local.as_array())
    return ResidualRun.concat([ResidualRun.from_array(run) for run in runs]).durbin_watson


# Below this size of X a run is a few hundred microseconds of small operations, for which
# torch's threads cost more than they bring: each wake-up of OpenMP's team takes longer here
# than the operation. Such runs use one thread (and put torch's count back after).
SMALL_DATA_BYTES = 4 << 20

FIGURE_ROWS = 5000  # rows drawn in the figure's scatter plots (a seeded sample beyond that)


@functools.lru_cache(maxsize=4)
def _figure_rows(n: int) -> np.ndarray:
    """The rows the figure shows: all, or a sample seeded by n alone (read only: cached)."""
    rows = (
        np.arange(n)
        if n <= FIGURE_ROWS
        else np.random.default_rng(0).choice(n, FIGURE_ROWS, replace=False)
    )
    rows.sort()
    rows.flags.writeable = False
    return rows


def _source(
    X: np.ndarray,
    y: np.ndarray,
    scaling: Scaling,
    *,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    world: World,
) -> Source:
    """Mini-batches of a memory-mapped file are streamed from disk (memory stays bounded); a
    float64 CPU full batch of float64 data in memory gets the in-place reader (it costs
    nothing to make, and the loop reads no rows at all: its epochs come from the factor, see
    FullBatchLoss); everything else is copied once to the device, standardized, in the
    training dtype."""
    if config.batch_size > 0 and memory_mapped(X):
        return StreamSource(X, y, scaling, device=device, dtype=dtype)
    target = target_tensor(y, device=device, dtype=dtype)
    full_batch = config.batch_size == 0 or config.batch_size >= X.shape[0]
    if (
        full_batch
        and device.type == "cpu"
        and dtype == torch.float64
        and not world.distributed
        and StandardizingSource.accepts(X)
    ):
        return StandardizingSource(X, target, scaling)
    return TensorSource(to_training_tensor(X, scaling, device=device, dtype=dtype), target)


def _check_representable(config: TrainConfig, dtype: torch.dtype) -> None:
    """Step sizes the optimizer cannot hold in the training dtype are usage errors."""
    largest = torch.finfo(dtype).max
    for name in ("lr", "weight_decay"):
        value = getattr(config, name)
        if value is not None and value > largest:
            raise ConfigError(name, f"must be at most {largest:g} in {config.dtype}", value)


def _predict(model: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Predictions back on the host as float64 NumPy."""
    with torch.no_grad():
        predicted: np.ndarray = model(inputs).reshape(-1).detach().cpu().numpy()
    return predicted.astype(np.float64)


def _auto_step(
    config: TrainConfig, source: Source, ols: LeastSquares, scaling: Scaling, world: World
) -> tuple[float, float]:
    """The step size and momentum: as given, or derived from the curvature of the loss.

    The second moments of the training inputs come from the least-squares factor
    (Xc'Xc = R'R), without another pass over the data.
    """
    n = ols.samples
    curvature = _curvature(ols, scaling, config.weight_decay)
    if config.lr is not None:
        return config.lr, config.momentum or 0.0
    if 0 < config.batch_size < n:
        # the largest row over every rank: all ranks must take the same step
        largest = max(float(part[0]) for part in world.gather(np.array([max_row_norm2(source)])))
        lr = curvature.minibatch_lr(n, config.batch_size, largest)
        return lr, config.momentum or 0.0
    if config.momentum is None:
        return curvature.heavy_ball()
    return curvature.gradient_descent_lr(), config.momentum
