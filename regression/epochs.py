"""How one training epoch runs: the epoch strategies train() chooses between, once, before
its loop (see ``choose_epochs``), and the arithmetic behind them.

Each strategy runs a whole epoch on ``nn.Linear`` (its loss and gradient, then the SGD step)
and returns the epoch's loss; what it can do is declared once, as class attributes:

- ``reads_data``: whether an epoch passes over the training rows (``FactorEpochs`` takes its
  epochs from the least-squares factor instead);
- ``can_skip_step``: whether the loss is known before the step, so that the loop can keep
  the parameters where the loss already is at the optimum (a captured CUDA graph always
  steps; mini-batches step many times an epoch);
- ``read_every``: how many epochs the loop may leave the loss on the device before reading
  it (a read waits for the device);
- ``stops_mid_epoch``: whether ``should_stop`` is asked between steps inside an epoch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

from . import fused
from .batches import Source, StandardizingSource, StreamSource, TensorSource
from .config import TrainConfig
from .distributed import World
from .optim import step
from .threads import CorePool

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
Loss = torch.Tensor | float  # an epoch's mean loss: a float where it is computed on the host
Params = tuple[torch.Tensor, torch.Tensor]  # nn.Linear's (weight, bias)


class StopInEpoch(Exception):
    """``should_stop`` said yes between two steps of a mini-batch epoch."""


class Gate:
    """What happens between a full-batch epoch's loss, measured before its step, and the
    step: the parameters of the lowest loss so far are kept (see ``best``), and where the
    optimum is known (``hold``) a loss at it keeps the parameters where they are.

    With ``deferred`` the losses stay on the device until the loop reads them (CUDA): the
    parameters each was measured at are copied aside (on the device, without waiting) and
    settled when the loop reads the losses.
    """

    def __init__(
        self,
        *,
        hold: Callable[[float], bool] | None,
        deferred: bool,
        value_of: Callable[[torch.nn.Linear], float] | None = None,
    ) -> None:
        self.hold = hold
        self.deferred = deferred
        self.value_of = value_of  # the full-batch loss of any parameters (from the factor)
        self.loss = math.inf  # the lowest loss recorded, the epoch it was recorded at, and
        self.epoch = 0  # the parameters it was measured at
        self.params: Params | None = None
        self.last = math.inf  # mini-batches: the loss measured after the last epoch
        self.waiting: list[tuple[int, Params]] = []  # deferred: (epoch, parameters)

    def measured(self, epoch: int, loss: Loss, model: torch.nn.Linear) -> bool:
        """``loss``, epoch ``epoch``'s, was measured at ``model``'s parameters (before the
        step); True when the step is to be taken."""
        if self.deferred:
            self.waiting.append((epoch, _copy(model)))
            return True
        value = float(loss)
        self._offer(epoch, value, model.weight, model.bias)
        return not (self.hold is not None and self.hold(value))

    def measured_after(self, epoch: int, model: torch.nn.Linear) -> None:
        """After a mini-batch epoch: the full-batch loss of the parameters it ended at, where
        it can be had without a pass over the data (from the factor)."""
        if self.value_of is not None:
            self.last = self.value_of(model)
            self._offer(epoch, self.last, model.weight, model.bias)

    def settle(self, first: int, values: list[float]) -> None:
        """The loop read the losses of epochs ``first``, ``first + 1``, ...: their deferred
        parameters are kept if better."""
        if not self.deferred:
            return
        by_epoch = dict(self.waiting)
        self.waiting = []
        for offset, value in enumerate(values):
            params = by_epoch.get(first + offset)
            if params is not None:
                self._offer(first + offset, value, *params)

    def _offer(self, epoch: int, value: float, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if not value < self.loss:  # NaN is never kept (the loop raises on it)
            return
        self.loss, self.epoch = value, epoch
        if self.params is None:
            self.params = (weight.detach().clone(), bias.detach().clone())
        else:
            self.params[0].copy_(weight.detach())
            self.params[1].copy_(bias.detach())


def _copy(model: torch.nn.Linear) -> Params:
    return model.weight.detach().clone(), model.bias.detach().clone()


@dataclass
class Loop:
    """What every strategy works on."""

    model: torch.nn.Linear
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.SGD
    source: Source
    blocks: list[tuple[int, int]]  # row ranges: cache-sized slices, or the mini-batches
    total_n: int  # training rows of every rank
    world: World
    gate: Gate

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.model.weight, self.model.bias]

    def step_unless_held(self, epoch: int, loss: Loss) -> None:
        if self.gate.measured(epoch, loss, self.model):
            step(self.optimizer)

    def mean_of_sums(self, loss_sum: torch.Tensor) -> torch.Tensor:
        """The sums of squares (and the gradients, in place) as the mean over the rows of
        every rank; DistributedDataParallel has averaged the gradients over the ranks."""
        with torch.no_grad():
            for param in self.params:
                param.grad.mul_(self.world.size / self.total_n)  # type: ignore[union-attr]
        # the mean in the training dtype: float32 runs report float32 losses
        epoch_loss = (loss_sum / self.total_n).to(self.source.dtype)
        if self.world.distributed:
            return torch.tensor(self.world.sum(epoch_loss.item()), dtype=torch.float64)
        return epoch_loss


class Epochs:
    """One way of running an epoch (see the module's docstring)."""

    name: ClassVar[str]
    full_batch: ClassVar[bool] = True  # one step an epoch, on the gradient of every row
    reads_data: ClassVar[bool] = True
    can_skip_step: ClassVar[bool] = True
    stops_mid_epoch: ClassVar[bool] = False

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    @property
    def read_every(self) -> int:
        return CUDA_READ_EVERY if self.loop.source.device.type == "cuda" else 1

    def run(self, epoch: int) -> Loss:
        """One epoch: the loss, the gradient and the step; returns the epoch's mean loss."""
        raise NotImplementedError

    def loss_now(self) -> float:
        """The full-batch mean loss of the current parameters, without a step."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the strategy holds (threads)."""


class FactorEpochs(Epochs):
    """float64 on the CPU: every epoch from the least-squares factor (see FullBatchLoss), no
    pass over the rows."""

    name = "factor"
    reads_data = False

    def __init__(self, loop: Loop, factor: FullBatchLoss) -> None:
        super().__init__(loop)
        self.factor = factor

    def run(self, epoch: int) -> Loss:
        epoch_loss = self.factor.mean(self.loop.model)
        self.loop.step_unless_held(epoch, epoch_loss)
        return epoch_loss

    def loss_now(self) -> float:
        return self.factor.value(self.loop.model)


class SumEpochs(Epochs):
    """A CPU full batch in closed form (see _Sums): the C loop for float32 data in memory,
    torch's sums over cache-sized slices elsewhere; the slices are shared by threads."""

    name = "sums"

    def __init__(self, loop: Loop, first_epoch: int) -> None:
        super().__init__(loop)
        self.sums = _Sums.start(len(loop.blocks))
        self.first_epoch = first_epoch

    def run(self, epoch: int) -> Loss:
        loop = self.loop
        if (
            isinstance(loop.source, StandardizingSource)
            and epoch - self.first_epoch == StandardizingSource.MATERIALIZE_AFTER
        ):
            loop.source = loop.source.materialize()  # a long run: the copy now costs less
        _clear_grads(loop.params)
        epoch_loss = loop.mean_of_sums(self.sums.epoch(loop.model, loop.source, loop.blocks))
        loop.step_unless_held(epoch, epoch_loss)
        return epoch_loss

    def loss_now(self) -> float:
        loop = self.loop
        loss_sum = self.sums.epoch(loop.model, loop.source, loop.blocks)
        _clear_grads(loop.params)
        return float((loss_sum / loop.total_n).to(loop.source.dtype))

    def close(self) -> None:
        self.sums.close()


class FactorFirstEpochs(SumEpochs):
    """float32 on the CPU: the first epoch from the factor (from the zero start, where every
    residual is -y), the rest in float32 on the data, the arithmetic that was asked for."""

    name = "factor-then-sums"

    def __init__(self, loop: Loop, first_epoch: int, factor: FullBatchLoss) -> None:
        super().__init__(loop, first_epoch)
        self.factor = FactorEpochs(loop, factor)

    def run(self, epoch: int) -> Loss:
        return self.factor.run(epoch) if epoch == 1 else super().run(epoch)


class SlicedEpochs(Epochs):
    """A full batch by autograd over row slices, their gradients added: under torchrun (one
    all-reduce an epoch, on the last slice) or streamed to a GPU in blocks."""

    name = "autograd-slices"

    def run(self, epoch: int) -> Loss:
        loop = self.loop
        _clear_grads(loop.params)
        losses = []
        for k, (first, last) in enumerate(loop.blocks):
            X_rows, y_rows = loop.source.rows(first, last)
            with _sync_if(loop.net, k + 1 == len(loop.blocks)):
                loss = SUMMED_MSE(loop.net(X_rows), y_rows)
                loss.backward()
            losses.append(loss.detach())
        epoch_loss = loop.mean_of_sums(torch.stack(losses).sum(dtype=torch.float64))
        loop.step_unless_held(epoch, epoch_loss)  # the loss is alike on every rank
        return epoch_loss

    def loss_now(self) -> float:
        loop = self.loop
        total = 0.0
        with torch.no_grad():
            for first, last in loop.blocks:
                X_rows, y_rows = loop.source.rows(first, last)
                total += float(SUMMED_MSE(loop.model(X_rows), y_rows))
        return float(loop.world.sum(total)) / loop.total_n


class BlockEpochs(Epochs):
    """The whole batch as one block on a GPU, by autograd: the fewest operations an epoch."""

    name = "one-block"

    def __init__(self, loop: Loop) -> None:
        super().__init__(loop)
        self.X, self.y = loop.source.rows(0, loop.source.n)

    def run(self, epoch: int) -> Loss:
        loop = self.loop
        _clear_grads(loop.params)
        loss = SUMMED_MSE(loop.model(self.X), self.y) / loop.source.n
        loss.backward()
        epoch_loss: torch.Tensor = loss.detach()
        loop.step_unless_held(epoch, epoch_loss)
        return epoch_loss

    def loss_now(self) -> float:
        with torch.no_grad():
            return float(SUMMED_MSE(self.loop.model(self.X), self.y) / self.loop.source.n)


class GraphedEpochs(BlockEpochs):
    """The one-block epoch captured as a CUDA graph (see _capture_step), replayed each epoch:
    it always steps."""

    name = "cuda-graph"
    can_skip_step = False

    def __init__(self, loop: Loop, graphed: _GraphedStep) -> None:
        super().__init__(loop)
        self.graphed = graphed

    def run(self, epoch: int) -> Loss:
        self.loop.gate.measured(epoch, self.graphed.loss, self.loop.model)  # before the step
        self.graphed.replay()  # forward, backward and SGD step as one CUDA graph
        return self.graphed.loss.detach().clone()


class MiniBatchEpochs(Epochs):
    """Shuffled mini-batches: the rows cut into contiguous blocks of ``batch_size``, visited
    in a new seeded order every epoch, one step each. Under torchrun all ranks take block k
    of their shards together (the shards' rows of block k make the step's mean)."""

    name = "mini-batches"
    full_batch = False
    can_skip_step = False
    stops_mid_epoch = True

    def __init__(
        self,
        loop: Loop,
        *,
        sizes: list[int],
        batch_size: int,
        shuffle: torch.Generator,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        super().__init__(loop)
        self.steps = -(-max(sizes) // batch_size)
        # rows of all ranks in each step
        self.step_rows = [
            sum(_block_rows(size, batch_size, k) for size in sizes) for k in range(self.steps)
        ]
        self.shuffle = shuffle
        self.should_stop = should_stop if not loop.world.distributed else None

    def run(self, epoch: int) -> Loss:
        loop = self.loop
        source, n = loop.source, loop.source.n
        epoch_loss = torch.zeros((), dtype=torch.float64, device=source.device)
        order = torch.randperm(self.steps, generator=self.shuffle).tolist()
        for k, index in enumerate(order):
            first, last = loop.blocks[index] if index < len(loop.blocks) else (n, n)
            X_rows, y_rows = source.rows(first, last)
            loss = SUMMED_MSE(loop.net(X_rows), y_rows)
            _clear_grads(loop.params)
            (loss * (loop.world.size / self.step_rows[index])).backward()
            step(loop.optimizer)
            epoch_loss += loss.detach() / loop.total_n
            if k + 1 < self.steps and self.should_stop is not None and self.should_stop():
                raise StopInEpoch
        if loop.world.distributed:
            epoch_loss = torch.tensor(loop.world.sum(epoch_loss.item()), dtype=torch.float64)
        loop.gate.measured_after(epoch, loop.model)
        return epoch_loss


@dataclass(frozen=True)
class Choice:
    """The strategy for a run, and why."""

    kind: type[Epochs]
    reason: str


def choose_epochs(
    source: Source, config: TrainConfig, *, sizes: list[int], world: World, factored: bool
) -> Choice:
    """The one place that decides how epochs run. ``sizes``: the rows of each rank's shard;
    ``factored``: the training rows' loss is known as a function of the parameters (see
    FullBatchLoss)."""
    device = source.device.type
    if 0 < config.batch_size < max(sizes):
        return Choice(MiniBatchEpochs, f"--batch-size {config.batch_size} < the rows")
    if world.distributed:
        return Choice(SlicedEpochs, "a full batch under torchrun: gradients are all-reduced")
    if device == "cpu" and factored:
        if source.dtype == torch.float64:
            return Choice(FactorEpochs, "a float64 full batch on the CPU, with its factor")
        return Choice(FactorFirstEpochs, "a float32 full batch on the CPU, with its factor")
    if device == "cpu":
        return Choice(SumEpochs, "a full batch on the CPU")
    if isinstance(source, StreamSource) and source.n > STREAM_BLOCK_ROWS:
        return Choice(SlicedEpochs, f"a full batch streamed to {device} in blocks")
    if device == "cuda":
        return Choice(GraphedEpochs, "a full batch in one block on CUDA: one graph replay")
    return Choice(BlockEpochs, f"a full batch in one block on {device}")


def build_epochs(
    choice: Choice,
    loop: Loop,
    *,
    config: TrainConfig,
    sizes: list[int],
    first_epoch: int,
    shuffle: torch.Generator,
    should_stop: Callable[[], bool] | None,
    factor: FullBatchLoss | None,
) -> Epochs:
    """The chosen strategy, ready to run (a CUDA graph that cannot be captured falls back
    to the same epoch run eagerly)."""
    kind = choice.kind
    if kind is MiniBatchEpochs:
        return MiniBatchEpochs(
            loop,
            sizes=sizes,
            batch_size=config.batch_size,
            shuffle=shuffle,
            should_stop=should_stop,
        )
    if kind is FactorEpochs or kind is FactorFirstEpochs:
        assert factor is not None
        if kind is FactorEpochs:
            return FactorEpochs(loop, factor)
        return FactorFirstEpochs(loop, first_epoch, factor)
    if kind is SumEpochs:
        return SumEpochs(loop, first_epoch)
    if kind is GraphedEpochs:
        whole = loop.source.rows(0, loop.source.n)
        graphed = _capture_step(loop.model, loop.optimizer, SUMMED_MSE, *whole)
        return GraphedEpochs(loop, graphed) if graphed is not None else BlockEpochs(loop)
    if kind is BlockEpochs:
        return BlockEpochs(loop)
    return SlicedEpochs(loop)


STREAM_BLOCK_ROWS = 1 << 16  # a streamed full batch is read in blocks of this many rows


def row_blocks(source: Source, size: int) -> list[tuple[int, int]]:
    """Row ranges of ``size`` rows (the last may be shorter). A full batch that lives in CPU
    memory is cut into cache-sized slices; on a GPU it stays one block."""
    n = source.n
    if size == n:
        if isinstance(source, TensorSource | StandardizingSource) and source.device.type == "cpu":
            # the same slices for data read in place and for its copy: the same sums
            bytes_per_row = (source.d + 1) * source.dtype.itemsize
            size = max(1, CPU_SLICE_BYTES // bytes_per_row)
        elif isinstance(source, StreamSource):
            size = STREAM_BLOCK_ROWS
    return [(first, min(first + size, n)) for first in range(0, n, size)]


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

    @property
    def target_mean_square(self) -> float:
        """E[y^2] over the rows."""
        centered = float(self.target @ self.target) + self.tail
        return centered / self.samples + self.target_mean**2

    def value(self, model: torch.nn.Linear) -> float:
        """The mean loss over the rows at ``model``'s parameters, in float64."""
        weight = model.weight.detach().to(torch.float64).cpu().numpy()[0]
        gap = self.factor @ weight - self.target
        offset = float(self.input_mean @ weight) + model.bias.item() - self.target_mean
        return (float(gap @ gap) + self.tail) / self.samples + offset**2


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


def _block_rows(size: int, batch: int, k: int) -> int:
    """Rows in block k of a shard of ``size`` rows cut into blocks of ``batch``."""
    return max(0, min(batch, size - k * batch))


def _sync_if(net: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[object]:
    """DistributedDataParallel averages gradients on the last slice only (``no_sync``
    before), so a full batch in slices costs one all-reduce."""
    if last or not isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


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


def _clear_grads(params: list[torch.Tensor]) -> None:
    """``optimizer.zero_grad(set_to_none=True)``, without its profiler bookkeeping."""
    for param in params:
        param.grad = None
