"""Convergence on ill-conditioned problems (issue 14): what ``linreg train`` reaches with its
default options on NIST StRD problems and a Filip-like degree-10 polynomial, against the float64
least-squares reference (and the certified values), in float64 and float32; what plain
standardization (the previous default) reaches on the same problems; and what whitening does
for mini-batches. Accuracy, not time: every figure is deterministic.

    python benchmarks/convergence.py > benchmarks/CONVERGENCE.md
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from regression.config import TrainConfig
from regression.data import Dataset
from regression.datafile import load_dataset
from regression.metrics import linear_fit, optimality_gap
from regression.model import Scaling
from regression.pipeline import RunResult, choose_precondition, run_training
from regression.statistics import condition_numbers

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
sys.path.insert(0, str(DATA.parent))  # the certified values live beside the fixtures
from certified import LONGLEY_B, NORRIS_B, PONTIUS_B, WAMPLER1_B, WAMPLER2_B  # noqa: E402


def polynomial(coefficients: list[float], x: np.ndarray, name: str, noise: float = 0.0) -> Dataset:
    """y = sum c_k x^k (+ seeded noise), features x, x^2, ..., x^degree."""
    degree = len(coefficients) - 1
    X = np.stack([x**k for k in range(1, degree + 1)], axis=1)
    y = sum(c * x**k for k, c in enumerate(coefficients))
    y = y + np.random.default_rng(0).normal(0.0, noise, x.size) if noise else y
    names = [f"x{k}" for k in range(1, degree + 1)]
    return Dataset(X=X, y=np.asarray(y), feature_names=names, target_name="y", source=name)


# NIST StRD certified coefficients, intercept first (Wampler1/2 fit exactly)
CERTIFIED: dict[str, tuple[float, ...]] = {
    "Norris": NORRIS_B,
    "Pontius": PONTIUS_B,
    "Longley": LONGLEY_B,
    "Wampler1": WAMPLER1_B,
    "Wampler2": WAMPLER2_B,
}
# Filip's model: a degree-10 polynomial on x in [-8.8, -3.1] (82 rows), our own coefficients
# and seeded noise, so the standardized features' condition number is about 3e9
FILIP_LIKE = [
    -1467.5,
    -2772.2,
    -2316.4,
    -1127.97,
    -354.48,
    -75.12,
    -10.88,
    -1.06,
    -0.067,
    -0.00247,
    -4.03e-5,
]
X21 = np.arange(21.0)
PROBLEMS: dict[str, Callable[[], Dataset]] = {
    "Norris": lambda: load_dataset(DATA / "norris.csv", None),
    "Pontius": lambda: load_dataset(DATA / "pontius.csv", None),
    "Longley": lambda: load_dataset(DATA / "longley.csv", "y"),
    "Wampler1": lambda: polynomial([1.0] * 6, X21, "Wampler1"),
    "Wampler2": lambda: polynomial(list(CERTIFIED["Wampler2"]), X21, "Wampler2"),
    "Filip-like": lambda: polynomial(FILIP_LIKE, np.linspace(-8.8, -3.1, 82), "Filip", 0.003),
}


def accuracy(result: RunResult, name: str) -> str:
    """The optimality gap, or for an exact fit the coefficients against the reference."""
    if result.optimality_gap is not None:
        return f"gap {result.optimality_gap:.2g}"
    reference = np.asarray(CERTIFIED.get(name, (result.ols.bias, *result.ols.weight)))
    trained = np.asarray((result.params.bias, *result.params.weight))
    return f"coefficients within {np.max(np.abs(trained / reference - 1)):.1g} (exact fit)"


def float32_floor(result: RunResult) -> str:
    """What float32 rounding allows: the float64 least-squares fit of the run's training
    inputs rounded to float32, measured on the real data (gap, or coefficient error)."""
    X, y = result.data.X, result.data.y
    inputs = result.scaling.apply(X).astype(np.float32).astype(np.float64)
    design = np.column_stack([inputs, np.ones(len(y))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    weight, bias = result.scaling.to_data_units(solution[:-1], float(solution[-1]))
    if result.optimality_gap is None:
        reference = np.asarray((result.ols.bias, *result.ols.weight))
        error = np.max(np.abs(np.asarray((bias, *weight)) / reference - 1))
        return f"coefficients within {error:.1g}"
    fit = linear_fit(X, y, weight, bias)
    best = linear_fit(X, y, result.ols.weight, result.ols.bias)
    y_mean_square = result.ols.tss / result.ols.samples + result.ols.y_mean**2
    return f"gap {optimality_gap(fit.mse, best.mse, y_mean_square):.2g}"


def row(name: str, data: Dataset) -> list[str]:
    default = run_training(TrainConfig(dtype="float64", device="cpu"), data=data)
    float32 = run_training(TrainConfig(device="cpu"), data=data)
    plain = run_training(
        TrainConfig(dtype="float64", device="cpu", precondition="standardize"), data=data
    )
    _, standardized = condition_numbers(default.ols)
    precondition = default.precondition
    assert precondition is not None
    return [
        f"{name} ({data.samples} x {data.features})",
        f"{standardized:.2g}" if standardized else "inf",
        f"{precondition.condition:.2g}",
        precondition.name,
        f"{accuracy(default, name)} in {len(default.history)} epochs",
        f"{accuracy(float32, name)} in {len(float32.history)} epochs"
        + ("" if float32.not_converged is None else " (warns: not converged)"),
        float32_floor(float32),
        f"{accuracy(plain, name)} in {len(plain.history)} epochs",
    ]


def minibatch_rows() -> list[list[str]]:
    """Mini-batches on correlated features: the same epochs and batch size, standardized and
    whitened inputs."""
    rng = np.random.default_rng(3)
    n = 20_000
    base = rng.normal(size=(n, 1))
    X = np.hstack([base + 0.05 * rng.normal(size=(n, 1)) for _ in range(4)])
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 1.0 + 0.1 * rng.normal(size=n)
    data = Dataset(X=X, y=y, feature_names=["a", "b", "c", "d"], target_name="y", source="mb")
    rows = []
    for batch in (64, 1024):
        config = TrainConfig(dtype="float64", device="cpu", batch_size=batch, epochs=20, tol=0.0)
        cells = [f"20000 x 4 correlated, --batch-size {batch}, 20 epochs"]
        for precondition in ("standardize", "whiten"):
            result = run_training(replace(config, precondition=precondition), data=data)
            cells.append(f"gap {result.optimality_gap:.2g} (lr {result.lr:.3g})")
        rows.append(cells)
    scaling = Scaling(mean=X.mean(axis=0), scale=X.std(axis=0))
    condition = choose_precondition(
        TrainConfig(), run_training(TrainConfig(device="cpu", epochs=1), data=data).ols, scaling
    ).condition
    rows.append([f"(standardized condition number {condition:.3g})", "", ""])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def main() -> None:
    header = [
        "data",
        "standardized cond (singular values)",
        "Hessian cond over [z, 1]",
        "auto picks",
        "float64, default options",
        "float32, default options",
        "float32 floor (lstsq of the float32 inputs)",
        "float64, `--precondition standardize`",
    ]
    print("# Convergence with default options (benchmarks/convergence.py)\n")
    print(table(header, [row(name, make()) for name, make in PROBLEMS.items()]))
    print("\n## Mini-batches: standardized against whitened\n")
    print(table(["problem", "standardize", "whiten"], minibatch_rows()))


if __name__ == "__main__":
    main()
