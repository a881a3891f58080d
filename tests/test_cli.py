"""End-to-end tests of the real ``linreg`` command, run in subprocesses as a shell or cron would.

A run of ``linreg train`` costs a few seconds (mostly the torch import), so the runs are shared:
each module-scoped fixture starts a group of configurations side by side once, and several tests
assert on each. Usage errors fail before torch is imported and run one by one.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    Entry,
    TrainRun,
    assert_one_error,
    assert_plain,
    clean_env,
    cuda_available,
    describe,
    error_lines,
    expect_exit,
    hidden_files,
    options,
    run_concurrently,
    run_linreg,
    start_linreg,
    strict_json,
)

from regression import __version__

RUN_FILES = {"metrics.json", "model.safetensors", "history.csv", "config.toml", "plot.png"}
METRICS_KEYS = {
    "schema",
    "version",
    "data",
    "params",
    "true_params",
    "ols_params",
    "train",
    "val",
    "optimality_gap",
    "epochs_run",
    "converged",
    "device",
    "dtype",
    "seed",
    "seconds",
    "lr",
    "standardize",
    "statistics",
}
DATA_KEYS = {
    "source",
    "samples",
    "features",
    "feature_names",
    "target_name",
    "train_samples",
    "val_samples",
}
FIT_KEYS = {"mse", "rmse", "mae", "r2"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_NAME = re.compile(r"\d{8}T\d{6}Z(-\d+)?")


# -- reading what a run wrote -------------------------------------------------------------------


def read_toml(path_or_text: Path | str) -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return dict(tomllib.loads(text))


def read_history(path: Path) -> tuple[list[str], list[list[float]]]:
    """history.csv: its header and its rows of numbers (epoch first)."""
    header, *rows = path.read_text().splitlines()
    return header.split(","), [[float(cell) for cell in row.split(",")] for row in rows]


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and tensors of a safetensors file, read by hand: an 8-byte little-endian
    header length, a JSON header, raw little-endian numbers. Nothing is executed."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    metadata = header.pop("__metadata__", {})
    body = raw[8 + length :]
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F64", (name, info)
        start, stop = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:stop], dtype="<f8").reshape(info["shape"])
    return metadata, tensors


class Run(TrainRun):
    @cached_property
    def history(self) -> list[float]:
        return [row[1] for row in read_history(self.out / "history.csv")[1]]

    @cached_property
    def config(self) -> dict[str, Any]:
        return read_toml(self.out / "config.toml")

    @cached_property
    def model(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        return read_safetensors(self.out / "model.safetensors")

    def files(self) -> set[str]:
        return {path.name for path in self.out.iterdir()}


def train_job(
    cwd: Path,
    name: str,
    *args: str | os.PathLike[str],
    entry: Entry = "linreg",
    env: Mapping[str, str] | None = None,
) -> Callable[[], Run]:
    """A job for ``run_concurrently``: ``linreg train ARGS --out CWD/NAME``."""
    out = cwd / name

    def job() -> Run:
        result = run_linreg("train", *args, "--out", out, cwd=cwd, env=env, entry=entry)
        return Run(result, out)

    return job


def chain(*jobs: Callable[[], Run]) -> Callable[[], list[Run]]:
    """Jobs that must run one after the other (e.g. appending to the same log file)."""
    return lambda: [job() for job in jobs]


def assert_close(
    actual: Iterable[float], expected: Iterable[float], *, rel: float, abs_: float
) -> None:
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected), (actual, expected)
    assert actual == pytest.approx(expected, rel=rel, abs=abs_)


def assert_subset(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """``actual`` holds every key of ``expected`` with that value (and maybe more keys)."""
    assert {key: actual.get(key, "<missing>") for key in expected} == dict(expected)


def assert_same_model(first: Run, second: Run) -> None:
    """The same metadata and the same tensors, bit for bit."""
    (meta_1, tensors_1), (meta_2, tensors_2) = first.model, second.model
    assert meta_1 == meta_2
    assert tensors_1.keys() == tensors_2.keys()
    for name, tensor in tensors_1.items():
        assert tensor.tobytes() == tensors_2[name].tobytes(), name


def all_params(params: dict[str, Any]) -> list[float]:
    return [params["bias"], *params["weight"]]


# -- the demo and the runs that differ from it by one option ------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("demo")
    non_interactive = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TERM": "dumb",
        "NO_COLOR": "1",
    }
    return run_concurrently(
        {
            "linreg": train_job(cwd, "demo"),
            "module": train_job(cwd, "module", entry="module"),
            "json": train_job(cwd, "json", "--json"),
            "quiet": train_job(cwd, "quiet", "-q"),
            "plain_env": train_job(cwd, "plain_env", "--summary", env=non_interactive),
            "patience": train_job(cwd, "patience", "--patience", "1", "--no-plot"),
            "tol0": train_job(cwd, "tol0", "--tol", "0", "--epochs", "50", "--no-plot"),
            "weight_decay": train_job(cwd, "weight_decay", "--weight-decay", "1", "--no-plot"),
        }
    )


def test_demo_writes_a_complete_run_directory(demo: dict[str, Run]) -> None:
    run = demo["linreg"].ok()
    assert run.files() == RUN_FILES
    assert hidden_files(run.out) == []
    assert (run.out / "plot.png").read_bytes().startswith(PNG_MAGIC)
    assert (run.out / "plot.png").stat().st_size > 5_000


def test_demo_metrics_json_has_every_documented_key(demo: dict[str, Run]) -> None:
    metrics = demo["linreg"].ok().metrics
    assert set(metrics) >= METRICS_KEYS
    assert metrics["schema"] == 1
    assert metrics["version"] == __version__
    assert set(metrics["data"]) >= DATA_KEYS
    assert_subset(
        metrics["data"],
        {
            "source": "synthetic",
            "samples": 100,
            "features": 1,
            "feature_names": ["x1"],
            "target_name": "y",
            "train_samples": 100,
            "val_samples": 0,
        },
    )
    for key in ("params", "true_params", "ols_params"):
        assert set(metrics[key]) == {"weight", "bias"}, key
        assert len(metrics[key]["weight"]) == 1, key
    assert metrics["true_params"] == {"weight": [2.0], "bias": 1.0}
    assert set(metrics["train"]) >= FIT_KEYS
    assert metrics["train"]["rmse"] == pytest.approx(math.sqrt(metrics["train"]["mse"]))
    assert metrics["val"] is None
    assert metrics["epochs_run"] >= 1 and metrics["converged"] is True
    assert re.fullmatch(r"cpu|cuda:\d+|mps(:\d+)?", metrics["device"])
    assert metrics["dtype"] == "float32"
    assert metrics["seed"] == 0
    assert metrics["seconds"] > 0
    assert metrics["lr"] > 0 and metrics["standardize"] is True
    statistics = metrics["statistics"]
    assert [c["name"] for c in statistics["coefficients"]] == ["intercept", "x1"]
    assert statistics["confidence"] == 0.95


def test_demo_learns_the_least_squares_line(demo: dict[str, Run]) -> None:
    metrics = demo["linreg"].ok().metrics
    learned, ols = all_params(metrics["params"]), all_params(metrics["ols_params"])
    assert_close(learned, ols, rel=1e-4, abs_=1e-5)  # float32 training vs float64 solution
    assert -1e-9 <= metrics["optimality_gap"] < 1e-4
    assert_close(ols, [1.0, 2.0], rel=0, abs_=0.1)  # noise 0.1 on 100 samples
    assert 0.95 < metrics["train"]["r2"] <= 1
    assert metrics["train"]["rmse"] == pytest.approx(0.1, rel=0.2)


def test_demo_history_csv_has_one_row_per_epoch(demo: dict[str, Run]) -> None:
    run = demo["linreg"].ok()
    header, rows = read_history(run.out / "history.csv")
    assert header == ["epoch", "train_loss"]
    assert [row[0] for row in rows] == list(range(1, run.metrics["epochs_run"] + 1))
    losses = [row[1] for row in rows]
    assert all(math.isfinite(loss) and loss >= 0 for loss in losses)
    assert losses[-1] < losses[0] / 100
    assert losses[-1] == pytest.approx(run.metrics["train"]["mse"], rel=1e-3)


def test_demo_config_toml_is_the_resolved_options(demo: dict[str, Run], tmp_path: Path) -> None:
    run = demo["linreg"].ok()
    printed = read_toml(expect_exit(run_linreg("train", "--print-config", cwd=tmp_path), 0).stdout)
    # --print-config shows every resolved option; config.toml keeps the training ones
    assert run.config == {key: value for key, value in printed.items() if key in run.config}
    assert printed["json"] is False and printed["confidence"] == 0.95
    assert_subset(
        run.config,
        {
            "samples": 100,
            "features": 1,
            "weight": [2.0],
            "bias": 1.0,
            "noise": 0.1,
            "seed": 0,
            "epochs": 1000,
            "lr": "auto",
            "batch_size": 0,
            "precondition": "auto",
            "dtype": "float32",
        },
    )


def test_demo_model_file_is_safetensors_holding_the_learned_params(demo: dict[str, Run]) -> None:
    run = demo["linreg"].ok()
    metadata, tensors = run.model
    assert metadata["format"] == "linreg-model"
    assert json.loads(metadata["feature_names"]) == ["x1"]
    assert metadata["target_name"] == "y"
    assert tensors["weight"].tolist() == run.metrics["params"]["weight"]
    assert tensors["bias"].tolist() == [run.metrics["params"]["bias"]]


def test_demo_prints_a_plain_summary_naming_the_run_directory(demo: dict[str, Run]) -> None:
    result = demo["linreg"].ok().result
    assert str(demo["linreg"].out) in result.stdout
    assert re.search(r"^\s*intercept\s", result.stdout, re.M)
    assert re.search(r"^\s*x1\s", result.stdout, re.M)
    assert "coefficients" not in result.stdout.lower()  # the table needs --summary
    lines = result.stderr.splitlines()
    assert len(lines) <= 20, result.stderr  # a few progress lines, not one per epoch
    assert not any(re.match(r"(error|warning|Traceback)", line, re.I) for line in lines)
    assert_plain(result.stdout, "stdout")
    assert_plain(result.stderr, "stderr")


def test_python_m_cli_trains_exactly_like_the_console_script(demo: dict[str, Run]) -> None:
    script, module = demo["linreg"].ok(), demo["module"].ok()
    assert module.files() == RUN_FILES
    assert_same_model(module, script)
    assert module.metrics["params"] == script.metrics["params"]
    assert str(module.out) in module.result.stdout
    assert_plain(module.result.stdout + module.result.stderr)


def test_json_prints_exactly_the_metrics_document(demo: dict[str, Run]) -> None:
    run = demo["json"].ok()
    assert strict_json(run.result.stdout) == run.metrics  # one document: extra data fails
    assert run.result.stdout == (run.out / "metrics.json").read_text()
    assert run.files() == RUN_FILES
    assert not error_lines(run.result.stderr)
    assert_plain(run.result.stderr, "stderr")


def test_quiet_prints_nothing_and_still_writes_the_run(demo: dict[str, Run]) -> None:
    run = demo["quiet"].ok()
    assert run.result.stdout == ""
    assert run.result.stderr == ""
    assert run.files() == RUN_FILES
    assert run.metrics["params"] == demo["linreg"].ok().metrics["params"]


def test_non_interactive_environment(demo: dict[str, Run]) -> None:
    """cron: PATH only, no HOME, TERM=dumb, NO_COLOR=1, stdin closed, output piped."""
    run = demo["plain_env"].ok()
    assert run.files() == RUN_FILES
    assert run.metrics["params"] == demo["linreg"].ok().metrics["params"]
    assert str(run.out) in run.result.stdout
    assert re.search(r"^\s*x1\s+\S+", run.result.stdout, re.M)
    assert not any(
        re.match(r"(error|warning|Traceback)", line, re.I)
        for line in run.result.stderr.splitlines()
    ), run.result.stderr
    assert_plain(run.result.stdout, "stdout")
    assert_plain(run.result.stderr, "stderr")


def test_patience_stops_sooner(demo: dict[str, Run]) -> None:
    default, patient = demo["linreg"].ok().metrics, demo["patience"].ok().metrics
    assert patient["converged"] is True
    assert patient["epochs_run"] < default["epochs_run"]
    assert len(demo["patience"].history) == patient["epochs_run"]
    assert demo["patience"].config["patience"] == 1


def test_tol_0_runs_every_epoch(demo: dict[str, Run]) -> None:
    run = demo["tol0"].ok()
    assert demo["linreg"].metrics["epochs_run"] < 50  # the default tol stops the demo early
    assert run.metrics["epochs_run"] == 50
    assert run.metrics["converged"] is False
    assert len(run.history) == 50
    assert run.config["tol"] == 0


def test_weight_decay_shrinks_the_weight(demo: dict[str, Run]) -> None:
    """On one standardized feature, MSE + (L/2) w^2 has its minimum at w_ols * 2 / (2 + L)."""
    metrics = demo["weight_decay"].ok().metrics
    ratio = metrics["params"]["weight"][0] / metrics["ols_params"]["weight"][0]
    assert ratio == pytest.approx(2 / 3, rel=1e-4)
    assert metrics["optimality_gap"] > 0.1
    assert demo["weight_decay"].config["weight_decay"] == 1.0


def test_no_plot_writes_no_figure(demo: dict[str, Run]) -> None:
    run = demo["weight_decay"].ok()
    assert run.files() == RUN_FILES - {"plot.png"}


# -- every training option, on 3 features -------------------------------------------------------

BASE = {
    "samples": 200,
    "features": 3,
    "weight": [1, -2, 0.5],
    "bias": 0.5,
    "noise": 0.5,
    "seed": 2,
    "epochs": 20,
    "tol": 0,
    "lr": 0.005,
    "device": "cpu",
}
SINGLE = {"samples": 50, "features": 3, "weight": [1.5], "bias": -2, "noise": 0, "dtype": "float64"}


def write_table(path: Path) -> Path:
    """80 rows of price = 2 + 3 a - 0.5 b + 0.01 N(0, 1); the target is the first column."""
    rng = np.random.default_rng(1)
    a, b = rng.random(80), 10 * rng.random(80)
    price = 2 + 3 * a - 0.5 * b + 0.01 * rng.standard_normal(80)
    rows = [",".join(map(repr, row)) for row in np.column_stack([price, a, b]).tolist()]
    path.write_text("price,a,b\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("figures")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, figures: Path) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("options")
    log = cwd / "train.log"
    table = write_table(cwd / "prices.csv")
    batch = options(**BASE, batch_size=10, no_plot=True, log_file=log)
    return run_concurrently(
        {
            "base": train_job(
                cwd,
                "base",
                *options(**BASE, plot=figures / "fig.svg", summary=True, confidence=0.9),
            ),
            "momentum": train_job(
                cwd,
                "momentum",
                *options(**BASE, momentum=0.9, plot=figures / "fig.pdf", summary=True),
            ),
            "batch": chain(train_job(cwd, "batch", *batch), train_job(cwd, "batch2", *batch)),
            "seed": train_job(
                cwd, "seed", *options(**(BASE | {"seed": 3}), batch_size=10, no_plot=True)
            ),
            "raw": train_job(cwd, "raw", *options(**BASE, no_standardize=True, no_plot=True)),
            "single": train_job(cwd, "single", *options(**SINGLE, no_plot=True)),
            "data": train_job(
                cwd, "data", *options(data=table, target="price", val_fraction=0.25, no_plot=True)
            ),
            "log": lambda: log,
        }
    )


def test_synthetic_data_options(runs: dict[str, Any], demo: dict[str, Run]) -> None:
    metrics = runs["base"].ok().metrics
    assert metrics["data"]["samples"] == 200
    assert metrics["data"]["features"] == 3
    assert metrics["data"]["feature_names"] == ["x1", "x2", "x3"]
    assert metrics["true_params"] == {"weight": [1.0, -2.0, 0.5], "bias": 0.5}
    assert metrics["seed"] == 2
    assert_close(all_params(metrics["ols_params"]), [0.5, 1.0, -2.0, 0.5], rel=0, abs_=0.6)
    # --noise is the standard deviation of the noise the fit cannot explain
    assert metrics["statistics"]["residual_std_err"] == pytest.approx(0.5, rel=0.15)
    assert demo["linreg"].metrics["statistics"]["residual_std_err"] == pytest.approx(0.1, rel=0.15)
    assert len(runs["base"].model[1]["weight"]) == 3


def test_one_weight_is_used_for_every_feature_and_noise_0_is_exact(runs: dict[str, Any]) -> None:
    run = runs["single"].ok()
    metrics = run.metrics
    assert metrics["true_params"] == {"weight": [1.5, 1.5, 1.5], "bias": -2.0}
    assert_close(all_params(metrics["ols_params"]), [-2, 1.5, 1.5, 1.5], rel=0, abs_=1e-9)
    assert metrics["statistics"]["residual_std_err"] < 1e-9
    assert metrics["train"]["r2"] == pytest.approx(1.0, abs=1e-9)
    assert_close(all_params(metrics["params"]), [-2, 1.5, 1.5, 1.5], rel=0, abs_=1e-6)


def test_noise_free_fit_has_no_negative_optimality_gap(runs: dict[str, Any]) -> None:
    gap = runs["single"].ok().metrics["optimality_gap"]
    assert gap is None or gap >= 0


def test_dtype_float64_trains_in_float64(runs: dict[str, Any]) -> None:
    single, base = runs["single"].ok(), runs["base"].ok()
    assert single.metrics["dtype"] == "float64" and base.metrics["dtype"] == "float32"
    assert single.model[0]["dtype"] == "float64" and base.model[0]["dtype"] == "float32"
    assert single.config["dtype"] == "float64"

    def float32_exact(loss: float) -> bool:
        return float(np.float32(loss)) == loss

    assert all(map(float32_exact, base.history))  # full-batch float32 losses
    assert not all(map(float32_exact, single.history))


def test_epochs_with_tol_0_runs_exactly_that_many(runs: dict[str, Any]) -> None:
    run = runs["base"].ok()
    assert run.metrics["epochs_run"] == 20 and len(run.history) == 20
    assert run.metrics["converged"] is False
    assert run.config["epochs"] == 20


def test_lr_float_is_the_step_used(runs: dict[str, Any], demo: dict[str, Run]) -> None:
    run = runs["base"].ok()
    assert run.metrics["lr"] == 0.005
    assert run.config["lr"] == 0.005
    assert demo["linreg"].metrics["lr"] != 0.005  # auto derives its own
    # a small fixed step is still far from the optimum after 20 epochs
    assert run.metrics["optimality_gap"] > 0.1


def test_momentum_changes_and_speeds_up_training(runs: dict[str, Any]) -> None:
    plain, heavy = runs["base"].ok(), runs["momentum"].ok()
    assert heavy.history[0] == plain.history[0]  # same data, same zero start
    assert heavy.history[1:] != plain.history[1:]
    assert heavy.metrics["optimality_gap"] < plain.metrics["optimality_gap"] / 10
    assert heavy.config["momentum"] == 0.9 and plain.config["momentum"] == "auto"
    # with an explicit --lr, automatic momentum is none
    assert heavy.metrics["momentum"] == 0.9 and plain.metrics["momentum"] == 0.0


def test_batch_size_takes_several_steps_per_epoch(runs: dict[str, Any]) -> None:
    full = runs["base"].ok()
    batched = runs["batch"][0].ok()
    assert len(batched.history) == 20
    # 20 steps per epoch instead of 1: much closer to the optimum after as many epochs
    assert batched.metrics["optimality_gap"] < full.metrics["optimality_gap"] / 100
    assert batched.config["batch_size"] == 10 and full.config["batch_size"] == 0


def test_same_options_give_the_same_model_bit_for_bit(runs: dict[str, Any]) -> None:
    first, second = (run.ok() for run in runs["batch"])
    assert_same_model(first, second)
    assert first.metrics["params"] == second.metrics["params"]
    assert (first.out / "history.csv").read_text() == (second.out / "history.csv").read_text()


def test_same_options_give_byte_identical_model_files(
    runs: dict[str, Any], demo: dict[str, Run]
) -> None:
    """Byte for byte, across processes and entry points (no hash-map order, no time stamps)."""
    batch = {(run.ok().out / "model.safetensors").read_bytes() for run in runs["batch"]}
    same_demo = [demo[name].ok() for name in ("linreg", "module", "quiet", "plain_env")]
    demos = {(run.out / "model.safetensors").read_bytes() for run in same_demo}
    assert len(batch) == 1 and len(demos) == 1


def test_a_different_seed_gives_different_data_and_params(runs: dict[str, Any]) -> None:
    two, three = runs["batch"][0].ok(), runs["seed"].ok()
    assert three.metrics["seed"] == 3 and three.config["seed"] == 3
    assert all_params(three.metrics["params"]) != all_params(two.metrics["params"])
    assert all_params(three.metrics["ols_params"]) != all_params(two.metrics["ols_params"])


def test_no_standardize_trains_on_raw_features(runs: dict[str, Any]) -> None:
    raw, scaled = runs["raw"].ok(), runs["base"].ok()
    assert raw.metrics["standardize"] is False and scaled.metrics["standardize"] is True
    assert raw.config["precondition"] == "none"  # --no-standardize is its alias
    assert raw.metrics["precondition"] == "none" and scaled.metrics["precondition"] != "none"
    raw_meta, raw_tensors = raw.model
    scaled_meta, scaled_tensors = scaled.model
    assert json.loads(raw_meta["standardize"]) is False and raw_meta["precondition"] == "none"
    assert json.loads(scaled_meta["standardize"]) is True
    assert raw_tensors["scaling.mean"].tolist() == [0.0, 0.0, 0.0]
    assert raw_tensors["scaling.scale"].tolist() == [1.0, 1.0, 1.0]
    assert np.all(np.abs(scaled_tensors["scaling.mean"] - 0.5) < 0.1)  # x ~ U[0, 1)
    assert raw.history[1:] != scaled.history[1:]


def test_data_file_target_and_validation_split(runs: dict[str, Any]) -> None:
    run = runs["data"].ok()
    data = run.metrics["data"]
    assert data["source"] == str(runs["data"].out.parent / "prices.csv")
    assert data["target_name"] == "price"  # not the last column, b
    assert data["feature_names"] == ["a", "b"]
    assert (data["samples"], data["train_samples"], data["val_samples"]) == (80, 60, 20)
    assert run.metrics["true_params"] is None
    assert set(run.metrics["val"]) >= FIT_KEYS and run.metrics["val"]["r2"] > 0.99
    ols = all_params(run.metrics["ols_params"])
    assert_close(ols, [2, 3, -0.5], rel=0, abs_=0.02)
    assert_close(all_params(run.metrics["params"]), ols, rel=1e-4, abs_=1e-5)
    header, rows = read_history(run.out / "history.csv")
    assert header == ["epoch", "train_loss", "val_loss"]
    assert len(rows) == run.metrics["epochs_run"] and all(len(row) == 3 for row in rows)
    assert run.config["val_fraction"] == 0.25 and run.config["target"] == "price"
    assert "price" in run.result.stdout and "prices.csv" in run.result.stdout


def test_a_run_at_the_optimum_converges(runs: dict[str, Any]) -> None:
    metrics = runs["data"].ok().metrics
    assert metrics["optimality_gap"] < 1e-9
    assert metrics["converged"] is True
    assert metrics["epochs_run"] < 1000


def test_device_cpu(runs: dict[str, Any]) -> None:
    run = runs["base"].ok()
    assert run.metrics["device"] == "cpu"
    assert run.config["device"] == "cpu"


def test_plot_elsewhere_as_svg_and_pdf(runs: dict[str, Any], figures: Path) -> None:
    svg, pdf = runs["base"].ok(), runs["momentum"].ok()
    assert svg.files() == RUN_FILES - {"plot.png"}
    assert pdf.files() == RUN_FILES - {"plot.png"}
    svg_bytes = (figures / "fig.svg").read_bytes()
    assert b"<svg" in svg_bytes[:1000] and svg_bytes.rstrip().endswith(b"</svg>")
    pdf_bytes = (figures / "fig.pdf").read_bytes()
    assert pdf_bytes.startswith(b"%PDF-") and b"%%EOF" in pdf_bytes[-64:]
    assert str(figures / "fig.svg") in svg.result.stdout
    assert str(figures / "fig.pdf") in pdf.result.stdout
    assert hidden_files(figures) == []


def test_log_file_is_appended_by_each_run(runs: dict[str, Any]) -> None:
    first, second = (run.ok() for run in runs["batch"])
    text = runs["log"].read_text()
    assert_plain(text, "the log file")
    lines = text.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line) for line in lines), text
    named = [line for line in lines if str(first.out) in line or str(second.out) in line]
    assert len(named) == 2 and str(first.out) in named[0] and str(second.out) in named[1], text
    assert sum("epoch 1/20" in line for line in lines) == 2  # progress of both runs
    assert "epoch 1/20" in first.result.stderr  # the log does not replace stderr


def test_summary_prints_a_plain_coefficient_table(runs: dict[str, Any]) -> None:
    result = runs["base"].ok().result
    table = result.stdout[result.stdout.lower().index("coefficient") :]
    for name in ("intercept", "x1", "x2", "x3"):
        assert re.search(rf"^\s*{name}\s+-?\d", table, re.M), (name, table)
    assert "90%" in table
    assert_plain(result.stdout, "stdout")
    assert "coefficient" not in runs["batch"][0].result.stdout.lower()


def test_confidence_changes_the_intervals(runs: dict[str, Any]) -> None:
    from scipy import stats

    at_90 = runs["base"].ok().metrics["statistics"]
    at_95 = runs["momentum"].ok().metrics["statistics"]
    assert at_90["confidence"] == 0.9 and at_95["confidence"] == 0.95
    assert "95%" in runs["momentum"].result.stdout
    df = at_90["df_resid"]
    expected = stats.t.ppf(0.95, df) / stats.t.ppf(0.975, df)
    for c90, c95 in zip(at_90["coefficients"], at_95["coefficients"], strict=True):
        assert c90["estimate"] == c95["estimate"]  # same data, same least squares
        assert c90["ci_low"] < c90["estimate"] < c90["ci_high"]
        ratio = (c90["ci_high"] - c90["ci_low"]) / (c95["ci_high"] - c95["ci_low"])
        assert ratio == pytest.approx(expected, rel=1e-6)


def test_print_config_prints_toml_and_trains_nothing(runs: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "never"
    args = options(**BASE, batch_size=10, no_plot=True)
    result = expect_exit(
        run_linreg("train", *args, "--print-config", "--out", out, cwd=tmp_path), 0
    )
    assert result.stderr == ""
    printed = read_toml(result.stdout)
    assert_subset(
        printed,
        {
            "samples": 200,
            "features": 3,
            "weight": [1.0, -2.0, 0.5],
            "lr": 0.005,
            "batch_size": 10,
            "device": "cpu",
        },
    )
    saved = runs["batch"][0].ok().config  # config.toml holds the same training options
    assert saved == {key: value for key, value in printed.items() if key in saved}
    assert printed["no_plot"] is True and printed["out"] == str(out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_every_train_option_is_covered_here(tmp_path: Path) -> None:
    """A new option of ``linreg train`` must come with a test of its effect in this file."""
    covered = {
        "--samples", "--features", "--weight", "--bias", "--noise", "--seed", "--epochs",
        "--lr", "--batch-size", "--momentum", "--weight-decay", "--standardize",
        "--no-standardize", "--tol", "--patience", "--device", "--dtype", "--out",
        "--overwrite", "--plot", "--no-plot", "--json", "--quiet", "--print-config",
        "--log-file", "--summary", "--confidence", "--debug", "--data", "--target",
        "--val-fraction",
        # tested in test_unattended.py
        "--config", "--checkpoint-every", "--resume",
        # tested in test_precondition.py
        "--precondition", "--require-converged",
        # tested in test_tables.py
        "--exclude", "--categorical", "--missing", "--na-values", "--max-levels", "--format",
        # tested in test_nightly.py
        "--init-model",
    }  # fmt: skip
    result = expect_exit(run_linreg("train", "--help", cwd=tmp_path), 0)
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout)) - {"--help"}
    assert "--samples" in listed
    assert listed <= covered, f"untested options: {sorted(listed - covered)}"


# -- usage errors: exit 2, one plain line, nothing trained -------------------------------------

USAGE_ERRORS = [
    (["--epochs", "0"], ["--epochs", "0"]),
    (["--epochs", "x"], ["--epochs", "x"]),
    (["--epochs"], ["--epochs"]),
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--lr", "abc"], ["--lr", "abc"]),
    (["--momentum", "1"], ["--momentum", "1"]),
    (["--noise", "-1"], ["--noise", "-1"]),
    (["--samples", "0"], ["--samples", "0"]),
    (["--samples", "1.5"], ["--samples", "1.5"]),
    (["--features", "2", "--weight", "1", "--weight", "2", "--weight", "3"], ["--weight", "3"]),
    (["--weight", "nan"], ["--weight", "nan"]),
    (["--batch-size", "-1"], ["--batch-size", "-1"]),
    (["--patience", "0"], ["--patience", "0"]),
    (["--tol", "-1"], ["--tol", "-1"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--dtype", "float16"], ["--dtype", "float16"]),
    (["--device", "gpu"], ["--device", "gpu"]),
    (["--confidence", "1.5"], ["--confidence", "1.5"]),
    (["--plot", "x.gif"], ["--plot", "x.gif"]),
    (["--plot", "x.png", "--no-plot"], ["--plot", "--no-plot"]),
    (["--bogus"], ["--bogus"]),
    (["-q", "--epochs", "0"], ["--epochs", "0"]),  # --quiet never hides an error
    (["--val-fraction", "1"], ["--val-fraction", "1"]),
    (["--target", "y"], ["--target", "--data"]),
    (["--data", "data.csv", "--samples", "5"], ["--samples", "--data"]),
    (["--data", "missing.csv"], ["missing.csv"]),
]


@pytest.mark.parametrize(
    ("args", "named"), USAGE_ERRORS, ids=[" ".join(args) for args, _ in USAGE_ERRORS]
)
def test_bad_usage_exits_2_with_one_error_line(
    args: list[str], named: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "never"
    result = expect_exit(run_linreg("train", *args, "--out", out, cwd=tmp_path), 2)
    assert result.stdout == ""
    assert_one_error(result, *named)
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/, no temporary files


def test_unknown_command_exits_2(tmp_path: Path) -> None:
    result = expect_exit(run_linreg("trian", cwd=tmp_path), 2)
    assert result.stdout == ""
    assert_one_error(result, "trian")


# -- failures while running, and the output directory -------------------------------------------


def _prepare(root: Path) -> dict[str, Path]:
    stale = root / "stale"
    stale.mkdir()
    (stale / "metrics.json").write_text('{"stale": true}\n')
    previous = root / "previous"
    previous.mkdir()
    (previous / "notes.txt").write_text("mine\n")
    (previous / "metrics.json").write_text('{"stale": true}\n')
    (previous / "model.safetensors").write_bytes(b"old")
    (root / "defaults").mkdir()
    return {"stale": stale, "previous": previous, "defaults": root / "defaults"}


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("failures")
    paths = _prepare(cwd)
    diverge = ["--lr", "100", "--no-standardize"]
    defaults = paths["defaults"]

    def default_run() -> subprocess.CompletedProcess[str]:
        return run_linreg("train", "--no-plot", cwd=defaults)

    results = run_concurrently(
        {
            "diverged": train_job(cwd, "diverged", *diverge),
            "diverged_stale": train_job(cwd, "stale", *diverge, "--overwrite"),
            "overwrite": train_job(cwd, "previous", "--overwrite", "--seed", "1"),
            "cuda": train_job(cwd, "cuda", "--device", "cuda"),
            "default_1": default_run,
            "default_2": default_run,
            "huge_seed": train_job(cwd, "huge_seed", "--seed", str(2**64 + 1)),
            "huge_lr": train_job(cwd, "huge_lr", "--lr", "1e300"),
            "huge_weight": train_job(cwd, "huge_weight", "--weight", "1e200", "--no-plot"),
        }
    )
    return {"cwd": cwd, **paths, **results}


@pytest.mark.parametrize("name", ["diverged", "diverged_stale"])
def test_divergence_exits_1_with_a_hint_and_leaves_no_results(
    failures: dict[str, Any], name: str
) -> None:
    run = failures[name]
    expect_exit(run.result, 1)
    assert run.result.stdout == ""
    line = error_lines(run.result.stderr)
    assert len(line) == 1 and "--lr" in line[0], describe(run.result)
    assert "Traceback" not in run.result.stderr
    assert not (run.out / "metrics.json").exists()  # a stale one is removed too
    assert hidden_files(failures["cwd"]) == []
    if name == "diverged":  # the run directory it made is not left behind, empty
        assert not run.out.exists()


def test_device_cuda_without_cuda_exits_1(failures: dict[str, Any]) -> None:
    run = failures["cuda"]
    if run.result.returncode == 0 or cuda_available():
        pytest.skip("CUDA is available here")
    expect_exit(run.result, 1)
    assert run.result.stdout == ""
    assert_one_error(run.result, "cuda")
    assert "--device" in run.result.stderr
    assert not run.out.exists()


def test_existing_non_empty_out_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "metrics.json").write_text('{"old": true}\n')
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    result = expect_exit(run_linreg("train", "--out", out, cwd=tmp_path), 2)
    assert result.stdout == ""
    assert_one_error(result, str(out), "--overwrite")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = expect_exit(run_linreg("train", "--out", tmp_path / "file", cwd=tmp_path), 2)
    assert_one_error(result, str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "x"


def test_out_below_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    result = run_linreg("train", "--out", out, cwd=tmp_path)
    assert result.returncode in (1, 2), describe(result)
    assert result.stdout == ""
    assert_one_error(result, str(out))


def test_overwrite_replaces_the_previous_run(failures: dict[str, Any]) -> None:
    run = failures["overwrite"].ok()
    assert run.metrics["schema"] == 1 and run.metrics["seed"] == 1
    assert run.files() == RUN_FILES | {"notes.txt"}
    assert (run.out / "notes.txt").read_text() == "mine\n"  # not linreg's: left alone
    assert run.model[1]["weight"].tolist() == run.metrics["params"]["weight"]
    assert hidden_files(run.out) == []


def test_out_in_a_read_only_directory(tmp_path: Path) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        out = parent / "run"
        result = run_linreg("train", "--out", out, cwd=tmp_path)
        assert result.returncode in (1, 2), describe(result)
        assert result.stdout == ""
        assert_one_error(result, str(parent))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_plot_in_a_read_only_directory_is_refused_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "figures"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        out = tmp_path / "run"
        result = run_linreg("train", "--plot", folder / "fig.png", "--out", out, cwd=tmp_path)
        expect_exit(result, 1)
        assert_one_error(result, f"directory {folder} is not writable")
        assert not out.exists()
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_plot_in_a_missing_directory_is_refused_before_training(tmp_path: Path) -> None:
    plot = tmp_path / "missing" / "fig.png"
    out = tmp_path / "run"
    result = run_linreg("train", "--plot", plot, "--out", out, cwd=tmp_path)
    assert result.returncode in (1, 2), describe(result)
    assert result.stdout == ""
    assert_one_error(result, "--plot", str(tmp_path / "missing"))
    assert list(tmp_path.iterdir()) == []  # nothing trained, no run directory made


def test_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    result = run_linreg("train", "--log-file", tmp_path, "--out", tmp_path / "run", cwd=tmp_path)
    assert result.returncode in (1, 2), describe(result)
    assert_one_error(result, "--log-file", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_default_runs_get_new_utc_directories(failures: dict[str, Any]) -> None:
    first = expect_exit(failures["default_1"], 0)
    second = expect_exit(failures["default_2"], 0)
    runs_dir = failures["defaults"] / "runs"
    made = sorted(path.name for path in runs_dir.iterdir())
    assert len(made) == 2, made  # two runs, even started in the same second
    assert set(os.listdir(failures["defaults"])) == {"runs"}
    now = datetime.now(UTC)
    for name in made:
        assert RUN_NAME.fullmatch(name), name
        stamp = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert now - timedelta(minutes=10) < stamp <= now
        assert (runs_dir / name / "metrics.json").exists()
    named = {name for name in made if name in first.stdout} | {
        name for name in made if name in second.stdout
    }
    assert named == set(made)


def test_a_seed_too_large_is_a_usage_error(failures: dict[str, Any]) -> None:
    run = failures["huge_seed"]
    expect_exit(run.result, 2)
    assert_one_error(run.result, "--seed")


def test_a_step_too_large_for_float32_names_lr(failures: dict[str, Any]) -> None:
    run = failures["huge_lr"]
    assert run.result.returncode in (1, 2), describe(run.result)
    line = assert_one_error(run.result, "--lr")
    assert "unexpected" not in line


def test_a_weight_that_overflows_gives_one_error_line(failures: dict[str, Any]) -> None:
    run = failures["huge_weight"]
    assert run.result.returncode in (1, 2), describe(run.result)
    assert_one_error(run.result, "--weight")


# -- interrupted runs ----------------------------------------------------------------------------

LONG_RUN = ["--samples", "200000", "--features", "8", "--tol", "0", "--epochs", "100000"]


def _interrupt(cwd: Path, name: str, number: int) -> tuple[Run, bool]:
    out = cwd / name
    process = start_linreg("train", *LONG_RUN, "--out", out, cwd=cwd)
    started = process.first_stderr_line.wait(timeout=120)  # the loop is running
    running = process.process.poll() is None
    if running:
        process.process.send_signal(number)
    return Run(process.finish(timeout=120), out), started and running


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("interrupted")
    return {
        "cwd": cwd,
        **run_concurrently(
            {
                "SIGTERM": lambda: _interrupt(cwd, "term", signal.SIGTERM),
                "SIGINT": lambda: _interrupt(cwd, "int", signal.SIGINT),
            }
        ),
    }


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_training_cleanly(interrupted: dict[str, Any], name: str, code: int) -> None:
    run, signalled = interrupted[name]
    assert signalled, f"the run ended before it could be interrupted\n{describe(run.result)}"
    expect_exit(run.result, code)
    assert run.result.stdout == ""
    errors = error_lines(run.result.stderr)
    assert len(errors) == 1, describe(run.result)
    assert re.search(rf"{name}|interrupt", errors[0], re.I), errors[0]
    assert "Traceback" not in run.result.stderr
    assert_plain(run.result.stderr, "stderr")
    assert not (run.out / "metrics.json").exists()
    assert not run.out.exists() or list(run.out.iterdir()) == []
    assert hidden_files(interrupted["cwd"]) == []


# -- --debug, --version, --help -----------------------------------------------------------------

# main() with the training replaced by a bug: an exception linreg does not expect
FAULTY = """
import sys
import cli.train_command
def broken(*args, **kwargs):
    raise RuntimeError("injected fault")
cli.train_command.run_train = broken
from cli.app import main
main(sys.argv[1:])
"""


def _faulty(
    tmp_path: Path, *args: str, debug_env: bool = False
) -> subprocess.CompletedProcess[str]:
    env = clean_env({"LINREG_DEBUG": "1"} if debug_env else None)
    return subprocess.run(
        [sys.executable, "-c", FAULTY, "train", *args, "--out", str(tmp_path / "run")],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unexpected_error_is_one_line_without_debug(tmp_path: Path) -> None:
    result = expect_exit(_faulty(tmp_path), 1)
    assert result.stdout == ""
    line = assert_one_error(result, "RuntimeError", "injected fault")
    assert "--debug" in line  # says how to see more


@pytest.mark.parametrize("how", ["--debug", "LINREG_DEBUG=1"])
def test_debug_shows_the_traceback_of_an_unexpected_error(tmp_path: Path, how: str) -> None:
    by_flag = how == "--debug"
    result = _faulty(tmp_path, "--debug") if by_flag else _faulty(tmp_path, debug_env=True)
    assert result.returncode != 0, describe(result)
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: injected fault" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("how", ["--debug", "LINREG_DEBUG=1"])
def test_debug_keeps_ordinary_errors_and_their_exit_code(tmp_path: Path, how: str) -> None:
    args = ["train", "--epochs", "0", "--out", str(tmp_path / "run")]
    if how == "--debug":
        result = run_linreg(*args, "--debug", cwd=tmp_path)
    else:
        result = run_linreg(*args, cwd=tmp_path, env=clean_env({"LINREG_DEBUG": "1"}))
    expect_exit(result, 2)
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "--epochs" in errors[0], describe(result)


def test_linreg_debug_keeps_click_usage_errors(tmp_path: Path) -> None:
    env = clean_env({"LINREG_DEBUG": "1"})
    result = expect_exit(run_linreg("train", "--epochs", "x", cwd=tmp_path, env=env), 2)
    assert_one_error(result, "--epochs", "x")


@pytest.mark.parametrize("entry", ["linreg", "module"])
def test_version(tmp_path: Path, entry: Entry) -> None:
    result = expect_exit(run_linreg("--version", cwd=tmp_path, entry=entry), 0)
    assert result.stdout == f"linreg {__version__}\n"
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["-h"], []])
def test_help_is_plain_text_on_stdout(tmp_path: Path, args: list[str]) -> None:
    result = expect_exit(run_linreg(*args, cwd=tmp_path), 0)
    assert result.stdout.startswith("Usage: linreg")
    assert "train" in result.stdout
    assert result.stderr == ""
    assert_plain(result.stdout, "the help")
    assert list(tmp_path.iterdir()) == []


HELP_IMPORTS = """
import json, sys
from cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "matplotlib", "numpy", "scipy"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["--version"]])
def test_help_does_not_import_torch_or_matplotlib(tmp_path: Path, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", HELP_IMPORTS, *args],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stderr.splitlines()[-1])
    assert report == {"code": 0, "heavy": []}
