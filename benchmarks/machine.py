"""What the numbers were measured on: the machine, the library versions, the commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> str:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(repo: Path) -> str:
    """The commit the library was at, and whether its files had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "regression", "cli", "plots"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' with uncommitted changes in the library' if dirty else ''}"


def machine_rows() -> list[tuple[str, str]]:
    import torch

    gpu = "none (torch.cuda.is_available() is False)"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return [
        ("CPU", cpu_model()),
        ("cores", f"{usable_cores()} usable ({os.cpu_count()} logical in the machine)"),
        ("torch threads", str(torch.get_num_threads())),
        ("memory", memory_gib()),
        ("GPU", gpu),
        ("OS", platform.platform()),
    ]


def version_rows(repo: Path) -> list[tuple[str, str]]:
    import numpy
    import torch

    return [
        ("python", sys.version.split()[0]),
        ("torch", torch.__version__),
        ("numpy", numpy.__version__),
        ("scikit-learn", version("scikit-learn")),
        ("linreg", version("linreg-torch-cli")),
        ("linreg commit", git_commit(repo)),
    ]
