"""Choosing the torch device: ``auto`` falls back to the CPU, an explicit request never does."""

from __future__ import annotations

import torch

from .errors import DeviceUnavailableError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else MPS, else CPU. ``cuda``/``cuda:N``/``mps`` must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {name}: CUDA is not available on this machine "
                "(use --device cpu or --device auto)"
            )
        index = 0 if device.index is None else device.index
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailableError(
                f"--device {name}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise DeviceUnavailableError(
            f"--device {name}: MPS is not available on this machine (use --device cpu or auto)"
        )
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
