"""Checkpoint files: the training loop's state, saved atomically, loaded without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .artifacts import read_safetensors, safetensors_bytes, write_bytes
from .errors import ModelFileError
from .train import LoopState

FORMAT = "linreg-checkpoint"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must agree with to be resumed: same code, options and data."""

    config: str  # the resolved training options as TOML
    data_sha256: str
    lr: float
    momentum: float = 0.0  # the momentum used: > 0 means the state has momentum buffers
    validation: bool = False  # the run holds out rows: the state has a validation history

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "linreg_version": __version__,
            "config": self.config,
            "data_sha256": self.data_sha256,
            "lr": repr(self.lr),
        }


def save_checkpoint(path: Path, state: LoopState, identity: RunIdentity) -> None:
    tensors: dict[str, np.ndarray] = {
        "linear.weight": state.weight.numpy(),
        "linear.bias": state.bias.numpy(),
        "shuffle_state": state.shuffle_state.numpy(),
        "history": np.asarray(state.history, dtype=np.float64),
    }
    for name, buffer in zip(("weight", "bias"), state.momentum, strict=True):
        if buffer is not None:
            tensors[f"momentum.{name}"] = buffer.numpy()
    if state.val_history is not None:
        tensors["val_history"] = np.asarray(state.val_history, dtype=np.float64)
    metadata = {
        **identity.metadata(),
        "epoch": str(state.epoch),
        "previous_loss": repr(state.previous_loss),
        "stalled": str(state.stalled),
    }
    if state.best is not None:  # the lowest loss so far, and its parameters
        best_epoch, best_loss, best_weight, best_bias = state.best
        tensors["best.weight"], tensors["best.bias"] = best_weight.numpy(), best_bias.numpy()
        metadata["best_epoch"], metadata["best_loss"] = str(best_epoch), repr(best_loss)
    write_bytes(path, safetensors_bytes(tensors, metadata))


def load_checkpoint(path: Path, identity: RunIdentity) -> LoopState:
    """The saved state, after checking it belongs to this run; ModelFileError otherwise."""
    tensors, metadata = read_safetensors(path, "checkpoint")
    if metadata.get("format") != FORMAT or "sha256" not in metadata:
        raise ModelFileError(f"{path} is not a linreg checkpoint")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has checkpoint format {metadata.get('format_version')!r}; "
            f"this linreg reads {FORMAT_VERSION}"
        )
    if metadata.get("linreg_version") != __version__:
        raise ModelFileError(
            f"{path} was written by linreg {metadata.get('linreg_version')}; this is "
            f"{__version__}, which cannot continue it bit for bit (start a new run)"
        )
    expected = identity.metadata()
    for key, what in (("config", "options"), ("data_sha256", "data"), ("lr", "step size")):
        if metadata.get(key) != expected[key]:
            raise ModelFileError(
                f"{path} belongs to a run with different {what}; resume it with the "
                "options in its run directory's config.toml"
            )
    needed = ["linear.weight", "linear.bias", "shuffle_state", "history"]
    if identity.momentum > 0 and metadata.get("epoch", "0") != "0":
        needed += ["momentum.weight", "momentum.bias"]
    if identity.validation:
        needed.append("val_history")
    missing = [name for name in needed if name not in tensors]
    if missing or not {"epoch", "previous_loss", "stalled"} <= set(metadata):
        raise ModelFileError(f"{path}: incomplete checkpoint (missing {missing or 'metadata'})")
    best_fields = ("best.weight" in tensors, "best.bias" in tensors, "best_epoch" in metadata)
    if any(best_fields) and not all(best_fields):
        raise ModelFileError(f"{path}: incomplete checkpoint (part of its best epoch)")
    try:
        epoch = int(metadata["epoch"])
        previous = float(metadata["previous_loss"])
        stalled = int(metadata["stalled"])
        best_at = (
            (int(metadata["best_epoch"]), float(metadata["best_loss"]))
            if all(best_fields)
            else None
        )
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: damaged checkpoint metadata ({exc})") from exc
    history = tuple(float(v) for v in tensors["history"])
    if len(history) != epoch:
        raise ModelFileError(f"{path}: damaged checkpoint ({len(history)} losses, epoch {epoch})")
    val = tensors.get("val_history")

    def tensor(name: str) -> torch.Tensor | None:
        return torch.from_numpy(tensors[name].copy()) if name in tensors else None

    weight, bias, shuffle = tensor("linear.weight"), tensor("linear.bias"), tensor("shuffle_state")
    assert weight is not None and bias is not None and shuffle is not None
    best_weight, best_bias = tensor("best.weight"), tensor("best.bias")
    best = None
    if best_at is not None and best_weight is not None and best_bias is not None:
        best = (*best_at, best_weight, best_bias)
    return LoopState(
        epoch=epoch,
        weight=weight,
        bias=bias,
        momentum=(tensor("momentum.weight"), tensor("momentum.bias")),
        shuffle_state=shuffle,
        history=history,
        val_history=tuple(float(v) for v in val) if val is not None else None,
        previous_loss=previous,
        stalled=stalled,
        best=best,
    )
