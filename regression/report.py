"""The metrics document (``metrics.json``, schema 1) of a training run."""

from __future__ import annotations

from typing import Any

from . import __version__
from .pipeline import Params, RunResult
from .tables import Encoding

SCHEMA = 1


def metrics_document(result: RunResult) -> dict[str, Any]:
    """Everything a script needs to judge the run; plain JSON types, no NaN."""
    data, config = result.data, result.config
    return {
        "schema": SCHEMA,
        "version": __version__,
        "data": {
            "source": data.source,
            "samples": result.samples,
            "features": data.features,
            "feature_names": list(data.feature_names),
            "target_name": data.target_name,
            "train_samples": result.train_samples,
            "val_samples": result.val_samples,
            "sha256": result.data_sha256,
            # rows left out for missing values (--missing drop, or a missing target)
            "dropped_rows": result.dropped_rows,
            "columns": _columns(data.encoding),
            "missing": None if data.encoding is None else data.encoding.missing,
            # linreg update: the rows read now (samples counts the parent's rows too)
            "new_samples": result.new_samples,
        },
        # the model the run started from (--init-model, linreg update), else null
        "parent": None if result.parent is None else result.parent.as_dict(),
        "update": result.new_samples is not None,
        "params": result.params.to_dict(),
        "true_params": result.true_params.to_dict() if result.true_params else None,
        "ols_params": Params(result.ols.weight, result.ols.bias).to_dict(),
        "train": result.train.to_dict(),
        "val": result.val.to_dict() if result.val else None,
        "optimality_gap": result.optimality_gap,
        "epochs_run": len(result.history),
        "converged": result.converged,
        "device": result.device,
        "dtype": config.dtype,
        "seed": config.seed,
        "seconds": result.seconds,
        "lr": result.lr,
        "momentum": result.momentum,
        "standardize": result.precondition is not None and result.precondition.name != "none",
        "precondition": result.precondition.name if result.precondition else None,
        "precondition_reason": result.precondition.reason if result.precondition else None,
        "best_epoch": result.best_epoch,
        "epoch_strategy": result.strategy,
        "statistics": result.statistics().to_dict(),
        "warnings": result.warnings,
        "environment": environment(result.device),
    }


def _columns(encoding: Encoding | None) -> list[dict[str, Any]] | None:
    """How each column of the table became features (None for an array's numbers)."""
    if encoding is None:
        return None
    return [
        {
            "name": coding.name,
            "kind": "categorical" if coding.categorical else "numeric",
            "features": list(coding.feature_names),
            "reference": coding.reference,
            "levels": None if coding.levels is None else [coding.reference, *coding.levels],
            "fill": coding.fill,
        }
        for coding in encoding.columns
    ]


def environment(device: str) -> dict[str, Any]:
    """What produced the numbers: versions, platform and device, for reproducing a run."""
    import platform

    import numpy
    import torch

    name = _cpu_name() or platform.processor() or platform.machine()
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    elif device == "mps":
        name = "Apple MPS"
    return {
        "linreg": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
