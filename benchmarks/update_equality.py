"""How close `linreg update` chains come to one fit of all the rows (issue 16, item 2).

Runs the commands of tests/test_nightly.py (Longley in 6+5+5 rows, updated twice; 1e6 x 5
synthetic rows in ten .npy files, updated nine times) and prints, for each, the largest
relative difference from one `linreg train --dtype float64` on all the rows: least-squares
coefficients, standard errors, the fit statistics and the model's standardization, and the
optimality gap the update's trained nn.Linear reached. The tests assert 1e-10.

    .venv/bin/python benchmarks/update_equality.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from regression.artifacts import load_model  # noqa: E402

LINREG = Path(sys.executable).parent / "linreg"
F64 = ["--dtype", "float64", "--no-plot", "-q"]
STATISTICS = ("r2", "adj_r2", "residual_std_err", "f_stat", "aic", "bic")


def run(cwd: Path, *args: str | Path) -> None:
    subprocess.run([str(LINREG), *map(str, args)], cwd=cwd, check=True)


def figures(run_dir: Path) -> dict[str, np.ndarray]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = metrics["statistics"]
    ols = metrics["ols_params"]
    model = load_model(run_dir / "model.safetensors")
    return {
        "coefficients": np.array([*ols["weight"], ols["bias"]]),
        "std errors": np.array([c["std_err"] for c in stats["coefficients"]]),
        "statistics": np.array([stats[key] for key in STATISTICS]),
        "standardization": np.concatenate([model.scaling_mean, model.scaling_scale]),
    }


def report(name: str, updated: Path, whole: Path) -> None:
    a, b = figures(updated), figures(whole)
    cells = [f"{np.max(np.abs(a[key] - b[key]) / np.abs(b[key])):.1e}" for key in a]
    gap = json.loads((updated / "metrics.json").read_text())["optimality_gap"]
    print(f"| {name} | {' | '.join(cells)} | {gap} |")


def longley(cwd: Path) -> None:
    header, *rows = (ROOT / "tests" / "data" / "longley.csv").read_text().split("\n")[:17]
    for k, (start, end) in enumerate([(0, 6), (6, 11), (11, 16)]):
        (cwd / f"part{k}.csv").write_text("\n".join([header, *rows[start:end]]) + "\n")
    run(cwd, "train", "--data", "part0.csv", "--target", "y", *F64, "--out", "L0")
    for k in (1, 2):
        run(cwd, "update", f"L{k - 1}/model.safetensors", "--data", f"part{k}.csv",
            "--out", f"L{k}", "--no-plot", "-q")  # fmt: skip
    run(cwd, "train", "--data", ROOT / "tests" / "data" / "longley.csv", "--target", "y",
        *F64, "--out", "whole")  # fmt: skip
    report("Longley, 6+5+5 rows (updated twice)", cwd / "L2", cwd / "whole")


def million(cwd: Path) -> None:
    rng = np.random.default_rng(11)
    n = 1_000_000
    X = rng.normal(size=(n, 5)) * [1.0, 10.0, 0.1, 3.0, 100.0] + [0.0, 50.0, -2.0, 7.0, 1e3]
    y = X @ [1.0, -0.5, 3.0, 0.25, 0.01] + 4.0 + rng.normal(size=n)
    table = np.column_stack([X, y])
    np.save(cwd / "all.npy", table)
    for k, rows in enumerate(np.array_split(table, 10)):
        np.save(cwd / f"day{k}.npy", rows)
    run(cwd, "train", "--data", "day0.npy", *F64, "--out", "M0")
    for k in range(1, 10):
        run(cwd, "update", f"M{k - 1}/model.safetensors", "--data", f"day{k}.npy",
            "--out", f"M{k}", "--no-plot", "-q")  # fmt: skip
    run(cwd, "train", "--data", "all.npy", *F64, "--out", "whole")
    report("1e6 x 5 synthetic, 10 parts (updated 9 times)", cwd / "M9", cwd / "whole")


def main() -> None:
    print("| data | coefficients | std errors | statistics | standardization | gap |")
    print("|---|---|---|---|---|---|")
    for case in (longley, million):
        with tempfile.TemporaryDirectory() as folder:
            case(Path(folder))


if __name__ == "__main__":
    main()
