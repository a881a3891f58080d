"""Data-parallel training on torch.distributed: which rank this is, and the few collectives
the library needs (sums and gathers of small float64 arrays).

Under ``torchrun`` the environment says RANK, WORLD_SIZE, LOCAL_RANK and where to meet; a plain
process is a world of one, whose collectives do nothing. Ranks meet on gloo for the CPU and
for the small statistics; on nccl for CUDA gradients (one GPU per local rank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from .errors import ConfigError

TIMEOUT_ENV = "LINREG_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    cpu_group: Any = None  # a gloo group for float64 statistics (nccl needs CUDA tensors)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous rows of n: rank r gets [r n / W, (r + 1) n / W)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def shard_sizes(self, n: int) -> list[int]:
        return [(r + 1) * n // self.size - r * n // self.size for r in range(self.size)]

    def sum(self, values: np.ndarray | float) -> np.ndarray:
        """The element-wise sum of ``values`` over all ranks, in float64."""
        array = np.array(values, dtype=np.float64)
        if not self.distributed:
            return array
        import torch  # here, as in every collective: a world of one never needs torch

        tensor = torch.from_numpy(array.reshape(-1).copy())
        torch.distributed.all_reduce(tensor, group=self.cpu_group)
        return tensor.numpy().reshape(array.shape)

    def gather(self, values: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``values`` (same shape on each rank), in rank order."""
        array = np.ascontiguousarray(values, dtype=np.float64)
        if not self.distributed:
            return [array]
        import torch

        parts = [torch.empty(array.shape, dtype=torch.float64) for _ in range(self.size)]
        torch.distributed.all_gather(parts, torch.from_numpy(array.copy()), group=self.cpu_group)
        return [part.numpy() for part in parts]

    def gather_text(self, text: str) -> list[str]:
        """Every rank's ``text``, in rank order (UTF-8 bytes carried as numbers: lengths
        first, then the bytes padded to the longest)."""
        if not self.distributed:
            return [text]
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        lengths = [int(part[0]) for part in self.gather(np.array([data.size]))]
        padded = np.zeros(max(lengths), dtype=np.float64)
        padded[: data.size] = data
        parts = self.gather(padded)
        return [
            part[:length].astype(np.uint8).tobytes().decode()
            for part, length in zip(parts, lengths, strict=True)
        ]

    def close(self) -> None:
        """Leave together: a rank that tears its connections down while another still uses
        them can bring that one down (gloo aborts)."""
        if not self.distributed:
            return
        import torch

        if torch.distributed.is_initialized():
            try:
                torch.distributed.barrier(group=self.cpu_group)
            finally:
                torch.distributed.destroy_process_group()


SINGLE = World()


def from_environment(device: str) -> World:
    """The world torchrun describes in the environment, joined; a world of one otherwise.

    ``device`` (the --device option) picks the backend: nccl when the ranks train on CUDA,
    gloo on the CPU. The collectives time out after LINREG_DIST_TIMEOUT seconds (default
    300), so a rank whose partner died does not wait forever.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    import torch

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "300")))
    except ValueError:
        raise ConfigError(
            "dist_timeout", f"({TIMEOUT_ENV}) must be a number of seconds", None
        ) from None
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=timeout, rank=rank, world_size=size
    )
    cpu_group = torch.distributed.new_group(backend="gloo", timeout=timeout) if cuda else None
    return World(rank=rank, size=size, local_rank=local_rank, cpu_group=cpu_group)
