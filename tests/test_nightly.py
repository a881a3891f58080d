"""Nightly jobs through the real ``linreg``: warm starts (--init-model), exact incremental
least squares (linreg update), the run history (linreg runs) and drift (linreg compare).

The oracle of an update is one ``linreg train`` on all the rows at once: the least-squares
reference, its statistics and the standardization must agree to 1e-10 relative in float64
(Longley split in three, a synthetic 1e6-row set split in ten), and np.linalg.lstsq for the
categorical case.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics as stdlib_statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TrainRun, assert_one_error, expect_exit, run_linreg, strict_json

from regression.artifacts import ModelFile, load_model, save_model

DATA = Path(__file__).parent / "data"
F64 = ("--dtype", "float64", "--no-plot", "-q")
EQUAL = 1e-10  # relative: an update against one fit of all the rows, in float64


def train(cwd: Path, out: str, *args: str | Path) -> TrainRun:
    return TrainRun(run_linreg("train", *args, "--out", out, cwd=cwd), cwd / out).ok()


def update(cwd: Path, model: Path, data: Path, out: str, *args: str) -> TrainRun:
    result = run_linreg("update", model, "--data", data, "--out", out, "--no-plot", *args, cwd=cwd)
    return TrainRun(result, cwd / out).ok()


def coefficients(metrics: dict[str, Any], key: str = "ols_params") -> np.ndarray:
    return np.array([*metrics[key]["weight"], metrics[key]["bias"]])


def std_errs(metrics: dict[str, Any]) -> np.ndarray:
    return np.array([c["std_err"] for c in metrics["statistics"]["coefficients"]], dtype=float)


def assert_same_fit(updated: TrainRun, whole: TrainRun) -> None:
    """The update's least squares, statistics and standardization are the one fit's."""
    a, b = updated.metrics, whole.metrics
    assert a["data"]["samples"] == b["data"]["samples"]
    np.testing.assert_allclose(coefficients(a), coefficients(b), rtol=EQUAL, atol=0)
    np.testing.assert_allclose(std_errs(a), std_errs(b), rtol=EQUAL, atol=0)
    for key in ("r2", "adj_r2", "residual_std_err", "f_stat", "aic", "bic"):
        assert a["statistics"][key] == pytest.approx(b["statistics"][key], rel=EQUAL), key
    model_a = load_model(updated.out / "model.safetensors")
    model_b = load_model(whole.out / "model.safetensors")
    np.testing.assert_allclose(model_a.scaling_mean, model_b.scaling_mean, rtol=EQUAL)
    np.testing.assert_allclose(model_a.scaling_scale, model_b.scaling_scale, rtol=EQUAL)
    assert model_a.state is not None and model_b.state is not None
    assert model_a.state.samples == model_b.state.samples
    # the trained nn.Linear reached the reference of all the rows
    assert a["optimality_gap"] is None or a["optimality_gap"] < 1e-9
    assert a["update"] is True and a["data"]["new_samples"] < a["data"]["samples"]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# -- 2. exact incremental least squares --------------------------------------------------------


@pytest.fixture(scope="module")
def longley(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainRun]:
    """Longley (NIST StRD, condition number 5e9) in three parts: 6, 5 and 5 rows."""
    cwd = tmp_path_factory.mktemp("longley")
    header, *rows = (DATA / "longley.csv").read_text().split("\n")[:17]
    parts = [
        write_csv(cwd / f"part{k}.csv", header, rows[a:b])
        for k, (a, b) in enumerate([(0, 6), (6, 11), (11, 16)])
    ]
    first = train(cwd, "day1", "--data", parts[0], "--target", "y", *F64)
    second = update(cwd, first.out / "model.safetensors", parts[1], "day2", "-q")
    third = update(cwd, second.out / "model.safetensors", parts[2], "day3", "-q")
    whole = train(cwd, "whole", "--data", DATA / "longley.csv", "--target", "y", *F64)
    return {"first": first, "second": second, "third": third, "whole": whole}


def test_longley_updated_twice_is_one_fit_of_all_its_rows(longley: dict[str, TrainRun]) -> None:
    assert longley["third"].metrics["data"]["new_samples"] == 5
    assert longley["second"].metrics["data"]["samples"] == 11
    assert_same_fit(longley["third"], longley["whole"])


def test_an_update_records_its_parent(longley: dict[str, TrainRun]) -> None:
    parent_file = longley["second"].out / "model.safetensors"
    parent = longley["third"].metrics["parent"]
    assert parent["path"] == str(parent_file.resolve())
    assert parent["sha256"] == hashlib.sha256(parent_file.read_bytes()).hexdigest()
    assert parent["samples"] == 11
    config = (longley["third"].out / "config.toml").read_text()
    assert config.startswith("# written by `linreg update")


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainRun]:
    """1e6 rows of 5 features in unlike units and offsets, in ten .npy files."""
    cwd = tmp_path_factory.mktemp("million")
    rng = np.random.default_rng(11)
    n = 1_000_000
    X = rng.normal(size=(n, 5)) * [1.0, 10.0, 0.1, 3.0, 100.0] + [0.0, 50.0, -2.0, 7.0, 1e3]
    y = X @ [1.0, -0.5, 3.0, 0.25, 0.01] + 4.0 + rng.normal(size=n)
    table = np.column_stack([X, y])
    np.save(cwd / "all.npy", table)
    parts = []
    for k, rows in enumerate(np.array_split(table, 10)):
        parts.append(cwd / f"day{k}.npy")
        np.save(parts[-1], rows)
    runs = {"day0": train(cwd, "day0", "--data", parts[0], *F64)}
    for k in range(1, 10):
        parent = runs[f"day{k - 1}"].out / "model.safetensors"
        runs[f"day{k}"] = update(cwd, parent, parts[k], f"day{k}", "-q")
    runs["whole"] = train(cwd, "whole", "--data", cwd / "all.npy", *F64)
    return runs


def test_a_million_rows_updated_nine_times_are_one_fit(million: dict[str, TrainRun]) -> None:
    assert million["day9"].metrics["data"]["samples"] == 1_000_000
    assert million["day9"].metrics["data"]["new_samples"] == 100_000
    assert_same_fit(million["day9"], million["whole"])
    # no mean absolute error without the old rows: null, not a made-up number
    assert million["day9"].metrics["train"]["mae"] is None
    assert million["day9"].metrics["train"]["mse"] == pytest.approx(
        million["whole"].metrics["train"]["mse"], rel=1e-9
    )


def regional_rows(rng: np.random.Generator, n: int, shares: dict[str, float]) -> list[str]:
    """``region,x,y`` lines: y = 1 + 2x + a level effect + noise, a share of x missing."""
    levels = list(shares)
    region = rng.choice(levels, size=n, p=list(shares.values()))
    effect = {"north": 0.0, "south": 0.7, "east": -0.4, "west": 1.3}
    x = rng.random(n) * 4
    y = 1 + 2 * x + np.array([effect[r] for r in region]) + 0.05 * rng.normal(size=n)
    cells = [repr(v) for v in x.tolist()]
    for k in rng.choice(n, size=n // 10, replace=False):
        cells[k] = "NA"
    return [f"{r},{a},{b!r}" for r, a, b in zip(region, cells, y.tolist(), strict=True)]


def test_new_levels_references_and_fill_values_fold_in(tmp_path: Path) -> None:
    """update(update(A, B), C) equals one fit on A+B+C when the encoding itself moves: B
    brings a level A never had (west), C makes another level the most frequent (so the
    reference changes from north to south), and --missing mean's fill values become the
    mean of every observed cell. The oracle is ``linreg train`` on all the rows (its
    encoding: levels, reference, fills) and np.linalg.lstsq on that coding."""
    rng = np.random.default_rng(3)
    parts = [
        regional_rows(rng, 60, {"north": 0.6, "south": 0.25, "east": 0.15}),
        regional_rows(rng, 50, {"north": 0.4, "south": 0.3, "east": 0.1, "west": 0.2}),
        regional_rows(rng, 90, {"north": 0.1, "south": 0.7, "east": 0.1, "west": 0.1}),
    ]
    header = "region,x,y"
    files = [write_csv(tmp_path / f"part{k}.csv", header, rows) for k, rows in enumerate(parts)]
    whole_file = write_csv(tmp_path / "all.csv", header, [r for rows in parts for r in rows])
    first = train(tmp_path, "first", "--data", files[0], "--missing", "mean", *F64)
    names = first.metrics["data"]["feature_names"]
    assert names == ["region=east", "region=south", "x", "missing(x)"]
    second = update(tmp_path, first.out / "model.safetensors", files[1], "second", "-q")
    third = update(tmp_path, second.out / "model.safetensors", files[2], "third", "-q")
    whole = train(tmp_path, "whole", "--data", whole_file, "--missing", "mean", *F64)
    names = ["region=east", "region=north", "region=west", "x", "missing(x)"]
    assert third.metrics["data"]["feature_names"] == whole.metrics["data"]["feature_names"] == names
    assert_same_fit(third, whole)
    encodings = [
        json.loads(load_model(run.out / "model.safetensors").encoding or "null")
        for run in (third, whole)
    ]
    assert encodings[0]["columns"][0]["reference"] == "south"
    for mine, theirs in zip(encodings[0]["columns"], encodings[1]["columns"], strict=True):
        assert mine["levels"] == theirs["levels"] and mine["reference"] == theirs["reference"]
        assert mine["indicator"] == theirs["indicator"]
        if theirs["fill"] is not None:
            assert mine["fill"] == pytest.approx(theirs["fill"], rel=EQUAL)
    # the oracle: lstsq on all the rows, coded with south as the reference, x's NA filled
    cells = [line.split(",") for rows in parts for line in rows]
    region = np.array([c[0] for c in cells])
    x = np.array([np.nan if c[1] == "NA" else float(c[1]) for c in cells])
    missing = np.isnan(x)
    x[missing] = np.mean(x[~missing])
    X = np.column_stack(
        [region == "east", region == "north", region == "west", x, missing, np.ones(len(x))]
    ).astype(float)
    oracle = np.linalg.lstsq(X, np.array([float(c[2]) for c in cells]), rcond=None)[0]
    np.testing.assert_allclose(coefficients(third.metrics), oracle, rtol=EQUAL, atol=1e-12)
    # predict reads the joined coding: a row of the new level west is predicted
    result = run_linreg(
        "predict", third.out / "model.safetensors", "--data", files[1], cwd=tmp_path
    )
    expect_exit(result, 0)


def test_categorical_levels_and_the_missing_policy_carry_over(tmp_path: Path) -> None:
    """An update reads the new rows as the model did (its columns in any order, its
    --missing drop): the result is lstsq on all the kept rows, coded the model's way."""
    rng = np.random.default_rng(3)
    levels = np.array(["north", "south", "east"])

    def rows(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        region = rng.choice(levels, size=n, p=[0.5, 0.3, 0.2])
        x = rng.random(n) * 4
        y = 1 + 2 * x + (region == "south") * 0.7 - (region == "east") * 0.4
        y = y + 0.05 * rng.normal(size=n)
        lines = [f"{r},{a!r},{b!r}" for r, a, b in zip(region, x.tolist(), y.tolist(), strict=True)]
        return lines, np.column_stack([region == "east", region == "south", x]).astype(float), y

    old, X_old, y_old = rows(80)
    new, X_new, y_new = rows(40)
    new[5] = "south,,1.0"  # dropped, as the model's --missing drop says
    keep = np.ones(40, dtype=bool)
    keep[5] = False
    first = train(
        tmp_path,
        "first",
        "--data",
        write_csv(tmp_path / "old.csv", "region,x,y", old),
        "--missing",
        "drop",
        *F64,
    )
    assert first.metrics["data"]["feature_names"] == ["region=east", "region=south", "x"]
    later = update(
        tmp_path,
        first.out / "model.safetensors",
        write_csv(tmp_path / "new.csv", "y,x,region", [",".join(r.split(",")[::-1]) for r in new]),
        "later",
        "-q",
    )
    assert later.metrics["data"]["dropped_rows"] == 1
    X = np.vstack([X_old, X_new[keep]])
    y = np.concatenate([y_old, y_new[keep]])
    oracle = np.linalg.lstsq(np.column_stack([X, np.ones(len(y))]), y, rcond=None)[0]
    np.testing.assert_allclose(coefficients(later.metrics), oracle, rtol=EQUAL, atol=1e-12)
    # a number column of the model with text in the new rows cannot be folded in
    text = write_csv(tmp_path / "text.csv", "region,x,y", ["north,lots,2.0", "north,2.0,5.0"])
    result = run_linreg(
        "update", first.out / "model.safetensors", "--data", text, "--out", "bad", cwd=tmp_path
    )
    expect_exit(result, 2)
    assert_one_error(result, "'x'", "text")
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_update_refuses_what_it_cannot_fold_in(
    longley: dict[str, TrainRun], tmp_path: Path
) -> None:
    model_path = longley["whole"].out / "model.safetensors"
    # a model from before the least-squares state (another version): refused, with the fix
    old = load_model(model_path)
    stateless = tmp_path / "old.safetensors"
    save_model(stateless, ModelFile(**{**vars(old), "state": None, "version": "0.0.9"}))
    data = DATA / "longley.csv"
    result = run_linreg("update", stateless, "--data", data, "--out", "a", cwd=tmp_path)
    expect_exit(result, 2)
    assert_one_error(result, "no least-squares state", "0.0.9", "train")
    # new rows without one of the model's columns
    narrow = tmp_path / "narrow.csv"
    lines = data.read_text().split("\n")
    narrow.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines if line) + "\n")
    result = run_linreg("update", model_path, "--data", narrow, "--out", "b", cwd=tmp_path)
    expect_exit(result, 2)
    assert_one_error(result, "x6")
    # not a model file at all
    result = run_linreg("update", data, "--data", data, "--out", "c", cwd=tmp_path)
    expect_exit(result, 2)
    assert_one_error(result, "longley.csv")
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))


# -- 1. warm start ---------------------------------------------------------------------------


def test_init_model_starts_from_the_models_parameters(longley: dict[str, TrainRun]) -> None:
    """The first epoch's loss is that of the parent's parameters on the new rows (so the
    loop started there, not at zero); metrics.json names the parent."""
    cwd = longley["whole"].out.parent
    parent_file = longley["first"].out / "model.safetensors"
    run = train(
        cwd,
        "warm",
        "--data",
        DATA / "longley.csv",
        "--target",
        "y",
        "--init-model",
        parent_file,
        *F64,
        "--precondition",
        "standardize",
    )
    parent = load_model(parent_file)
    table = np.loadtxt(DATA / "longley.csv", delimiter=",", skiprows=1)
    y, X = table[:, 0], table[:, 1:]
    mse = float(np.mean((X @ parent.weight + parent.bias - y) ** 2))
    history = np.loadtxt(run.out / "history.csv", delimiter=",", skiprows=1, ndmin=2)
    assert history[0, 1] == pytest.approx(mse, rel=1e-9)
    assert run.metrics["parent"]["sha256"] == hashlib.sha256(parent_file.read_bytes()).hexdigest()
    assert run.metrics["update"] is False
    assert_same_fit_reference(run, longley["whole"])


def assert_same_fit_reference(run: TrainRun, whole: TrainRun) -> None:
    """A warm start changes where training starts, not what it fits."""
    np.testing.assert_allclose(
        coefficients(run.metrics), coefficients(whole.metrics), rtol=1e-12, atol=0
    )


def test_init_model_of_other_features_is_refused(longley: dict[str, TrainRun]) -> None:
    cwd = longley["whole"].out.parent
    result = run_linreg(
        "train",
        "--data",
        DATA / "longley.csv",
        "--target",
        "y",
        "--exclude",
        "x6",
        "--init-model",
        longley["whole"].out / "model.safetensors",
        "--out",
        "other",
        cwd=cwd,
    )
    expect_exit(result, 2)
    assert_one_error(result, "other features than the data", "missing from the data: x6")
    assert not (cwd / "other").exists()


# -- 3. run history --------------------------------------------------------------------------


def test_runs_lists_newest_first_and_survives_foreign_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for k in range(3):
        data = tmp_path / f"d{k}.csv"
        write_csv(data, "x,y", [f"{i},{2 * i + k + 0.1 * (i % 3)}" for i in range(20)])
        train(tmp_path, f"runs/2026120{k + 1}T020000Z", "--data", data, "--no-plot", "-q")
    train(tmp_path, "runs/2026-12-12", "--data", data, "--no-plot", "-q")  # $(date +%F)
    (runs / "20261210T020000Z").mkdir()  # a run that never finished: no metrics.json
    (runs / "20261211T020000Z").mkdir()
    (runs / "20261211T020000Z" / "metrics.json").write_text('{"not": "linreg"}')
    (runs / "notes.txt").write_text("a file, not a run")
    result = run_linreg("runs", "--json", cwd=tmp_path)  # the default folder: ./runs
    expect_exit(result, 0)
    listed = strict_json(result.stdout)["runs"]
    assert [Path(r["path"]).name for r in listed] == [
        "2026-12-12",
        "20261211T020000Z",
        "20261210T020000Z",
        "20261203T020000Z",
        "20261202T020000Z",
        "20261201T020000Z",
    ]
    assert [r["status"] for r in listed] == ["complete", "foreign", "incomplete"] + ["complete"] * 3
    assert listed[0]["time"] == "2026-12-12T00:00:00Z"
    newest = listed[3]
    metrics = json.loads((runs / "20261203T020000Z" / "metrics.json").read_text())
    assert newest["samples"] == 20 and newest["r2"] == metrics["train"]["r2"]
    assert newest["coefficients"]["intercept"] == metrics["params"]["bias"]
    assert newest["converged"] is metrics["converged"]
    assert newest["time"] == "2026-12-03T02:00:00Z"
    limited = run_linreg("runs", "runs", "--limit", "3", cwd=tmp_path)
    expect_exit(limited, 0)
    lines = limited.stdout.strip().split("\n")
    assert len(lines) == 4 and "(foreign)" in lines[2] and "(incomplete)" in lines[3]
    table = run_linreg("runs", cwd=tmp_path).stdout
    assert "d2.csv" in table and "intercept" in table
    missing = run_linreg("runs", "nowhere", cwd=tmp_path)
    expect_exit(missing, 2)
    assert_one_error(missing, "nowhere")
    expect_exit(run_linreg("runs", "--limit", "0", cwd=tmp_path), 2)


# -- 4. drift --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(8)

    def day(name: str, slope: float) -> TrainRun:
        x = rng.random((200, 2))
        y = 1 + x @ [2.0, slope] + 0.1 * rng.normal(size=200)
        rows = [f"{a!r},{b!r},{t!r}" for (a, b), t in zip(x.tolist(), y.tolist(), strict=True)]
        return train(cwd, name, "--data", write_csv(cwd / f"{name}.csv", "u,v,y", rows), *F64)

    return {
        "cwd": cwd,
        "monday": day("monday", 3.0),
        "tuesday": day("tuesday", 3.0),
        "wednesday": day("wednesday", 4.0),
    }


def test_compare_tests_each_coefficient(drift: dict[str, Any]) -> None:
    cwd = drift["cwd"]
    result = run_linreg("compare", "monday", "wednesday", "--json", cwd=cwd)
    expect_exit(result, 0)  # drift without --fail-on-drift is reported, not an error
    document = strict_json(result.stdout)
    a, b = drift["monday"].metrics, drift["wednesday"].metrics
    critical = stdlib_statistics.NormalDist().inv_cdf(0.975)
    for item, one, two in zip(
        document["coefficients"],
        a["statistics"]["coefficients"],
        b["statistics"]["coefficients"],
        strict=True,
    ):
        z = (two["estimate"] - one["estimate"]) / math.hypot(one["std_err"], two["std_err"])
        assert item["name"] == one["name"]
        assert item["z"] == pytest.approx(z, rel=1e-12)
        assert item["drifted"] is (abs(z) > critical)
    assert document["drifted"] == ["v"]
    assert document["fit"]["r2"] == [a["statistics"]["r2"], b["statistics"]["r2"]]


def test_fail_on_drift_exits_4_only_on_drift(drift: dict[str, Any]) -> None:
    cwd = drift["cwd"]
    moved = run_linreg("compare", "monday", "wednesday", "--fail-on-drift", cwd=cwd)
    expect_exit(moved, 4)
    assert_one_error(moved, "moved significantly", "v (z")
    assert "YES" in moved.stdout
    steady = run_linreg("compare", "monday", "tuesday", "--fail-on-drift", cwd=cwd)
    expect_exit(steady, 0)
    assert "YES" not in steady.stdout and "R2:" in steady.stdout


def test_compare_refuses_other_features_and_unfinished_runs(drift: dict[str, Any]) -> None:
    cwd = drift["cwd"]
    other = train(cwd, "narrow", "--data", cwd / "monday.csv", "--features", "u", *F64)
    result = run_linreg("compare", "monday", other.out, cwd=cwd)
    expect_exit(result, 2)
    assert_one_error(result, "different features", "only in monday: v")
    (cwd / "unfinished").mkdir()
    result = run_linreg("compare", "monday", "unfinished", cwd=cwd)
    expect_exit(result, 2)
    assert_one_error(result, "unfinished", "no metrics.json")
