"""``linreg train`` on a CUDA device, end to end; skipped on machines without CUDA.

The GPU run must give the CPU run's parameters to float32 tolerance: the same data (made by
NumPy on the CPU), the same zero start and the same mini-batch order (a seeded CPU generator).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_one_error,
    assert_plain,
    cuda_available,
    expect_exit,
    hidden_files,
    run_concurrently,
    run_linreg,
)

pytestmark = pytest.mark.gpu

DEMO: list[str] = ["--no-plot"]
MINI_BATCH = [
    "--samples", "5000", "--features", "4",
    "--weight", "1", "--weight", "-2", "--weight", "0.5", "--weight", "3",
    "--batch-size", "256", "--epochs", "20", "--tol", "0", "--seed", "3", "--no-plot",
]  # fmt: skip


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not cuda_available():
        pytest.skip("CUDA is not available")
    cwd = tmp_path_factory.mktemp("gpu")

    def job(name: str, *args: str) -> Any:
        def run() -> tuple[Any, Path]:
            out = cwd / name
            return run_linreg("train", *args, "--out", str(out), cwd=cwd), out

        return run

    return run_concurrently(
        {
            "cuda": job("cuda", *DEMO, "--device", "cuda"),
            "cpu": job("cpu", *DEMO, "--device", "cpu"),
            "auto": job("auto", *DEMO),
            "cuda_f64": job("cuda_f64", *DEMO, "--device", "cuda:0", "--dtype", "float64"),
            "cpu_f64": job("cpu_f64", *DEMO, "--device", "cpu", "--dtype", "float64"),
            "cuda_batch": job("cuda_batch", *MINI_BATCH, "--device", "cuda"),
            "cpu_batch": job("cpu_batch", *MINI_BATCH, "--device", "cpu"),
        }
    )


def metrics_of(gpu_runs: dict[str, Any], name: str) -> dict[str, Any]:
    result, out = gpu_runs[name]
    expect_exit(result, 0)
    assert hidden_files(out) == []
    assert_plain(result.stdout + result.stderr)
    return dict(json.loads((out / "metrics.json").read_text()))


def params(metrics: dict[str, Any]) -> list[float]:
    return [metrics["params"]["bias"], *metrics["params"]["weight"]]


def test_device_cuda_trains_on_the_gpu(gpu_runs: dict[str, Any]) -> None:
    metrics = metrics_of(gpu_runs, "cuda")
    assert re.fullmatch(r"cuda:\d+", metrics["device"])
    assert metrics["dtype"] == "float32"
    assert metrics["optimality_gap"] < 1e-4
    result, out = gpu_runs["cuda"]
    assert str(out) in result.stdout and "cuda" in result.stdout
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "model.safetensors"}


def test_device_auto_picks_cuda(gpu_runs: dict[str, Any]) -> None:
    assert metrics_of(gpu_runs, "auto")["device"].startswith("cuda")


def test_cuda_params_match_the_cpu_run(gpu_runs: dict[str, Any]) -> None:
    cuda, cpu = metrics_of(gpu_runs, "cuda"), metrics_of(gpu_runs, "cpu")
    assert cpu["device"] == "cpu"
    assert cuda["ols_params"] == cpu["ols_params"]  # float64 NumPy on the CPU both times
    assert params(cuda) == pytest.approx(params(cpu), rel=1e-4, abs=1e-5)


def test_cuda_float64_matches_the_cpu_closely(gpu_runs: dict[str, Any]) -> None:
    cuda, cpu = metrics_of(gpu_runs, "cuda_f64"), metrics_of(gpu_runs, "cpu_f64")
    assert cuda["device"] == "cuda:0" and cuda["dtype"] == "float64"
    assert params(cuda) == pytest.approx(params(cpu), rel=1e-7, abs=1e-9)


def test_cuda_mini_batches_follow_the_cpu_trajectory(gpu_runs: dict[str, Any]) -> None:
    cuda, cpu = metrics_of(gpu_runs, "cuda_batch"), metrics_of(gpu_runs, "cpu_batch")
    assert cuda["epochs_run"] == cpu["epochs_run"] == 20
    assert params(cuda) == pytest.approx(params(cpu), rel=1e-3, abs=1e-3)


def test_a_cuda_index_beyond_the_devices_exits_1(tmp_path: Path) -> None:
    if not cuda_available():
        pytest.skip("CUDA is not available")
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    result = expect_exit(
        run_linreg("train", "--device", missing, "--out", str(tmp_path / "run"), cwd=tmp_path), 1
    )
    assert result.stdout == ""
    assert_one_error(result, missing)
    assert not (tmp_path / "run").exists()
