"""Data sets: the synthetic generator and the column statistics used for standardization."""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .config import TrainConfig
from .distributed import SINGLE, World
from .errors import DataError
from .threads import CorePool, background, scratch

if TYPE_CHECKING:
    from .tables import Encoding

CHUNK_ROWS = 1 << 16  # rows handled at a time by the streaming passes ...
CHUNK_BYTES = 8 << 20  # ... and at most this many bytes of float64 (wide data: fewer rows)


MOMENTS_CHUNK_BYTES = 2 << 20  # the moments pass's chunks: in cache while they are used


def chunk_rows(features: int) -> int:
    """Rows per chunk of a streaming pass over data with ``features`` columns."""
    return min(CHUNK_ROWS, max(1, CHUNK_BYTES // (8 * max(features, 1))))


def chunks(array: np.ndarray, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 copy of the rows) a chunk at a time (``chunk_rows``, so a chunk of
    wide data stays a few MB). For a memory-mapped file the
    pages of each chunk are given back after it is copied, so a pass over a file of any size
    holds one chunk in memory (the file stays in the page cache, not in this process)."""
    size = size or chunk_rows(array.shape[1] if array.ndim > 1 else 1)
    for start in range(0, array.shape[0], size):
        stop = min(start + size, array.shape[0])
        block = np.array(array[start:stop], dtype=np.float64, order="C")
        release(array, start, stop)
        yield start, block


def paired_chunks(X: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``chunks`` of X and of y, the same rows in each pair (chunk_rows of X: wide data has
    fewer rows a chunk than y alone would)."""
    size = chunk_rows(X.shape[1])
    for (_, x_rows), (_, y_rows) in zip(chunks(X, size), chunks(y, size), strict=True):
        yield x_rows, y_rows


def float64_rows(array: np.ndarray, start: int, stop: int, slot: str) -> np.ndarray:
    """Rows [start, stop) of ``array`` as a C-contiguous float64 array that torch can take:
    a view where the array's rows already are that (so read them only), else a copy in this
    thread's scratch buffer ``slot``. Either way no fresh memory: a pass of these over data
    in memory writes nothing new (fresh pages cost more than the pass, and writing them
    pushes the data out of the cache). Give a memory-mapped file's pages back (``release``)
    once done with the rows."""
    rows = array[start:stop]
    if rows.dtype == np.float64 and rows.flags.c_contiguous and rows.flags.writeable:
        return rows
    into = scratch(rows.size, slot=slot).reshape(rows.shape)
    np.copyto(into, rows, casting="unsafe")
    return into


def gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for sorted ``rows``, a few at a time, giving back the pages of a
    memory-mapped file after each few (a scattered read faults in far more than the rows)."""
    parts = []
    for first in range(0, len(rows), 256):
        part = rows[first : first + 256]
        parts.append(np.array(array[part]))
        if len(part):
            release(array, int(part[0]), int(part[-1]) + 1)
    return np.concatenate(parts) if parts else np.array(array[rows])


def release(array: np.ndarray, start: int, stop: int) -> None:
    """Drop rows [start, stop) of a memory-mapped array from this process's memory
    (madvise MADV_DONTNEED: a later read loads them again from the page cache)."""
    base: np.ndarray | None = array
    while base is not None and getattr(base, "_mmap", None) is None:
        base = getattr(base, "base", None)  # None too past an array owned by another library
    advise = getattr(mmap, "MADV_DONTNEED", None)
    if base is None or advise is None or stop <= start or array.strides[0] <= 0:
        return
    mapped: mmap.mmap = base._mmap  # type: ignore[attr-defined]
    origin = base.ctypes.data - getattr(base, "offset", 0) % mmap.ALLOCATIONGRANULARITY
    first = array.ctypes.data + start * array.strides[0] - origin
    last = array.ctypes.data + stop * array.strides[0] - origin
    first -= first % mmap.PAGESIZE
    if 0 <= first < last <= len(mapped):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(advise, first, last - first)


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (N x D) and target ``y`` (N,), with names and where they came from."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    source: str  # "synthetic" or the file's path
    sharded: bool = False  # holds only this rank's rows already (under torchrun)
    # how the columns of a table became the features (None: the file's numbers as they are)
    encoding: Encoding | None = None
    dropped: int = 0  # rows dropped for missing values (--missing drop, or a missing target)

    @property
    def samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def features(self) -> int:
        return int(self.X.shape[1])


def synthetic(config: TrainConfig) -> Dataset:
    """y = X @ w + b + noise * N(0, 1) with X ~ U[0, 1), drawn with NumPy from ``config.seed``.

    X and the noise come from two independent streams of the seed, drawn chunk by chunk in
    float64 and stored once in ``config.dtype``, so the values do not depend on the chunk
    size and the data is never held twice over.
    """
    n, d = config.samples, config.features
    dtype = np.dtype(config.dtype)
    x_stream, noise_stream = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2)
    )
    w = np.asarray(config.weights, dtype=np.float64)
    X = np.empty((n, d), dtype=dtype)
    y = np.empty(n, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            x = x_stream.random((stop - start, d))
            X[start:stop] = x
            # X @ w one feature at a time: a matrix product would round differently for a
            # one-row chunk, and the values must not depend on the chunking
            target = np.full(stop - start, config.bias)
            for j in range(d):
                target += x[:, j] * w[j]
            y[start:stop] = target + config.noise * noise_stream.standard_normal(stop - start)
            if not np.all(np.isfinite(y[start:stop])):
                raise DataError(
                    f"--weight, --bias and --noise make y overflow {config.dtype}; "
                    "use smaller values or --dtype float64"
                )
    names = tuple(f"x{j + 1}" for j in range(d))
    return Dataset(X=X, y=y, feature_names=names, target_name="y", source="synthetic")


@dataclass(frozen=True)
class ColumnStats:
    """float64 mean and population standard deviation of each feature column."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def scale(self) -> np.ndarray:
        """The divisor used to standardize: the std, or 1 for a constant column."""
        return np.where(self.std > 0, self.std, 1.0)


def fingerprint(data: Dataset, world: World = SINGLE, *, local: str | None = None) -> str:
    """SHA-256 of the numbers a run trains on: X then y, as float64 little-endian, a chunk at
    a time. The same values give the same digest whatever the file format or dtype. Under
    torchrun it is the SHA-256 of the ranks' digests of their shards, in rank order.
    ``local`` is this rank's digest if already computed (``BackgroundDigest``)."""
    if local is None:
        local = digest(data)
    if not world.distributed:
        return local
    parts = world.gather(np.frombuffer(bytes.fromhex(local), dtype=np.uint8).astype(np.float64))
    return hashlib.sha256(b"".join(part.astype(np.uint8).tobytes() for part in parts)).hexdigest()


def digest(data: Dataset) -> str:
    """This process's part of ``fingerprint``: the SHA-256 of its rows."""
    hasher = hashlib.sha256()
    hasher.update(f"{data.samples}x{data.features};".encode())
    for array in (data.X, data.y):
        size = chunk_rows(array.shape[1] if array.ndim > 1 else 1)
        for start in range(0, array.shape[0], size):
            stop = min(start + size, array.shape[0])
            rows = float64_rows(array, start, stop, "digest")
            hasher.update(rows.astype("<f8", copy=False).data)
            release(array, start, stop)
    return hasher.hexdigest()


class BackgroundDigest:
    """``digest(data)`` computed on one of the process's worker threads (threads.background)
    while the caller goes on: hashlib and NumPy's casts and copies release the GIL, so on a
    second core the hashing costs no wall time. ``result`` waits for it and raises what the
    thread raised."""

    def __init__(self, data: Dataset) -> None:
        self._future = background(digest, data)

    def result(self) -> str:
        return self._future.result()


def shard(data: Dataset, world: World) -> Dataset:
    """This rank's contiguous rows (views, no copy)."""
    if not world.distributed or data.sharded:
        return data
    first, last = world.shard(data.samples)
    return replace(data, X=data.X[first:last], y=data.y[first:last])


def column_stats(X: np.ndarray, world: World = SINGLE) -> ColumnStats:
    """Mean and std in float64, one chunk at a time, over the rows of every rank."""
    return moments(X, world=world).column_stats(X.shape[1])


@dataclass(frozen=True)
class Moments:
    """The count, the float64 means and the centered cross-product (Gram) matrix of some
    columns: ``gram = sum over rows of (a - mean)(a - mean)'``."""

    samples: int
    mean: np.ndarray
    gram: np.ndarray

    @classmethod
    def empty(cls, columns: int) -> Moments:
        """The moments of no rows."""
        return cls(samples=0, mean=np.zeros(columns), gram=np.zeros((columns, columns)))

    def merge(self, other: Moments) -> Moments:
        """The moments of both row sets together (Chan, Golub and LeVeque's pairwise update:
        no sums of raw squares, so no cancellation)."""
        if not self.samples or not other.samples:
            return other if not self.samples else self
        n = self.samples + other.samples
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.samples / n)
        gram = self.gram + other.gram + np.outer(delta, delta) * (self.samples * other.samples / n)
        return Moments(samples=n, mean=mean, gram=gram)

    def column_stats(self, columns: int) -> ColumnStats:
        """Mean and population std of the first ``columns`` columns."""
        mean = self.mean[:columns]
        std = np.sqrt(np.maximum(self.gram.diagonal()[:columns], 0.0) / max(self.samples, 1))
        # a column whose spread is at rounding level of its values is constant
        std[std <= 1e-12 * np.maximum(np.abs(mean), 1e-300)] = 0.0
        return ColumnStats(mean=mean, std=std)

    def as_array(self) -> np.ndarray:
        return np.concatenate([[float(self.samples)], self.mean, self.gram.reshape(-1)])

    @classmethod
    def from_array(cls, array: np.ndarray) -> Moments:
        k = round((-1 + math.sqrt(1 + 4 * (len(array) - 1))) / 2)
        return cls(samples=int(array[0]), mean=array[1 : k + 1], gram=array[k + 1 :].reshape(k, k))


def moments(
    X: np.ndarray,
    y: np.ndarray | None = None,
    *,
    world: World = SINGLE,
) -> Moments:
    """The moments of the columns of X (and y after them) in one streamed pass, over the
    rows of every rank in rank order.

    Each chunk is shifted by its first row before its mean is taken, so a constant column
    has exactly its value as mean and exactly zero spread. The chunks (2 MB, so they stay in
    cache) are shared by one thread per core (threads.CorePool) and their moments merged in
    row order, so the result does not depend on the number of threads.
    """
    k = X.shape[1] + (y is not None)
    total = Moments.empty(k)
    rows = max(1, MOMENTS_CHUNK_BYTES // (8 * k))
    starts = range(0, X.shape[0], rows)

    def chunk(start: int) -> Moments:
        return _chunk_moments(X, y, start, min(start + rows, X.shape[0]))

    pool = CorePool.start(len(starts))
    try:
        parts = map(chunk, starts) if pool is None else pool.executor.map(chunk, starts)
        for part in parts:  # in row order, as they come
            total = total.merge(part)
    finally:
        if pool is not None:
            pool.close()
    if world.distributed:
        ranks = world.gather(total.as_array())
        total = Moments.empty(k)
        for array in ranks:
            total = total.merge(Moments.from_array(array))
    return total


def _chunk_moments(X: np.ndarray, y: np.ndarray | None, start: int, stop: int) -> Moments:
    """The moments of rows ``start:stop``: shifted by their first row as they are copied,
    column by column, into this thread's scratch buffer (a k x m block: its Gram matrix is
    then a product of two row-major matrices, which BLAS does twice as fast as that of the
    m x k block), then centered and multiplied."""
    d, m = X.shape[1], stop - start
    k = d + (y is not None)
    block = scratch(k * m).reshape(k, m)
    rows = X[start:stop]
    shift = np.empty(k)
    shift[:d] = rows[0]
    np.subtract(rows.T, shift[:d, None], out=block[:d])
    release(X, start, stop)
    if y is not None:
        target = y[start:stop]
        shift[d] = target[0]
        np.subtract(target, shift[d], out=block[d])
        release(y, start, stop)
    import torch  # here: predict and generate use this module without torch (1.5 s)

    centered = torch.from_numpy(block)  # torch: its operations let go of the GIL
    mean = centered.sum(dim=1, keepdim=True) / m
    centered -= mean
    gram = torch.mm(centered, centered.t())
    return Moments(samples=m, mean=shift + mean.reshape(-1).numpy(), gram=gram.numpy())


def first_row(X: np.ndarray, world: World) -> np.ndarray:
    """The first row of the data (of the first rank that has rows), in float64."""
    local = np.zeros(X.shape[1] + 1)
    if X.shape[0]:
        local[0], local[1:] = 1.0, np.asarray(X[0], dtype=np.float64)
    for row in world.gather(local):
        if row[0]:
            return row[1:]
    return local[1:]


def split(data: Dataset, *, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A seeded random hold-out of ``round(fraction * N)`` rows (at least one when
    ``fraction > 0``). Both parts keep the file's row order. The split has its own stream of
    the seed, so it does not change the synthetic data or the mini-batch order."""
    if fraction == 0:
        return data, None
    n = data.samples
    held = max(1, round(fraction * n))
    if n - held < 2:
        raise DataError(
            f"--val-fraction {fraction:g} leaves {n - held} of {n} rows for training; "
            "at least 2 are needed"
        )
    stream = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    order = stream.permutation(n)
    val_rows, train_rows = np.sort(order[:held]), np.sort(order[held:])
    return _rows(data, train_rows), _rows(data, val_rows)


def _rows(data: Dataset, rows: np.ndarray) -> Dataset:
    return replace(data, X=np.asarray(data.X[rows]), y=np.asarray(data.y[rows]))
