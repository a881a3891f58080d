"""One thread per core, each running its torch operations on that core alone.

For passes made of many small, cache-sized operations (the slices of a CPU epoch, the chunks
of the moments pass) it is faster for each core to work through its own pieces than for both
to split every piece: each operation then pays no fork and join, and each core rereads its
piece from its own cache. torch's thread count is 1 while a pool is open and is put back when
it closes.

The threads are started once per process and kept (idle, they cost nothing), and so is each
thread's scratch buffer (``scratch``): starting threads and faulting in fresh memory for
every pass would cost more than the pass itself on small data.

torch is imported where it is used: ``linreg predict`` and ``generate`` read data through
modules that use these buffers and threads, and never need torch (a 1.5 s import).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_workers = 0
_local = threading.local()
T = TypeVar("T")


MIN_PIECES = 4


class CorePool:
    """Up to torch's thread count of the process's worker threads; ``None`` from ``start``
    where that is one."""

    def __init__(self, workers: int, threads: int) -> None:
        import torch

        self.workers, self.threads = workers, threads
        self.executor = _shared_executor(workers)
        torch.set_num_threads(1)

    @classmethod
    def start(cls, pieces: int) -> CorePool | None:
        """A pool for ``pieces`` pieces of work: at most one thread per piece, and none for
        fewer than MIN_PIECES (changing torch's thread count makes its next parallel
        operation start OpenMP's threads again, about 0.6 ms here: more than a few pieces
        gain)."""
        import torch

        threads = torch.get_num_threads()
        workers = min(threads, pieces)
        return cls(workers, threads) if workers >= 2 and pieces >= MIN_PIECES else None

    def close(self) -> None:
        import torch

        torch.set_num_threads(self.threads)


def _shared_executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's worker threads, at least ``workers`` of them."""
    global _executor, _executor_workers
    with _lock:
        if _executor is None or _executor_workers < workers:
            if _executor is not None:
                _executor.shutdown(wait=False)
            _executor = concurrent.futures.ThreadPoolExecutor(workers, "linreg-core")
            _executor_workers = workers
        return _executor


def background(
    function: Callable[..., T], *args: object, workers: int = 1
) -> concurrent.futures.Future[T]:
    """``function(*args)`` on one of the process's worker threads (at least ``workers`` of
    them are started); the future gives its result (or raises its exception)."""
    return _shared_executor(workers).submit(function, *args)


def scratch(size: int, dtype: np.dtype | type = np.float64, slot: str = "") -> np.ndarray:
    """``size`` values of ``dtype`` in this thread's scratch buffer named ``slot``: the same
    memory at every call from the thread with that name, so use each for one thing at a
    time. A buffer grows to the largest size asked of it and is kept."""
    itemsize = np.dtype(dtype).itemsize
    buffers: dict[str, np.ndarray] | None = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buffer = buffers.get(slot)
    if buffer is None or buffer.size < size * itemsize:
        buffer = buffers[slot] = np.empty(max(size * itemsize, 64), dtype=np.uint8)
    return buffer[: size * itemsize].view(dtype)


@contextlib.contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """torch on one thread inside the block (if ``enabled``), its thread count put back after."""
    import torch

    threads = torch.get_num_threads()
    if enabled and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
