"""The training loop: ``nn.Linear`` + ``torch.optim.SGD`` on ``nn.MSELoss``, full batch or
shuffled mini-batches, with early stopping. It never prints: progress goes to a callback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from .config import TrainConfig
from .errors import DivergedError, TrainingStopped
from .model import build_model


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
    model: torch.nn.Linear
    history: list[float]  # mean training loss of each epoch run
    val_history: list[float] | None  # validation loss after each epoch, with a hold-out
    converged: bool  # the early-stopping rule was met
    lr: float


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


class Checkpointer:
    """Where the loop sends its state: every ``every`` epochs, and when it is stopped."""

    def __init__(self, save: Callable[[LoopState], None], every: int) -> None:
        self.save = save
        self.every = every


def train(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    config: TrainConfig,
    lr: float,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    resume: LoopState | None = None,
    checkpointer: Checkpointer | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trained:
    """Fit ``nn.Linear`` to (X, y); X and y already live on the training device and dtype.

    ``val`` is a hold-out (X, y) whose loss is recorded after every epoch. ``resume``
    continues from a saved state. ``should_stop`` is asked after every step; when it says
    yes the loop saves the state of the last whole epoch (if checkpointing) and raises
    TrainingStopped.
    """
    n, d = X.shape
    model = build_model(d, device=X.device, dtype=X.dtype)
    optimizer = torch.optim.SGD(
        [
            {"params": [model.weight], "weight_decay": config.weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=config.momentum,
    )
    loss_fn = torch.nn.MSELoss()
    batch = n if config.batch_size == 0 else min(config.batch_size, n)
    shuffle = torch.Generator().manual_seed(config.seed)
    stopper = EarlyStopping(tol=config.tol, patience=config.patience)
    history: list[float] = []
    val_history: list[float] | None = None if val is None else []
    first_epoch = 1
    if resume is not None:
        _restore(resume, model, optimizer, shuffle, stopper)
        history = list(resume.history)
        val_history = list(resume.val_history) if resume.val_history is not None else None
        first_epoch = resume.epoch + 1
    state = _snapshot(first_epoch - 1, model, optimizer, shuffle, stopper, history, val_history)
    start = time.perf_counter()
    for epoch in range(first_epoch, config.epochs + 1):
        if batch == n:
            loss = loss_fn(model(X), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss = loss.item()
        else:
            order = torch.randperm(n, generator=shuffle).to(X.device)
            total = torch.zeros((), dtype=torch.float64, device=X.device)
            for first in range(0, n, batch):
                rows = order[first : first + batch]
                loss = loss_fn(model(X[rows]), y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * rows.numel()
                if should_stop is not None and first + batch < n and should_stop():
                    _stop(state, checkpointer)  # mid-epoch: back to the epoch's start
            epoch_loss = total.item() / n
        if not math.isfinite(epoch_loss):
            raise DivergedError(
                f"the training loss became {epoch_loss} at epoch {epoch} with --lr {lr:g}; "
                "lower --lr, keep --standardize, or use --lr auto"
            )
        history.append(epoch_loss)
        val_loss = None
        if val is not None and val_history is not None:
            with torch.no_grad():
                val_loss = loss_fn(model(val[0]), val[1]).item()
            val_history.append(val_loss)
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(Progress(epoch, config.epochs, epoch_loss, elapsed, val_loss))
        done = stopper.update(epoch_loss)
        if checkpointer is not None or should_stop is not None:
            state = _snapshot(epoch, model, optimizer, shuffle, stopper, history, val_history)
            if checkpointer is not None and epoch % checkpointer.every == 0:
                checkpointer.save(state)
        if done:
            break
        if should_stop is not None and should_stop():
            _stop(state, checkpointer)
    return Trained(
        model=model,
        history=history,
        val_history=val_history,
        converged=stopper.converged,
        lr=lr,
    )


def _stop(state: LoopState, checkpointer: Checkpointer | None) -> NoReturn:
    if checkpointer is not None:
        checkpointer.save(state)
    raise TrainingStopped(state.epoch, saved=checkpointer is not None)


def _snapshot(
    epoch: int,
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
    history: list[float],
    val_history: list[float] | None,
) -> LoopState:
    def buffer(param: torch.Tensor) -> torch.Tensor | None:
        value = optimizer.state.get(param, {}).get("momentum_buffer")
        return None if value is None else value.detach().cpu().clone()

    return LoopState(
        epoch=epoch,
        weight=model.weight.detach().cpu().clone(),
        bias=model.bias.detach().cpu().clone(),
        momentum=(buffer(model.weight), buffer(model.bias)),
        shuffle_state=shuffle.get_state(),
        history=tuple(history),
        val_history=tuple(val_history) if val_history is not None else None,
        previous_loss=stopper.previous,
        stalled=stopper.stalled,
    )


def _restore(
    state: LoopState,
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
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


class EarlyStopping:
    """Met when the epoch loss has changed by at most ``tol`` (relative to the previous
    epoch's) for ``patience`` epochs in a row. A loss that rises by more than that is not
    settling, and resets the count like an improvement does. ``tol == 0`` never stops."""

    def __init__(self, *, tol: float, patience: int) -> None:
        self.tol = tol
        self.patience = patience
        self.previous = math.inf
        self.stalled = 0
        self.converged = False

    def update(self, loss: float) -> bool:
        """Record one epoch's loss; True when training should stop."""
        if self.tol == 0:
            return False
        settled = math.isfinite(self.previous) and (
            abs(loss - self.previous) <= self.tol * abs(self.previous)
        )
        self.stalled = self.stalled + 1 if settled else 0
        self.previous = loss
        self.converged = self.stalled >= self.patience
        return self.converged


def auto_lr(
    *,
    second_moment: np.ndarray,
    mean: np.ndarray,
    samples: int,
    batch_size: int,
    max_row_norm2: float,
    weight_decay: float,
) -> float:
    """The step size 1/L, where L bounds the curvature of the loss seen by one SGD step.

    For MSE on inputs a = [z, 1] the Hessian is H = 2 E[a a^T]; its largest eigenvalue is the
    full-batch smoothness L, and with standardized features it is about 2 (one feature: the
    step 1/L lands on the minimum in one epoch). With mini-batches of B rows the expected
    smoothness grows towards the single-row bound 2 max|a|^2 (Gower et al., "SGD: general
    analysis and improved rates", 2019):
    L_B = (N - B) / (B (N - 1)) * L_max + N (B - 1) / (B (N - 1)) * L.
    ``weight_decay`` adds its own curvature.
    """
    d = mean.shape[0]
    gram = np.empty((d + 1, d + 1))
    gram[:d, :d] = second_moment
    gram[:d, d] = gram[d, :d] = mean
    gram[d, d] = 1.0
    smooth = 2.0 * float(np.linalg.eigvalsh(gram)[-1])
    n, b = samples, (samples if batch_size == 0 else min(batch_size, samples))
    if b < n:
        smooth_max = 2.0 * (max_row_norm2 + 1.0)
        smooth = (n - b) / (b * (n - 1)) * smooth_max + n * (b - 1) / (b * (n - 1)) * smooth
    return 1.0 / (smooth + weight_decay)
