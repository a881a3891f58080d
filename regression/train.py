"""The training loop: ``nn.Linear`` + ``torch.optim.SGD`` on ``nn.MSELoss``, full batch or
shuffled mini-batches, with early stopping. It never prints: progress goes to a callback."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np
import torch

from . import fused
from .batches import Source, StandardizingSource, StreamSource, TensorSource
from .config import TrainConfig
from .distributed import SINGLE, World
from .errors import DivergedError, TrainingStopped
from .model import build_model
from .optim import sgd, step
from .threads import CorePool


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


# Full-batch epochs on the CPU go through the data in slices of about this many bytes,
# accumulating the gradient: the slice and the temporaries of the forward and backward pass
# stay in the cache, so the data is read from memory about once per epoch, not several times.
CPU_SLICE_BYTES = 4 << 20

# float32 full batches in memory go through the fused epoch (regression.fused) where it was
# built; the tests turn it off to compare it with torch's
FUSED = True

# The loss: MSELoss's sum over rows (it holds no state, so one serves every run; built per run
# it would be a few percent of a small run's time)
SUMMED_MSE = torch.nn.MSELoss(reduction="sum")

# On CUDA the loop reads the epoch losses (a wait for the device) every this many epochs
CUDA_READ_EVERY = 16

T = TypeVar("T")


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
) -> Trained:
    """Fit ``nn.Linear`` to the training rows: ``X`` and ``y`` tensors on the training
    device, or a Source that yields them (see batches.py; a StandardizingSource is copied
    after its first MATERIALIZE_AFTER epochs).

    Full batch: one SGD step per epoch on the exact gradient of the mean squared error
    (summed slice by slice; on the CPU in closed form, see _Sums). Mini-batches: the rows
    are cut into contiguous blocks of ``config.batch_size``, visited in a new random order
    every epoch (seeded).
    ``momentum`` overrides ``config.momentum`` (which may be None for "auto").
    ``val`` is a hold-out (X, y) whose loss is recorded after every epoch. ``resume``
    continues from a saved state. ``should_stop`` is asked after every step; when it says
    yes the loop saves the state of the last whole epoch (if checkpointing) and raises
    TrainingStopped. ``optimum`` is the least-squares mean squared error of the training
    rows (of every rank), if known: see EarlyStopping. ``read_every``: epochs between reads
    of the loss (default: every epoch on the CPU, CUDA_READ_EVERY on CUDA).
    ``full_batch_loss``: the training rows' loss as a function of the parameters, if known
    (see FullBatchLoss); a CPU full batch then takes its epochs from it (float64: all of
    them, without a pass over the data; float32: the first).

    Under torchrun (``world``) each rank holds a shard; the model is wrapped in
    DistributedDataParallel, whose gradient averaging is scaled so that every step uses the
    gradient of the rows of all ranks together: a full-batch step is the single-process
    step. With mini-batches each rank cuts its shard into blocks of ``batch_size`` rows and
    all ranks take block k of their shards together (an effective batch of about
    ``batch_size`` x ranks rows), in an order drawn from the seed.
    """
    source = X if isinstance(X, Source) else TensorSource(X, _given(y))
    n, d = source.n, source.d
    sizes = world.shard_sizes(int(world.sum(n))) if world.distributed else [n]
    total_n = sum(sizes)
    model = build_model(d, device=source.device, dtype=source.dtype)
    net: torch.nn.Module = model
    if world.distributed:
        ids = [source.device.index] if source.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # one parameter group unless the weights alone decay: each group is one more update call
    groups = (
        [
            {"params": [model.weight], "weight_decay": config.weight_decay},
            {"params": [model.bias], "weight_decay": 0.0},
        ]
        if config.weight_decay
        else [{"params": [model.weight, model.bias], "weight_decay": 0.0}]
    )
    optimizer = sgd(
        groups,
        lr=lr,
        momentum=momentum if momentum is not None else (config.momentum or 0.0),
        cpu=source.device.type == "cpu",
    )
    loss_fn = SUMMED_MSE  # divided by N: the mean over the epoch
    params = [model.weight, model.bias]
    full_batch = config.batch_size == 0 or config.batch_size >= max(sizes)
    blocks = _blocks(source, n if full_batch else config.batch_size)
    steps = len(blocks) if full_batch else -(-max(sizes) // config.batch_size)
    step_rows = (  # rows of all ranks in each mini-batch step
        []
        if full_batch
        else [sum(_block_rows(size, config.batch_size, k) for size in sizes) for k in range(steps)]
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    # CPU full batches in closed form, slices shared by threads (see _Sums); elsewhere
    # autograd, and a one-block batch on a GPU as one captured graph
    closed_form = full_batch and not world.distributed and source.device.type == "cpu"
    # the epochs taken from the factor: all (float64) or the first (float32); see FullBatchLoss
    factored = (
        (math.inf if source.dtype == torch.float64 else 1)
        if closed_form and full_batch_loss is not None
        else 0
    )
    single = full_batch and len(blocks) == 1 and not world.distributed and not closed_form
    # the optimum is only used where the loss is exact enough to compare with it, and where
    # the loop can skip a step (a captured CUDA graph always steps)
    exact = (
        full_batch
        and source.dtype == torch.float64
        and not config.weight_decay
        and not (single and source.device.type == "cuda")
    )
    stopper = EarlyStopping(
        tol=config.tol, patience=config.patience, optimum=optimum if exact else None
    )
    history: list[float] = []
    val_history: list[float] | None = None if val is None else []
    val_n = int(world.sum(val[0].shape[0])) if val is not None else 0
    first_epoch = 1
    if resume is not None:
        _restore(resume, model, optimizer, shuffle, stopper)
        history = list(resume.history)
        val_history = list(resume.val_history) if resume.val_history is not None else None
        first_epoch = resume.epoch + 1

    def snapshot(epoch: int) -> LoopState:  # without the histories: see _with_history
        return _snapshot(epoch, model, optimizer, shuffle, stopper)

    # a stop inside a mini-batch epoch goes back to the epoch's start, so that state is kept;
    # full-batch epochs stop only between epochs, where the current state is the one to save
    mark = snapshot(first_epoch - 1) if not full_batch and should_stop is not None else None
    whole = source.rows(0, n) if single else None
    graphed = None
    if whole is not None and source.device.type == "cuda":
        graphed = _capture_step(model, optimizer, loss_fn, *whole)
    scale = world.size  # DistributedDataParallel averages gradients over the ranks
    # Reading a loss waits for the device: on CUDA the losses are kept there and read every
    # ``read_every`` epochs (the stopping rule then acts up to that many epochs late). Where a
    # loss decides that epoch's step (the optimum, see EarlyStopping) or is summed over ranks,
    # it is read at once.
    if exact or world.distributed:
        read_every = 1
    elif read_every is None:
        read_every = CUDA_READ_EVERY if source.device.type == "cuda" else 1
    pending: list[tuple[torch.Tensor | float, torch.Tensor | None]] = []  # unread (loss, val loss)
    converged = False
    epoch_loss: torch.Tensor | float  # a float where it is computed on the host
    sums = _Sums.start(len(blocks)) if closed_form and factored < math.inf else None
    start = time.perf_counter()

    def report(epoch: int, loss: float, val_loss: float | None) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(Progress(epoch, config.epochs, loss, elapsed, val_loss))

    try:
        for epoch in range(first_epoch, config.epochs + 1):
            if (
                isinstance(source, StandardizingSource)
                and epoch - first_epoch == StandardizingSource.MATERIALIZE_AFTER
                and epoch > factored
            ):
                source = source.materialize()  # a long run: the copy now costs less
            if graphed is not None:
                graphed.replay()  # forward, backward and SGD step as one CUDA graph
                epoch_loss = graphed.loss.detach().clone()
            elif whole is not None:  # one block on a GPU: the fewest operations an epoch
                _clear_grads(params)
                loss = loss_fn(model(whole[0]), whole[1]) / n
                loss.backward()
                epoch_loss = loss.detach()
                if not (exact and stopper.at_optimum(float(epoch_loss))):
                    step(optimizer)
            elif epoch <= factored:  # a CPU full batch, from the factor
                assert full_batch_loss is not None
                epoch_loss = full_batch_loss.mean(model)
                if not (exact and stopper.at_optimum(epoch_loss)):
                    step(optimizer)
            elif full_batch:
                _clear_grads(params)
                if sums is not None:
                    loss_sum = sums.epoch(model, source, blocks)
                else:
                    losses = []
                    for k, (first, last) in enumerate(blocks):  # slices of one batch: gradients add
                        X_rows, y_rows = source.rows(first, last)
                        with _sync_if(net, k + 1 == len(blocks)):
                            loss = loss_fn(net(X_rows), y_rows)
                            loss.backward()
                        losses.append(loss.detach())
                    loss_sum = torch.stack(losses).sum(dtype=torch.float64)
                # the sums of squares become the mean over the rows of every rank, once an epoch
                with torch.no_grad():
                    for param in params:
                        param.grad.mul_(scale / total_n)  # type: ignore[union-attr]
                # the mean in the training dtype: float32 runs report float32 losses
                epoch_loss = (loss_sum / total_n).to(source.dtype)
                if world.distributed:
                    epoch_loss = torch.tensor(world.sum(epoch_loss.item()), dtype=torch.float64)
                if not (exact and stopper.at_optimum(float(epoch_loss))):  # alike on every rank
                    step(optimizer)
            else:
                epoch_loss = torch.zeros((), dtype=torch.float64, device=source.device)
                order = torch.randperm(steps, generator=shuffle).tolist()
                for k, index in enumerate(order):
                    first, last = blocks[index] if index < len(blocks) else (n, n)
                    X_rows, y_rows = source.rows(first, last)
                    loss = loss_fn(net(X_rows), y_rows)
                    _clear_grads(params)
                    (loss * (scale / step_rows[index])).backward()
                    step(optimizer)
                    epoch_loss += loss.detach() / total_n
                    if not world.distributed and k + 1 < steps and should_stop and should_stop():
                        assert mark is not None
                        _stop(mark, history, val_history, checkpointer)
                if world.distributed:
                    epoch_loss = torch.tensor(world.sum(epoch_loss.item()), dtype=torch.float64)
            val_sum = None  # the hold-out's sum of squares
            if val is not None:
                with torch.no_grad():
                    val_sum = loss_fn(model(val[0]), val[1]).detach()
                if world.distributed:
                    val_sum = torch.tensor(world.sum(val_sum.item()), dtype=torch.float64)
            pending.append((epoch_loss, val_sum))
            stopping = should_stop is not None and _any_rank(world, should_stop())
            saving = checkpointer is not None and epoch % checkpointer.every == 0
            if not (len(pending) >= read_every or stopping or saving or epoch == config.epochs):
                continue
            done = _record(pending, epoch, history, val_history, stopper, report, lr, val_n)
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
    finally:
        if sums is not None:
            sums.close()
    return Trained(
        model=model,
        history=history,
        val_history=val_history,
        converged=converged,
        lr=lr,
    )


@dataclass(frozen=True)
class FullBatchLoss:
    """The full batch's summed MSELoss of nn.Linear and its gradient, for any parameters,
    from the least-squares factor of the training rows instead of the rows themselves.

    With the centered inputs z - mean(z) = Q @ factor (Q with orthonormal columns) and the
    centered target y - mean(y) = Q @ target + a part orthogonal to every column, of squared
    norm ``tail``, the residuals r = z @ w + b - y have

        sum(r^2)   = |factor @ w - target|^2 + tail + N c^2,   c = mean(z) @ w + b - mean(y)
        d/dw       = 2 factor' (factor @ w - target) + 2 N c mean(z)
        d/db       = 2 N c

    because the centered part of r sums to zero. That is the data's loss and gradient to
    float64 rounding, for D + 1 numbers a feature instead of N: the factor is the
    (D + 1)-row stand-in for the data that the QR factorization (or, where it is exact to
    rounding, the Cholesky factor of the moments) of the least-squares reference already
    computed (see metrics.least_squares and pipeline._full_batch_loss).

    float64 full-batch training on the CPU takes every epoch from it: the same steps as
    epochs over the data (tested against them) without reading the data again. float32 training
    takes only its first epoch from it (from the zero start, where every residual is -y),
    and then computes its epochs in float32 on the data, the arithmetic it was asked for.
    """

    samples: int
    factor: np.ndarray  # (D, D), upper triangular, in training units
    target: np.ndarray  # (D,)
    tail: float
    input_mean: np.ndarray  # (D,): mean(z)
    target_mean: float

    def mean(self, model: torch.nn.Linear) -> float:
        """Sets ``model``'s gradient of the mean loss over the rows; returns that loss (both
        rounded to the model's dtype)."""
        n, dtype = self.samples, model.weight.dtype
        weight = model.weight.detach().to(torch.float64).numpy()[0]
        gap = self.factor @ weight
        gap -= self.target
        offset = float(self.input_mean @ weight) + model.bias.item() - self.target_mean
        weight_grad = self.factor.T @ gap
        weight_grad *= 2.0 / n
        weight_grad += (2.0 * offset) * self.input_mean
        model.weight.grad = torch.from_numpy(weight_grad[None]).to(dtype)
        model.bias.grad = torch.tensor([2.0 * offset], dtype=dtype)
        loss = (float(gap @ gap) + self.tail) / n + offset**2
        return loss if dtype == torch.float64 else torch.tensor(loss, dtype=dtype).item()


class _Sums:
    """A CPU full-batch epoch: the summed MSELoss of nn.Linear over the rows and its gradient,
    in closed form. For the residuals r = X @ weight.T + bias - y, MSELoss(reduction="sum") is
    r . r and its gradient is 2 X.T r for the weight and 2 sum(r) for the bias: what autograd
    computes through nn.Linear and MSELoss, without its graph and general matrix products.

    float32 data in memory (contiguous, at most fused.MAX_FEATURES wide) goes through
    ``regression.fused``: each row is read once and all three sums come from it, one
    contiguous share of the rows per core.
    Elsewhere (float64 data read over, which is rare: see FullBatchLoss; or where the C loops
    were not built) torch computes them slice by slice, by matrix-vector products
    (dot products for one feature) on each cache-sized slice while it is in the cache, the
    slices dealt to the cores in turn: thread k takes slices k, k + T, k + 2T, ...
    Measured on 1e7 x 16 float32 (benchmarks/RESULTS.md): 2.9 passes over X an epoch through
    autograd, 1.6-3.2 by torch in closed form (the range is the VM's memory bandwidth), about
    1.0-1.3 fused; 1e8 x 1: 17.9, 3.5-5.6, about 2 fused (y is as large as X there).

    Either way each thread's sums are added in thread order, so the result does not depend on
    timing: runs are deterministic for a given number of threads.
    """

    def __init__(self, pool: CorePool | None) -> None:
        self.pool = pool
        self._arrays: tuple[Source, tuple[np.ndarray, np.ndarray] | None] | None = None

    @classmethod
    def start(cls, slices: int) -> _Sums:
        return cls(CorePool.start(slices))

    def epoch(
        self, model: torch.nn.Linear, source: Source, blocks: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Sets the gradient of ``model``'s summed loss over the rows of ``blocks``; returns
        the summed loss, in float64."""
        arrays = self._fused_arrays(source)
        if arrays is not None:
            return self._fused_epoch(model, *arrays)
        weight = model.weight.detach().reshape(-1)
        bias = model.bias.detach()

        def part(k: int, count: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
            return _slice_sums(source, blocks[k::count], weight, bias)

        parts = self._map(part)
        with torch.no_grad():
            model.weight.grad = _sum_in_order([g for _, g, _ in parts]).mul_(2).reshape(1, -1)
            model.bias.grad = _sum_in_order([g for _, _, g in parts]).mul_(2).reshape(1)
        count = len(parts)
        losses = [parts[k % count][0][k // count] for k in range(len(blocks))]
        return torch.stack(losses).sum(dtype=torch.float64)

    def _map(self, part: Callable[[int, int], T]) -> list[T]:
        """part(k, count) for k < count, one call per thread (count is the number of threads)."""
        if self.pool is None:
            return [part(0, 1)]
        count = self.pool.workers
        return list(self.pool.executor.map(lambda k: part(k, count), range(count)))

    def _fused_arrays(self, source: Source) -> tuple[np.ndarray, np.ndarray] | None:
        """The source's X and flat y as NumPy views, where the fused epoch takes them."""
        if self._arrays is None or self._arrays[0] is not source:
            arrays = None
            if (
                FUSED
                and isinstance(source, TensorSource)
                and source.device.type == "cpu"
                and source.dtype == source.y.dtype == torch.float32
                and source.d <= fused.MAX_FEATURES
                and source.X.is_contiguous()
                and source.y.is_contiguous()
                and not source.X.requires_grad
                and fused.available()
            ):
                arrays = (source.X.numpy(), source.y.reshape(-1).numpy())
            self._arrays = (source, arrays)
        return self._arrays[1]

    def _fused_epoch(self, model: torch.nn.Linear, X: np.ndarray, y: np.ndarray) -> torch.Tensor:
        weight = model.weight.detach().reshape(-1).numpy()
        bias = float(model.bias.detach())
        n, d = X.shape

        def part(k: int, count: int) -> np.ndarray:
            first, last = n * k // count, n * (k + 1) // count
            sums: np.ndarray = fused.sums(X[first:last], y[first:last], weight, bias)
            return sums

        parts = self._map(part)
        total = parts[0].copy()
        for more in parts[1:]:
            total += more
        with torch.no_grad():
            model.weight.grad = torch.from_numpy(total[:d] * 2).to(torch.float32).reshape(1, -1)
            model.bias.grad = torch.tensor([total[d + 1] * 2], dtype=torch.float32)
        return torch.tensor(total[d], dtype=torch.float64)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _slice_sums(
    source: Source, blocks: list[tuple[int, int]], weight: torch.Tensor, bias: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """For each block of rows, sum(r^2) with r = X @ weight + bias - y; and X.T r and sum(r)
    added up over the blocks in order (half the gradient of the summed squares)."""
    losses = []
    grad_weight = torch.zeros_like(weight)
    grad_bias = torch.zeros_like(bias)
    # one buffer for every block's residuals: a new one per block would be fresh memory,
    # whose page faults cost more than the arithmetic
    space = torch.empty(
        max((last - first for first, last in blocks), default=0), dtype=weight.dtype
    )
    for first, last in blocks:
        X_rows, y_rows = source.rows(first, last)
        target = y_rows.reshape(-1)
        residual = space[: last - first]
        if X_rows.shape[1] == 1:  # elementwise: a matrix product with one column is slow
            column = X_rows.reshape(-1)
            # y - (x w + b): the residual's negative, so the sums below are subtracted
            torch.addcmul(target, column, weight, value=-1, out=residual).sub_(bias)
            losses.append(residual.dot(residual))
            grad_weight -= column.dot(residual)
            grad_bias -= residual.sum()
        else:
            torch.addmv(target, X_rows, weight, beta=-1, out=residual).add_(bias)
            losses.append(residual.dot(residual))
            grad_weight.addmv_(X_rows.t(), residual)
            grad_bias += residual.sum()
    return losses, grad_weight, grad_bias


def _sum_in_order(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """t0 + t1 + ... from left to right (every one is set after a pass over its slices)."""
    total = tensors[0]
    assert total is not None
    total = total.clone()
    for tensor in tensors[1:]:
        assert tensor is not None
        total += tensor
    return total


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


def _block_rows(size: int, batch: int, k: int) -> int:
    """Rows in block k of a shard of ``size`` rows cut into blocks of ``batch``."""
    return max(0, min(batch, size - k * batch))


def _sync_if(net: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[object]:
    """DistributedDataParallel averages gradients on the last slice only (``no_sync``
    before), so a full batch in slices costs one all-reduce."""
    if last or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def _any_rank(world: World, flag: bool) -> bool:
    """All ranks stop together: a signal seen by one is acted on by all (no rank is left
    waiting in a collective)."""
    return bool(world.sum(float(flag)) > 0) if world.distributed else flag


class _GraphedStep:
    def __init__(self, graph: torch.cuda.CUDAGraph, loss: torch.Tensor) -> None:
        self.graph, self.loss = graph, loss

    def replay(self) -> None:
        self.graph.replay()


def _capture_step(
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    loss_fn: torch.nn.MSELoss,
    X: torch.Tensor,
    y: torch.Tensor,
) -> _GraphedStep | None:
    """One full-batch epoch (zero_grad, forward, MSE, backward, SGD step) captured as a CUDA
    graph: replaying it launches the dozen small kernels at once, which is most of an
    epoch's time at small sizes (PyTorch's "whole network capture" recipe).

    Capturing needs a few warm-up steps on a side stream (they create the gradient and
    momentum buffers); the parameters are put back and the momentum buffers zeroed after
    them, so the run takes exactly the steps the eager loop would. None if capture fails
    (the eager loop is used then).
    """
    n = X.shape[0]
    params = list(model.parameters())
    saved = [param.detach().clone() for param in params]
    buffers = [_momentum_buffer(optimizer, param) for param in params]
    saved_buffers = [None if buffer is None else buffer.clone() for buffer in buffers]
    try:
        side = torch.cuda.Stream(device=X.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(X.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=False)
                (loss_fn(model(X), y) / n).backward()
                step(optimizer)
        torch.cuda.current_stream(X.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=False)
        with torch.cuda.graph(graph):
            optimizer.zero_grad(set_to_none=False)
            loss = loss_fn(model(X), y) / n
            loss.backward()
            step(optimizer)
    except RuntimeError:
        graph = None
    with torch.no_grad():
        for param, value, before in zip(params, saved, saved_buffers, strict=True):
            param.copy_(value)
            buffer = _momentum_buffer(optimizer, param)
            if buffer is not None and before is not None:
                buffer.copy_(before)
            elif buffer is not None:
                buffer.zero_()  # the first real step then sets it to the gradient, as eagerly
    if graph is None:
        return None
    return _GraphedStep(graph, loss.detach())


def _momentum_buffer(optimizer: torch.optim.SGD, param: torch.Tensor) -> torch.Tensor | None:
    buffer: torch.Tensor | None = optimizer.state.get(param, {}).get("momentum_buffer")
    return buffer


def _given(y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        raise TypeError("train(X, y): y is required when X is a tensor")
    return y


def _blocks(source: Source, size: int) -> list[tuple[int, int]]:
    """Row ranges of ``size`` rows (the last may be shorter). A full batch that lives in CPU
    memory is cut into cache-sized slices; on a GPU it stays one block."""
    n = source.n
    if size == n:
        if isinstance(source, TensorSource | StandardizingSource) and source.device.type == "cpu":
            # the same slices for data read in place and for its copy: the same sums
            bytes_per_row = (source.d + 1) * source.dtype.itemsize
            size = max(1, CPU_SLICE_BYTES // bytes_per_row)
        elif isinstance(source, StreamSource):
            size = 1 << 16
    return [(first, min(first + size, n)) for first in range(0, n, size)]


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


def _clear_grads(params: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)``, without its profiler bookkeeping."""
    for param in params:
        param.grad = None


def _snapshot(
    epoch: int,
    model: torch.nn.Linear,
    optimizer: torch.optim.SGD,
    shuffle: torch.Generator,
    stopper: EarlyStopping,
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
    settling, and resets the count like an improvement does. ``tol == 0`` never stops.

    ``optimum``, the least-squares loss when it is known exactly enough (float64 full-batch
    training without weight decay): a loss within ``tol**2`` (relative) of it is met at
    once. No epoch can then improve the loss by more than ``tol``, and the parameters are
    within ``tol`` of the least-squares ones in the data's own metric (the gap is the
    squared distance ``(w - w*)' H (w - w*)`` over the optimal loss), so waiting ``patience``
    epochs to see the loss settle would only repeat the optimum."""

    def __init__(self, *, tol: float, patience: int, optimum: float | None = None) -> None:
        self.tol = tol
        self.patience = patience
        self.optimum = optimum if optimum is not None and optimum > 0 else None
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
        self.converged = self.stalled >= self.patience or self.at_optimum(loss)
        return self.converged

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
