"""The training loop: ``nn.Linear`` + ``torch.optim.SGD`` on ``nn.MSELoss``, full batch or
shuffled mini-batches, with early stopping. How an epoch runs is a strategy chosen once
(see epochs.py). The loop never prints: progress goes to a callback."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from .batches import Source, TensorSource
from .config import TrainConfig
from .distributed import SINGLE, World
from .epochs import (
    SUMMED_MSE,
    Choice,
    Epochs,
    FullBatchLoss,
    Gate,
    Loop,
    StopInEpoch,
    _momentum_buffer,
    build_epochs,
    choose_epochs,
    row_blocks,
)
from .errors import DivergedError, TrainingStopped
from .model import build_model
from .optim import sgd

__all__ = ["FullBatchLoss", "train"]

# The last parameters are kept unless their loss is above the lowest recorded by more than
# the stopping tolerance, or than this many units of the training dtype's rounding (a loss
# at the optimum varies by about that from epoch to epoch)
KEEP_MARGIN_EPS = 1000


@dataclass(frozen=True)
class Progress:
    """What the loop reports after each epoch."""

    epoch: int
    epochs: int
    loss: float
    elapsed: float  # seconds since training started
    val_loss: float | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Trained:
    model: torch.nn.Linear  # with the kept parameters (see best_epoch)
    history: list[float]  # mean training loss of each epoch run
    val_history: list[float] | None  # validation loss after each epoch, with a hold-out
    converged: bool  # the early-stopping rule was met
    lr: float
    # the epoch whose parameters the model holds: the last, unless an earlier epoch's
    # full-batch loss was lower than the last parameters' (see _keep_best)
    best_epoch: int = 0
    strategy: Choice | None = None  # how the epochs ran, and why


@dataclass(frozen=True)
class LoopState:
    """Everything needed to continue training, bit for bit, after ``epoch`` epochs."""

    epoch: int  # epochs completed
    weight: torch.Tensor  # nn.Linear parameters, on the CPU, in the training dtype
    bias: torch.Tensor
    momentum: tuple[torch.Tensor | None, torch.Tensor | None]  # SGD buffers (weight, bias)
    shuffle_state: torch.Tensor  # the mini-batch order generator, before the next epoch
    history: tuple[float, ...]
    val_history: tuple[float, ...] | None
    previous_loss: float  # early-stopping state
    stalled: int
    # the lowest full-batch loss so far: (epoch, loss, weight, bias), on the CPU
    best: tuple[int, float, torch.Tensor, torch.Tensor] | None = None


class Checkpointer:
    """Where the loop sends its state: every ``every`` epochs, and when it is stopped."""

    def __init__(self, save: Callable[[LoopState], None], every: int) -> None:
        self.save = save
        self.every = every


def train(
    X: torch.Tensor | Source,
    y: torch.Tensor | None = None,
    *,
    config: TrainConfig,
    lr: float,
    momentum: float | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    resume: LoopState | None = None,
    checkpointer: Checkpointer | None = None,
    should_stop: Callable[[], bool] | None = None,
    world: World = SINGLE,
    optimum: float | None = None,
    read_every: int | None = None,
    full_batch_loss: FullBatchLoss | None = None,
    initial: tuple[np.ndarray, float] | None = None,
) -> Trained:
    """Fit ``nn.Linear`` to the training rows: ``X`` and ``y`` tensors on the training
    device, or a Source that yields them (see batches.py).

    Full batch: one SGD step per epoch on the exact gradient of the mean squared error.
    Mini-batches: the rows are cut into contiguous blocks of ``config.batch_size``, visited
    in a new random order every epoch (seeded). epochs.choose_epochs says how each epoch
    runs. ``momentum`` overrides ``config.momentum`` (which may be None for "auto").
    ``val`` is a hold-out (X, y) whose loss is recorded after every epoch. ``resume``
    continues from a saved state. ``should_stop`` is asked after every step; when it says
    yes the loop saves the state of the last whole epoch (if checkpointing) and raises
    TrainingStopped. ``optimum`` is the least-squares mean squared error of the training
    rows (of every rank), if known: see EarlyStopping. ``read_every``: epochs between reads
    of the loss (default: the strategy's, every epoch on the CPU, CUDA_READ_EVERY on CUDA).
    ``full_batch_loss``: the training rows' loss as a function of the parameters, if known
    (see FullBatchLoss): CPU full batches take epochs from it, and mini-batch runs measure
    the full-batch loss of each epoch's parameters with it. ``initial``: the (weight, bias)
    in training units the model starts from (a warm start), instead of zeros.

    The model returned holds the parameters of the lowest full-batch loss recorded (see
    _keep_best). Under torchrun (``world``) each rank holds a shard; the model is wrapped
    in DistributedDataParallel, whose gradient averaging is scaled so that every step uses
    the gradient of the rows of all ranks together: a full-batch step is the
    single-process step.
    """
    # prepare: the model, its optimizer, the strategy, the stopping rule, the saved state
    source = X if isinstance(X, Source) else TensorSource(X, _given(y))
    sizes = world.shard_sizes(int(world.sum(source.n))) if world.distributed else [source.n]
    model = build_model(source.d, device=source.device, dtype=source.dtype)
    if initial is not None:
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(initial[0]).reshape(1, -1))
            model.bias.fill_(float(initial[1]))
    optimizer = _optimizer(model, config, lr, momentum, source)
    choice = choose_epochs(
        source, config, sizes=sizes, world=world, factored=full_batch_loss is not None
    )
    # the optimum is only used where the loss is exact enough to compare with it, and where
    # the strategy can skip a step
    exact = choice.kind.can_skip_step and source.dtype == torch.float64 and not config.weight_decay
    stopper = EarlyStopping(
        tol=config.tol,
        patience=config.patience,
        optimum=optimum if exact else None,
        rounding=0.0
        if full_batch_loss is None
        else EarlyStopping.rounding_of(source.dtype, full_batch_loss.target_mean_square),
    )
    # Reading a loss waits for the device: on CUDA the losses are kept there and read every
    # ``read_every`` epochs (the stopping rule then acts up to that many epochs late). Where a
    # loss decides that epoch's step (the optimum) or is summed over ranks, it is read at once.
    if exact or world.distributed:
        read_every = 1
    shuffle = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    val_history: list[float] | None = None if val is None else []
    val_n = int(world.sum(val[0].shape[0])) if val is not None else 0
    first_epoch = 1
    gate = Gate(
        hold=stopper.at_optimum if exact else None,
        deferred=False,
        value_of=full_batch_loss.value if full_batch_loss is not None else None,
    )
    if resume is not None:
        _restore(resume, model, optimizer, shuffle, stopper, gate)
        history = list(resume.history)
        val_history = list(resume.val_history) if resume.val_history is not None else None
        first_epoch = resume.epoch + 1
    net = _wrapped(model, world)
    loop = Loop(
        model=model,
        net=net,
        optimizer=optimizer,
        source=source,
        blocks=row_blocks(source, source.n if choice.kind.full_batch else config.batch_size),
        total_n=sum(sizes),
        world=world,
        gate=gate,
    )
    epochs = build_epochs(
        choice,
        loop,
        config=config,
        sizes=sizes,
        first_epoch=first_epoch,
        shuffle=shuffle,
        should_stop=should_stop,
        factor=full_batch_loss,
    )
    read_every = read_every or epochs.read_every
    gate.deferred = read_every > 1

    def snapshot(epoch: int) -> LoopState:  # without the histories: see _with_history
        return _snapshot(epoch, model, optimizer, shuffle, stopper, gate)

    # a stop inside a mini-batch epoch goes back to the epoch's start, so that state is kept;
    # other epochs stop only between epochs, where the current state is the one to save
    mark = snapshot(first_epoch - 1) if epochs.stops_mid_epoch and should_stop else None
    pending: list[tuple[torch.Tensor | float, torch.Tensor | None]] = []  # unread (loss, val)
    converged = False
    start = time.perf_counter()

    def report(epoch: int, loss: float, val_loss: float | None) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(Progress(epoch, config.epochs, loss, elapsed, val_loss))

    # the loop: epoch, record, stop, checkpoint
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            try:
                epoch_loss = epochs.run(epoch)
            except StopInEpoch:
                assert mark is not None
                _stop(mark, history, val_history, checkpointer)
            pending.append((epoch_loss, _val_sum(model, val, world)))
            stopping = should_stop is not None and _any_rank(world, should_stop())
            saving = checkpointer is not None and epoch % checkpointer.every == 0
            if not (len(pending) >= read_every or stopping or saving or epoch == config.epochs):
                continue
            done = _record(pending, epoch, history, val_history, stopper, report, lr, val_n)
            gate.settle(epoch - len(pending) + 1, history[-len(pending) :])
            pending = []
            converged = converged or done
            if saving:
                assert checkpointer is not None
                checkpointer.save(_with_history(snapshot(epoch), history, val_history))
            if mark is not None:
                mark = snapshot(epoch)
            if done:
                break
            if stopping:
                _stop(mark or snapshot(epoch), history, val_history, checkpointer)
        margin = max(config.tol, KEEP_MARGIN_EPS * torch.finfo(source.dtype).eps)
        best_epoch = _keep_best(epochs, gate, history, margin)
    finally:
        epochs.close()
    return Trained(model, history, val_history, converged, lr, best_epoch, choice)


def _optimizer(
    model: torch.nn.Linear,
    config: TrainConfig,
    lr: float,
    momentum: float | None,
    source: Source,
) -> torch.optim.SGD:
    # one parameter group unless the weights alone decay: each group is one more update call
    groups = (
        [
            {"params": [model.weight], "weight_decay": config.weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ]
        if config.weight_decay
        else [{"params": [model.weight, model.bias], "weight_decay": 0.0}]
    )
    return sgd(
        groups,
        lr=lr,
        momentum=momentum if momentum is not None else (config.momentum or 0.0),
        cpu=source.device.type == "cpu",
    )


def _wrapped(model: torch.nn.Linear, world: World) -> torch.nn.Module:
    """The model, in DistributedDataParallel under torchrun."""
    if not world.distributed:
        return model
    device = model.weight.device
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _val_sum(
    model: torch.nn.Linear, val: tuple[torch.Tensor, torch.Tensor] | None, world: World
) -> torch.Tensor | None:
    """The hold-out's sum of squares (of every rank)."""
    if val is None:
        return None
    with torch.no_grad():
        val_sum: torch.Tensor = SUMMED_MSE(model(val[0]), val[1]).detach()
    if world.distributed:
        return torch.tensor(world.sum(val_sum.item()), dtype=torch.float64)
    return val_sum


def _keep_best(epochs: Epochs, gate: Gate, history: list[float], margin: float) -> int:
    """Never a worse model than the run had: unless the last parameters' full-batch loss is
    within ``margin`` (relative) of the lowest recorded, the model gets the parameters of the
    lowest back. Returns the epoch whose parameters the model holds.

    A full-batch epoch's loss is that of the parameters it started from: when the last
    epoch's is the lowest, or within ``margin`` of it (a run at its rounding floor), the run
    ended where it was best and its last step is kept. Otherwise the final parameters are
    measured once (without a step). A mini-batch epoch's parameters are measured after it
    (from the factor, where known; without it the last parameters are kept)."""
    last = len(history)
    if gate.params is None or gate.epoch in (0, last):
        return last
    if epochs.full_batch:
        if history[-1] <= gate.loss * (1 + margin):
            return last
        final = epochs.loss_now()
    else:
        final = gate.last
    if final <= gate.loss * (1 + margin):
        return last
    with torch.no_grad():
        epochs.loop.model.weight.copy_(gate.params[0])
        epochs.loop.model.bias.copy_(gate.params[1])
    return gate.epoch


def _record(
    pending: list[tuple[torch.Tensor | float, torch.Tensor | None]],
    last: int,
    history: list[float],
    val_history: list[float] | None,
    stopper: EarlyStopping,
    report: Callable[[int, float, float | None], None],
    lr: float,
    val_n: int,
) -> bool:
    """Read the losses of epochs ``last - len(pending) + 1`` to ``last`` (one wait for the
    device), record them and feed the stopping rule; True when it is met."""
    if len(pending) == 1:
        values = [float(pending[0][0])]
    else:  # on the device: one read for all
        losses = [torch.as_tensor(loss, dtype=torch.float64) for loss, _ in pending]
        values = torch.stack(losses).tolist()
    val_values: list[float | None] = [None] * len(pending)
    if val_history is not None:
        sums = [val.to(torch.float64) for _, val in pending if val is not None]
        val_values = [value / val_n for value in torch.stack(sums).tolist()]
    done = False
    for offset, (loss, val_loss) in enumerate(zip(values, val_values, strict=True)):
        epoch = last - len(pending) + 1 + offset
        if not math.isfinite(loss):
            raise DivergedError(
                f"the training loss became {loss} at epoch {epoch} with --lr {lr:g}; "
                "lower --lr, keep --standardize, or use --lr auto"
            )
        history.append(loss)
        if val_history is not None and val_loss is not None:
            val_history.append(val_loss)
        report(epoch, loss, val_loss)
        done = stopper.update(loss) or done
    return done


def _any_rank(world: World, flag: bool) -> bool:
    """All ranks stop together: a signal seen by one is acted on by all (no rank is left
    waiting in a collective)."""
    return bool(world.sum(float(flag)) > 0) if world.distributed else flag


def _given(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise TypeError("train(X, y): y is required when X is a tensor")
    return y


def _stop(
    state: LoopState,
    history: list[float],
    val_history: list[float] | None,
    checkpointer: Checkpointer | None,
) -> NoReturn:
    if checkpointer is not None:
        checkpointer.save(_with_history(state, history, val_history))
    raise TrainingStopped(state.epoch, saved=checkpointer is not None)


def _with_history(
    state: LoopState, history: list[float], val_history: list[float] | None
) -> LoopState:
    """``state`` with the histories of its epochs (snapshots leave them out: copying them
    every epoch would cost O(epochs) an epoch)."""
    return dataclasses.replace(
        state,
        history=tuple(history[: state.epoch]),
        val_history=None if val_history is None else tuple(val_history[: state.epoch]),
    )


def _snapshot(
    epoch: int,
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
    gate: Gate,
) -> LoopState:
    def buffer(param: torch.Tensor) -> torch.Tensor | None:
        value = _momentum_buffer(optimizer, param)
        return None if value is None else value.detach().cpu().clone()

    return LoopState(
        epoch=epoch,
        weight=model.weight.detach().cpu().clone(),
        bias=model.bias.detach().cpu().clone(),
        momentum=(buffer(model.weight), buffer(model.bias)),
        shuffle_state=shuffle.get_state(),
        history=(),
        val_history=None,
        previous_loss=stopper.previous,
        stalled=stopper.stalled,
        best=None
        if gate.params is None
        else (
            gate.epoch,
            gate.loss,
            gate.params[0].detach().cpu().clone(),
            gate.params[1].detach().cpu().clone(),
        ),
    )


def _restore(
    state: LoopState,
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
    gate: Gate,
) -> None:
    with torch.no_grad():
        model.weight.copy_(state.weight)
        model.bias.copy_(state.bias)
    for param, value in zip((model.weight, model.bias), state.momentum, strict=True):
        if value is not None:
            optimizer.state[param]["momentum_buffer"] = value.to(param.device).clone()
    shuffle.set_state(state.shuffle_state)
    stopper.previous = state.previous_loss
    stopper.stalled = state.stalled
    if state.best is not None:
        gate.epoch, gate.loss = state.best[0], state.best[1]
        device = model.weight.device
        gate.params = (state.best[2].to(device).clone(), state.best[3].to(device).clone())


class EarlyStopping:
    """Met when the epoch loss has changed by at most ``tol`` (relative to the previous
    epoch's) for ``patience`` epochs in a row. A loss that rises by more than that is not
    settling, and resets the count like an improvement does. ``tol == 0`` never stops.

    ``optimum``, the least-squares loss when it is known exactly enough (float64 full-batch
    training without weight decay): a loss within ``tol**2`` (relative) of it is met at
    once. No epoch can then improve the loss by more than ``tol``, and the parameters are
    within ``tol`` of the least-squares ones in the data's own metric (the gap is the
    squared distance ``(w - w*)' H (w - w*)`` over the optimal loss), so waiting ``patience``
    epochs to see the loss settle would only repeat the optimum.

    ``rounding``: a change within the loss's rounding in the training dtype also counts as
    settled, ``rounding * sqrt(loss)`` (see ``rounding_of``): near the optimum of a float32
    run the loss can step between two values further apart than ``tol`` for ever, or jump
    about on an exact fit, where nothing better is left to find."""

    def __init__(
        self,
        *,
        tol: float,
        patience: int,
        optimum: float | None = None,
        rounding: float = 0.0,
    ) -> None:
        self.tol = tol
        self.patience = patience
        self.optimum = optimum if optimum is not None and optimum > 0 else None
        self.rounding = rounding
        self.previous = math.inf
        self.stalled = 0
        self.converged = False

    def update(self, loss: float) -> bool:
        """Record one epoch's loss; True when training should stop."""
        if self.tol == 0:
            return False
        change = abs(loss - self.previous)
        settled = math.isfinite(self.previous) and (
            change <= self.tol * abs(self.previous)
            or change <= self.rounding * math.sqrt(max(self.previous, 0.0))
        )
        self.stalled = self.stalled + 1 if settled else 0
        self.previous = loss
        self.converged = self.stalled >= self.patience or self.at_optimum(loss)
        return self.converged

    @staticmethod
    def rounding_of(dtype: torch.dtype, target_mean_square: float) -> float:
        """The ``rounding`` of a mean squared error computed in ``dtype``: each residual
        r = x @ w + b - y is off by about eps |y|, so the loss (the mean of r^2) by about
        2 eps E[|r| |y|] <= 2 eps sqrt(loss) sqrt(E[y^2])."""
        return 2.0 * torch.finfo(dtype).eps * math.sqrt(target_mean_square)

    def at_optimum(self, loss: float) -> bool:
        """Whether ``loss`` is within ``tol**2`` of the optimum: the loop then keeps the
        parameters it was measured at (it skips that epoch's step, as a step with momentum
        may overshoot) and stops."""
        if self.tol == 0 or self.optimum is None:
            return False
        return loss <= self.optimum * (1 + self.tol**2)


@dataclass(frozen=True)
class Curvature:
    """The extreme eigenvalues of the Hessian of the loss over inputs a = [z, 1] (z the
    training features): H = 2 E[a a^T], plus the weight decay. They fix the step sizes."""

    largest: float  # L: the full-batch smoothness
    smallest: float  # mu: the smallest curvature the data has (0-curvature directions left out)

    @classmethod
    def of(cls, second_moment: np.ndarray, mean: np.ndarray, weight_decay: float) -> Curvature:
        d = mean.shape[0]
        gram = np.empty((d + 1, d + 1))
        gram[:d, :d] = second_moment
        gram[:d, d] = gram[d, :d] = mean
        gram[d, d] = 1.0
        eigenvalues = np.linalg.eigvalsh(gram).tolist()  # ascending
        largest = 2.0 * eigenvalues[-1]
        # a constant or duplicated column adds a direction the loss does not change along:
        # the gradient never points there, so it does not limit the convergence
        smallest = 2.0 * next(value for value in eigenvalues if 2.0 * value > 1e-10 * largest)
        return cls(largest=largest + weight_decay, smallest=smallest + weight_decay)

    @property
    def condition(self) -> float:
        return self.largest / self.smallest

    def gradient_descent_lr(self) -> float:
        """1/L: the classic safe step; with one standardized feature it is exact Newton."""
        return 1.0 / self.largest

    def heavy_ball(self) -> tuple[float, float]:
        """Polyak's optimal heavy-ball step and momentum (torch SGD's momentum is that
        method): lr = 4 / (sqrt(L) + sqrt(mu))^2, momentum = ((sqrt(L) - sqrt(mu)) /
        (sqrt(L) + sqrt(mu)))^2. The error shrinks by (sqrt(k) - 1) / (sqrt(k) + 1) an
        epoch (k = L / mu) instead of gradient descent's (k - 1) / (k + 1); for k = 1 this is
        1/L with no momentum. The stability margin is about 1/k of L, so for badly
        conditioned data L is taken 0.1 % larger."""
        largest = self.largest * (1.001 if self.condition > 100 else 1.0)
        root_l, root_mu = math.sqrt(largest), math.sqrt(self.smallest)
        lr = 4.0 / (root_l + root_mu) ** 2
        momentum = ((root_l - root_mu) / (root_l + root_mu)) ** 2
        return lr, momentum

    def minibatch_lr(self, samples: int, batch_size: int, max_row_norm2: float) -> float:
        """With mini-batches of B rows the expected smoothness grows towards the single-row
        bound L_max = 2 (max |z|^2 + 1) (Gower et al., "SGD: general analysis and improved
        rates", 2019): L_B = (N - B) / (B (N - 1)) L_max + N (B - 1) / (B (N - 1)) L."""
        n, b = samples, min(batch_size, samples)
        smooth_max = 2.0 * (max_row_norm2 + 1.0)
        smooth = (n - b) / (b * (n - 1)) * smooth_max + n * (b - 1) / (b * (n - 1)) * self.largest
        return 1.0 / smooth
