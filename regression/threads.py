"""One thread per core, each running its torch operations on that core alone.

For passes made of many small, cache-sized operations (the slices of a CPU epoch, the chunks
of the moments pass) it is faster for each core to work through its own pieces than for both
to split every piece: each operation then pays no fork and join, and each core rereads its
piece from its own cache. torch's thread count is 1 while a pool lives and is put back when it
closes.
"""

from __future__ import annotations

import concurrent.futures

import torch


class CorePool:
    """A thread pool of torch's thread count; ``None`` from ``start`` where that is one."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers, self.threads = workers, threads
        self.executor = concurrent.futures.ThreadPoolExecutor(workers)
        torch.set_num_threads(1)

    @classmethod
    def start(cls, pieces: int) -> CorePool | None:
        """A pool for ``pieces`` pieces of work: at most one thread per piece."""
        threads = torch.get_num_threads()
        workers = min(threads, pieces)
        return cls(workers, threads) if workers >= 2 else None

    def close(self) -> None:
        self.executor.shutdown()
        torch.set_num_threads(self.threads)
