"""Unattended runs: options from a TOML file and LINREG_<OPTION> (precedence for every option),
checkpoints and a bit-exact --resume, SIGTERM and SIGINT at a step boundary, the lock on the
run directory, plain progress lines and --log-file for cron, and the reproducibility record
in metrics.json.

``--print-config`` trains nothing (a fraction of a second), so the precedence tests run it one
case at a time. The real training processes, some stopped by real signals, are shared through
module-scoped fixtures that start them side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    TIMEOUT_S,
    Background,
    assert_one_error,
    assert_plain,
    clean_env,
    describe,
    error_lines,
    expect_exit,
    hidden_files,
    linreg_command,
    run_concurrently,
    run_linreg,
    start_linreg,
)

from cli import output
from regression import __version__
from regression.artifacts import read_safetensors, safetensors_bytes
from regression.checkpoint import RunIdentity, load_checkpoint, save_checkpoint
from regression.config import TrainConfig, to_toml
from regression.data import synthetic
from regression.errors import ModelFileError, TrainingStopped
from regression.model import Scaling, target_tensor, to_training_tensor
from regression.report import environment
from regression.train import Checkpointer, LoopState, Progress, Trained, train

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and flock")

Run = subprocess.CompletedProcess[str]
PROGRESS = re.compile(r"epoch (\d+)/(\d+)  loss \d\.\d{6}e[+-]\d\d  elapsed \d+\.\d\ds")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
RUN_NAME = re.compile(r"\d{8}T\d{6}Z(-\d+)?")
RUN_FILES = {"metrics.json", "model.safetensors", "history.csv", "config.toml", "plot.png"}
CHECKPOINT = "checkpoint.safetensors"


def print_config(
    *args: str | os.PathLike[str], cwd: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The resolved options ``--print-config`` prints (exit 0, nothing on stderr)."""
    result = expect_exit(run_linreg("train", *args, "--print-config", cwd=cwd, env=env), 0)
    assert result.stderr == "", describe(result)
    return tomllib.loads(result.stdout)


def toml_value(value: Any) -> str:
    """A TOML value written independently of linreg's own writer (JSON agrees with TOML on
    numbers, booleans, plain strings and arrays)."""
    return json.dumps(value)


def progress_epochs(text: str) -> list[int]:
    return [int(match.group(1)) for match in PROGRESS.finditer(text)]


def assert_progress_and_errors(result: Run, errors: int) -> list[str]:
    """stderr holds plain progress lines and ``errors`` error lines, nothing else."""
    lines = result.stderr.splitlines()
    found = error_lines(result.stderr)
    assert len(found) == errors, describe(result)
    others = [line for line in lines if line not in found]
    assert all(PROGRESS.fullmatch(line) for line in others), describe(result)
    assert "Traceback" not in result.stderr
    assert_plain(result.stderr, "stderr")
    return found


# -- 1. configuration: precedence, for options of every kind ------------------------------------

CL, ENV, FILE = "command line", "environment", "config file"


@dataclass(frozen=True)
class Option:
    """One option in the precedence matrix: its default and two other values (as printed),
    and how each layer spells a value (None: that layer cannot say it)."""

    key: str
    file_key: str  # the config file's spelling: dashes or underscores
    default: Any
    a: Any
    b: Any
    cli: Callable[[Any], list[str] | None]
    env: Callable[[Any], str | None]

    def value(self, which: str) -> Any:
        return {"a": self.a, "b": self.b, "default": self.default}[which]

    def encode(self, layer: str, value: Any) -> list[str] | str | None:
        if value is None:  # a default of None cannot be given explicitly
            return None
        if layer == CL:
            return self.cli(value)
        if layer == ENV:
            return self.env(value)
        return toml_value(value)


def number(flag: str) -> Callable[[Any], list[str]]:
    return lambda value: [flag, str(value)]


OPTIONS = [
    Option("epochs", "epochs", 1000, 11, 13, number("--epochs"), str),  # int
    Option("batch_size", "batch-size", 0, 8, 16, number("--batch-size"), str),  # int, dashes
    Option("weight_decay", "weight-decay", 0.0, 0.25, 0.75, number("--weight-decay"), str),  # float
    Option(  # a flag with both spellings (an alias of --precondition: unset by default)
        "standardize",
        "standardize",
        None,
        False,
        True,
        lambda on: ["--standardize" if on else "--no-standardize"],
        lambda on: "true" if on else "false",
    ),
    Option(  # a one-way flag: the command line can only turn it on
        "no_plot",
        "no-plot",
        False,
        True,
        False,
        lambda on: ["--no-plot"] if on else None,
        lambda on: "1" if on else "0",
    ),
    Option(  # the repeatable --weight
        "weight",
        "weight",
        [2.0],
        [3.0, -1.5],
        [0.5, 4.0],
        lambda values: [arg for w in values for arg in ("--weight", str(w))],
        lambda values: ", ".join(map(str, values)),
    ),
    Option("out", "out", None, "out-a", "out-b", number("--out"), str),  # a path
    Option("lr", "lr", "auto", 0.25, 0.5, number("--lr"), str),  # 'auto' or a number
]
EXTRA = ["--features", "2"]  # so that two weights fit

# each case: which layers are set, and to which value ("default": the default given explicitly)
CASES: dict[str, dict[str, str]] = {
    "nothing set": {},
    "command line over default": {CL: "a"},
    "environment over default": {ENV: "a"},
    "config file over default": {FILE: "a"},
    "command line over environment": {CL: "a", ENV: "b"},
    "command line (the default value) over environment": {CL: "default", ENV: "a"},
    "command line over config file": {CL: "a", FILE: "b"},
    "command line (the default value) over config file": {CL: "default", FILE: "a"},
    "environment over config file": {ENV: "a", FILE: "b"},
    "environment (the default value) over config file": {ENV: "default", FILE: "a"},
    "all three": {CL: "a", ENV: "b", FILE: "b"},
    "all three, command line at the default": {CL: "default", ENV: "a", FILE: "b"},
}


@pytest.mark.parametrize("layers", CASES.values(), ids=CASES.keys())
def test_precedence_matrix(tmp_path: Path, layers: dict[str, str]) -> None:
    """command line > LINREG_<OPTION> > config file > default, for each kind of option."""
    args, env, lines, expected = [*EXTRA], {}, [], {}
    for option in OPTIONS:
        winner: tuple[Any, ...] = ()
        for layer in (CL, ENV, FILE):  # highest first: the first one set wins
            if layer not in layers:
                continue
            value = option.value(layers[layer])
            encoded = option.encode(layer, value)
            if encoded is None:
                continue
            if layer == CL:
                assert isinstance(encoded, list)
                args += encoded
            elif layer == ENV:
                env[f"LINREG_{option.key.upper()}"] = str(encoded)
            else:
                lines.append(f"{option.file_key} = {encoded}")
            winner = winner or (value,)
        expected[option.key] = winner[0] if winner else option.default
    (tmp_path / "config.toml").write_text("\n".join(lines) + "\n")
    printed = print_config("--config", "config.toml", *args, cwd=tmp_path, env=clean_env(env))
    for key in ("out", "log_file", "plot"):  # paths are printed absolute
        if isinstance(expected.get(key), str):
            expected[key] = str((tmp_path / expected[key]).resolve())
    assert {key: printed.get(key) for key in expected} == expected
    assert sorted(os.listdir(tmp_path)) == ["config.toml"]  # printed, nothing trained


# every option, one layer stacked on another: file, then environment, then command line;
# each value differs from the one below it (None: not given on that layer)
EVERY: dict[str, tuple[Any, Any, Any]] = {
    "val_fraction": (0.5, 0.25, 0.125),
    "samples": (50, 60, 70),
    "features": (2, 3, 4),
    "weight": ([1.5], [2.5], [3.5]),
    "bias": (-3.0, 4.0, 5.5),
    "noise": (0.5, 0.0, 1.5),
    "seed": (9, 10, 0),
    "epochs": (7, 8, 1000),
    "lr": (0.125, "auto", 0.5),
    "batch_size": (4, 0, 5),
    "momentum": (0.5, 0.0, 0.9),
    "weight_decay": (0.25, 0.5, 0.0),
    "standardize": (False, True, False),
    "tol": (0.01, 0.0, 1e-06),
    "patience": (2, 3, 4),
    "device": ("cpu", "auto", "cuda:1"),
    "dtype": ("float64", "float32", "float64"),
    "checkpoint_every": (3, 0, 4),
    "out": ("o1", "o2", "o3"),
    "overwrite": (True, False, True),
    "no_plot": (True, False, None),  # --plot is left out: it cannot be combined with it
    "json": (True, False, True),
    "quiet": (True, False, True),
    "log_file": ("l1.log", "l2.log", "l3.log"),
    "summary": (True, False, True),
    "confidence": (0.9, 0.8, 0.99),
}
EVERY_DATA: dict[str, tuple[Any, Any, Any]] = {  # with --data, the synthetic options stay unset
    "data": ("d1.csv", "d2.csv", "d3.csv"),
    "target": ("y1", "y2", "3"),
    "plot": ("p1.svg", "p2.pdf", "p3.png"),
}


def cli_args(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    if key == "standardize":
        return ["--standardize" if value else "--no-standardize"]
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        return [arg for item in value for arg in (flag, str(item))]
    return [flag, str(value)]


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


@pytest.mark.parametrize("group", [EVERY, EVERY_DATA], ids=["synthetic", "data"])
@pytest.mark.parametrize("depth", [1, 2, 3], ids=["file", "env over file", "cli over env"])
def test_every_option_from_each_layer(
    tmp_path: Path, group: dict[str, tuple[Any, Any, Any]], depth: int
) -> None:
    """Every option (--plot and --no-plot in turn) from the file, the environment over the
    file, and the command line over both."""
    (tmp_path / "config.toml").write_text(
        "".join(
            f"{key.replace('_', '-')} = {toml_value(file)}\n" for key, (file, _, _) in group.items()
        )
    )
    env = clean_env()
    args: list[str] = []
    expected = {key: values[0] for key, values in group.items()}
    for key, (_, from_env, from_cli) in group.items():
        if depth >= 2:
            env[f"LINREG_{key.upper()}"] = env_text(from_env)
            expected[key] = from_env
        if depth >= 3 and from_cli is not None and cli_args(key, from_cli):
            args += cli_args(key, from_cli)
            expected[key] = from_cli
    for key in ("data", "out", "log_file", "plot"):  # paths are printed absolute
        if expected.get(key) is not None:
            expected[key] = str((tmp_path / expected[key]).resolve())
    printed = print_config("--config", "config.toml", *args, cwd=tmp_path, env=env)
    assert {key: printed.get(key) for key in expected} == expected


def test_environment_spellings_of_booleans_and_lists(tmp_path: Path) -> None:
    flags = ["overwrite", "no_plot", "json", "quiet", "summary", "standardize"]
    on = dict(zip(flags, ["1", "true", "yes", "on", "TRUE", "Yes"], strict=True))
    off = dict(zip(flags, ["0", "false", "no", "off", "", "OFF"], strict=True))
    (tmp_path / "all-on.toml").write_text("".join(f"{flag} = true\n" for flag in flags))
    for spellings, expected in ((on, True), (off, False)):
        env = clean_env({f"LINREG_{flag.upper()}": text for flag, text in spellings.items()})
        printed = print_config("--config", "all-on.toml", cwd=tmp_path, env=env)
        assert {flag: printed[flag] for flag in flags} == dict.fromkeys(flags, expected)
    for text in ("1.5, -2", "1.5 -2", " 1.5,-2 "):
        env = clean_env({"LINREG_FEATURES": "2", "LINREG_WEIGHT": text})
        assert print_config(cwd=tmp_path, env=env)["weight"] == [1.5, -2.0], text


def test_config_keys_take_dashes_or_underscores_and_scalars_for_lists(tmp_path: Path) -> None:
    (tmp_path / "mixed.toml").write_text(
        'val-fraction = 0.5\nweight_decay = 0.125\ncheckpoint-every = 7\nlog_file = "x.log"\n'
        "weight = 3\nlr = 1\n"
    )
    printed = print_config("--config", "mixed.toml", cwd=tmp_path)
    assert {k: printed[k] for k in ("val_fraction", "weight_decay", "checkpoint_every")} == {
        "val_fraction": 0.5,
        "weight_decay": 0.125,
        "checkpoint_every": 7,
    }
    assert printed["log_file"] == str((tmp_path / "x.log").resolve())
    assert printed["weight"] == [3.0] and printed["lr"] == 1.0


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "nightly.toml").write_text(
        'data = "sales.csv"\nout = "run"\nlog_file = "logs/train.log"\nplot = "fig.svg"\n'
    )
    for cwd, config in ((tmp_path, "etc/nightly.toml"), (folder, str(folder / "nightly.toml"))):
        printed = print_config("--config", config, cwd=cwd)
        assert printed["data"] == str((folder / "sales.csv").resolve())
        for key, name in (("out", "run"), ("log_file", "logs/train.log"), ("plot", "fig.svg")):
            assert (cwd / printed[key]).resolve() == (folder / name).resolve(), key


def test_print_config_trains_nothing_and_creates_nothing(tmp_path: Path) -> None:
    result = run_linreg(
        "train", "--print-config", "--out", "never", "--log-file", "never.log", cwd=tmp_path
    )
    expect_exit(result, 0)
    assert result.stderr == ""
    printed = tomllib.loads(result.stdout)
    assert printed["out"] == str((tmp_path / "never").resolve())
    assert printed["log_file"] == str((tmp_path / "never.log").resolve())
    assert list(tmp_path.iterdir()) == []


def absolute_options(root: Path) -> dict[str, list[str]]:
    everything = [arg for key, (value, _, _) in EVERY.items() for arg in cli_args(key, value)]
    everything = [str(root / arg) if arg in ("o1", "l1.log") else arg for arg in everything]
    data = ["--data", str(root / "d.csv"), "--target", "y", "--val-fraction", "0.25"]
    return {"synthetic": everything, "data": data}


@pytest.mark.parametrize("group", ["synthetic", "data"])
def test_print_config_round_trip(tmp_path: Path, group: str) -> None:
    """Print, read the printed file back with --config (from another folder), print again."""
    first = expect_exit(
        run_linreg("train", *absolute_options(tmp_path)[group], "--print-config", cwd=tmp_path), 0
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = elsewhere / "printed.toml"
    printed.write_text(first.stdout)
    second = expect_exit(
        run_linreg("train", "--config", printed, "--print-config", cwd=elsewhere), 0
    )
    assert second.stdout == first.stdout
    assert first.stderr == second.stderr == ""
    assert sorted(os.listdir(elsewhere)) == ["printed.toml"]


def test_printed_config_kept_elsewhere_resolves_the_same_paths(tmp_path: Path) -> None:
    cwd, folder = tmp_path / "work", tmp_path / "etc"
    cwd.mkdir()
    folder.mkdir()
    args = ["--out", "run", "--log-file", "train.log", "--plot", "fig.svg"]
    first = print_config(*args, cwd=cwd)
    (folder / "printed.toml").write_text(
        expect_exit(run_linreg("train", *args, "--print-config", cwd=cwd), 0).stdout
    )
    second = print_config("--config", folder / "printed.toml", cwd=cwd)
    for key in ("out", "log_file", "plot"):
        assert (cwd / second[key]).resolve() == (cwd / first[key]).resolve(), key


# -- 1. configuration: what is refused -----------------------------------------------------------

BAD_CONFIGS = {
    "unknown key": ("epochs = 5\nfoo-bar = 1\n", ["'foo-bar'", "unknown key"]),
    "a table": ("[train]\nepochs = 5\n", ["'train'"]),
    "text for an int": ('epochs = "ten"\n', ["'epochs'", "integer"]),
    "float for an int": ("batch-size = 2.5\n", ["'batch-size'", "integer"]),
    "bool for a float": ("weight-decay = true\n", ["'weight-decay'", "number"]),
    "number for a bool": ("no-plot = 1\n", ["'no-plot'", "true or false"]),
    "text in the weights": ('weight = [1, "a"]\n', ["'weight'"]),
    "number for a path": ("out = 3\n", ["'out'", "string"]),
    "list for lr": ("lr = [1]\n", ["'lr'"]),
    "malformed": ("epochs = 5\nseed = [\nnoise = 1\n", ["line 3"]),
    "duplicate key": ("epochs = 5\nepochs = 6\n", ["line 2"]),
    "not UTF-8": ("epochs = 5\n# \udcff\n", ["not UTF-8 text"]),
    "nested too deeply": ("epochs = " + "[" * 100_000 + "\n", ["nested too deeply"]),
}


@pytest.mark.parametrize(("text", "needles"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_file_exits_2_naming_the_key(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    (tmp_path / "bad.toml").write_text(text, errors="surrogateescape")  # \udcff: byte 0xff
    result = expect_exit(run_linreg("train", "--config", "bad.toml", cwd=tmp_path), 2)
    assert result.stdout == ""
    assert_one_error(result, "--config", "bad.toml", *needles)
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]


def test_config_value_out_of_range_names_the_option(tmp_path: Path) -> None:
    (tmp_path / "zero.toml").write_text("epochs = 0\n")
    result = expect_exit(run_linreg("train", "--config", "zero.toml", cwd=tmp_path), 2)
    assert_one_error(result, "--epochs", "0")


@pytest.mark.parametrize("path", ["missing.toml", "."], ids=["missing", "a directory"])
def test_config_that_cannot_be_read_exits_2(tmp_path: Path, path: str) -> None:
    result = expect_exit(run_linreg("train", "--config", path, cwd=tmp_path), 2)
    assert result.stdout == ""
    assert_one_error(result, "--config")
    assert list(tmp_path.iterdir()) == []


BAD_ENV = {
    "LINREG_EPOCHS": ("ten", ["LINREG_EPOCHS", "--epochs"]),
    "LINREG_SAMPLES": ("", ["LINREG_SAMPLES"]),
    "LINREG_MOMENTUM": ("fast", ["momentum"]),
    "LINREG_NO_PLOT": ("maybe", ["LINREG_NO_PLOT"]),
    "LINREG_WEIGHT": ("1,a", ["LINREG_WEIGHT"]),
    "LINREG_LR": ("fast", ["lr"]),
    "LINREG_DTYPE": ("float16", ["--dtype", "float16"]),
}


@pytest.mark.parametrize(
    ("variable", "text", "needles"), [(k, *v) for k, v in BAD_ENV.items()], ids=list(BAD_ENV)
)
def test_bad_environment_value_exits_2_naming_it(
    tmp_path: Path, variable: str, text: str, needles: list[str]
) -> None:
    result = run_linreg("train", cwd=tmp_path, env=clean_env({variable: text}))
    expect_exit(result, 2)
    assert result.stdout == ""
    assert_one_error(result, *needles)
    assert list(tmp_path.iterdir()) == []


def test_debug_from_the_config_file_shows_the_traceback(tmp_path: Path) -> None:
    faulty = (
        "import sys\nimport cli.train_command\n"
        "def broken(*args, **kwargs):\n    raise RuntimeError('injected fault')\n"
        "cli.train_command.run_train = broken\n"
        "from cli.app import main\nmain(sys.argv[1:])\n"
    )
    (tmp_path / "debug.toml").write_text("debug = true\n")
    result = subprocess.run(
        [sys.executable, "-c", faulty, "train", "--config", "debug.toml"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    expect_exit(result, 1)
    assert "injected fault" in result.stderr
    assert "Traceback" in result.stderr, describe(result)


# -- 1. config.toml repeats a run; 6. the reproducibility record ------------------------------

SYNTHETIC_OPTIONS = [
    *("--samples", "300", "--features", "3", "--weight", "1", "--weight", "-2"),
    *("--weight", "0.5", "--bias", "0.5", "--noise", "0.2", "--seed", "7"),
]
TRAINING_OPTIONS = [
    *("--val-fraction", "0.2", "--batch-size", "32", "--momentum", "0.9", "--lr", "0.01"),
    *("--weight-decay", "0.001", "--epochs", "30", "--tol", "0", "--dtype", "float64"),
    *("--device", "cpu", "--no-plot", "-q"),
]


def train_job(cwd: Path, out: Path, *args: str | os.PathLike[str]) -> Callable[[], Run]:
    return lambda: run_linreg("train", *args, "--out", out, cwd=cwd)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A: synthetic data; F: the same rows from a .npy file; then B repeats A from another
    folder with --config A/config.toml."""
    cwd = tmp_path_factory.mktemp("repeat")
    elsewhere = cwd / "elsewhere"
    elsewhere.mkdir()
    data = cwd / "rows.npy"

    def from_file() -> Run:
        made = run_linreg(
            "generate", *SYNTHETIC_OPTIONS, "--dtype", "float64", "--out", data, "-q", cwd=cwd
        )
        expect_exit(made, 0)
        return run_linreg(
            "train", "--data", data, "--seed", "7", *TRAINING_OPTIONS, "--out", cwd / "F", cwd=cwd
        )

    first = run_concurrently(
        {
            "A": train_job(cwd, cwd / "A", *SYNTHETIC_OPTIONS, *TRAINING_OPTIONS),
            "F": from_file,
        }
    )
    again = train_job(elsewhere, cwd / "B", "--config", cwd / "A" / "config.toml", "-q")
    return {"cwd": cwd, **first, "B": again()}


def metrics_of(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "metrics.json").read_text()))


def test_config_toml_repeats_the_run_byte_for_byte(repeated: dict[str, Any]) -> None:
    cwd, copy, original = repeated["cwd"], "B", "A"
    for name in (copy, original):
        result = expect_exit(repeated[name], 0)
        assert result.stdout == result.stderr == ""
    for name in ("model.safetensors", "history.csv", "config.toml"):
        assert (cwd / copy / name).read_bytes() == (cwd / original / name).read_bytes(), name
    repeat, first = metrics_of(cwd / copy), metrics_of(cwd / original)
    for key in ("params", "train", "val", "epochs_run", "lr", "data"):
        assert repeat[key] == first[key], key
    assert hidden_files(cwd) == []


def test_data_sha256_is_the_same_for_the_same_rows_only(
    repeated: dict[str, Any], crontab: dict[str, Any]
) -> None:
    cwd = repeated["cwd"]
    for name in "AFB":
        expect_exit(repeated[name], 0)
    digest = {name: metrics_of(cwd / name)["data"]["sha256"] for name in "AFB"}
    expect_exit(crontab["out"], 0)
    digest["C"] = metrics_of(crontab["cwd"] / "nightly" / "run")["data"]["sha256"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest["A"])
    assert digest["A"] == digest["F"] == digest["B"]  # synthetic or from a file
    assert digest["C"] != digest["A"]  # other rows (the demo's)
    assert metrics_of(cwd / "F")["data"]["source"] == str((cwd / "rows.npy").resolve())


def test_metrics_record_what_produced_the_result(repeated: dict[str, Any]) -> None:
    expect_exit(repeated["A"], 0)
    metrics = metrics_of(repeated["cwd"] / "A")
    assert metrics["environment"] == environment("cpu")
    assert (metrics["seed"], metrics["dtype"], metrics["device"]) == (7, "float64", "cpu")
    assert metrics["version"] == __version__


def test_environment_names_versions_platform_and_device() -> None:
    record = environment("cpu")
    expected = {
        "linreg": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    assert {key: record.get(key) for key in expected} == expected
    assert isinstance(record["device_name"], str) and record["device_name"].strip()
    json.dumps(record, allow_nan=False)  # plain JSON


# -- 3. signals and 2. checkpoints, end to end ---------------------------------------------------

EPOCHS = 40  # about 2 s of training here; the signal comes after epoch 4
LONG = [
    *("--samples", "50000", "--features", "4", "--batch-size", "256", "--momentum", "0.5"),
    *("--epochs", str(EPOCHS), "--tol", "0", "--no-plot", "--device", "cpu"),
]
CHECKPOINTED = [*LONG, "--checkpoint-every", "3"]


@dataclass(frozen=True)
class Stopped:
    """A training process that was sent a signal once its 3rd progress line appeared."""

    result: Run
    out: Path
    signalled: bool  # it was still running when the signal was sent
    files: dict[str, bytes]  # the run directory right after it exited


def wait_for_lines(process: Background, count: int, timeout: float = TIMEOUT_S) -> bool:
    """Wait until ``count`` stderr lines have come; whether the process is still running."""
    deadline = time.monotonic() + timeout
    while len(process.stderr) < count and process.process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return len(process.stderr) >= count and process.process.poll() is None


def snapshot(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in out.iterdir()} if out.is_dir() else {}


def interrupt(cwd: Path, name: str, number: int, args: list[str]) -> Stopped:
    out = cwd / name
    process = start_linreg("train", *args, "--out", out, cwd=cwd)
    running = wait_for_lines(process, 3)  # epochs 1, 2 and 4 are done: the loop is running
    if running:
        process.process.send_signal(number)
    result = process.finish()
    return Stopped(result, out, running, snapshot(out))


@pytest.fixture(scope="module")
def signalled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("signals")
    (cwd / "empty").mkdir()  # an --out that exists before the run

    def uninterrupted() -> dict[str, Any]:
        """The reference run; while it trains, a second run on its --out must be refused."""
        out = cwd / "full"
        process = start_linreg("train", *CHECKPOINTED, "--out", out, cwd=cwd)
        deadline = time.monotonic() + TIMEOUT_S
        # config.toml is written right after the lock is taken, before torch is imported
        while not (out / "config.toml").exists() and process.process.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        intruder = run_linreg("train", *CHECKPOINTED, "--overwrite", "--out", out, cwd=cwd)
        overlapped = process.process.poll() is None
        return {"result": process.finish(), "intruder": intruder, "overlapped": overlapped}

    def term_then_resume() -> tuple[Stopped, Run | None]:
        stopped = interrupt(cwd, "term", signal.SIGTERM, CHECKPOINTED)
        hint = re.search(r"continue with: (linreg train .*)$", stopped.result.stderr, re.M)
        if hint is None:
            return stopped, None
        return stopped, run_linreg(*shlex.split(hint.group(1))[1:], cwd=cwd)  # as printed

    def int_then_resume() -> tuple[Stopped, Run]:
        stopped = interrupt(cwd, "int", signal.SIGINT, CHECKPOINTED)
        log = cwd / "resume.log"
        return stopped, run_linreg(
            "train", "--resume", stopped.out, "--json", "--log-file", log, cwd=cwd
        )

    return {
        "cwd": cwd,
        **run_concurrently(
            {
                "plain": lambda: interrupt(cwd, "plain", signal.SIGTERM, LONG),
                "existing": lambda: interrupt(cwd, "empty", signal.SIGINT, LONG),
                "full": uninterrupted,
                "term": term_then_resume,
                "int": int_then_resume,
            }
        ),
    }


SIGNALS = [("term", "SIGTERM", 143), ("int", "SIGINT", 130)]


def full_run(signalled: dict[str, Any]) -> Path:
    expect_exit(signalled["full"]["result"], 0)
    return signalled["cwd"] / "full"


def history_rows(out: Path) -> list[str]:
    return (out / "history.csv").read_text().splitlines()[1:]


@posix_only
@pytest.mark.parametrize(("name", "signame", "code"), SIGNALS)
def test_signal_stops_at_a_step_boundary_and_saves_a_checkpoint(
    signalled: dict[str, Any], name: str, signame: str, code: int, tmp_path: Path
) -> None:
    stopped, _ = signalled[name]
    result = stopped.result
    assert stopped.signalled, f"the run ended before the signal\n{describe(result)}"
    expect_exit(result, code)
    assert result.stdout == ""
    (line,) = assert_progress_and_errors(result, 1)
    found = re.fullmatch(
        rf"error: interrupted by {signame}; checkpoint of epoch (\d+) saved; "
        rf"continue with: linreg train --resume (\S+)",
        line,
    )
    assert found, line
    epoch = int(found.group(1))
    assert Path(found.group(2)) == stopped.out
    assert 4 <= epoch < EPOCHS  # after the 3rd progress line (epoch 4), before the end
    assert max(progress_epochs(result.stderr)) <= epoch
    # nothing half-written and no results: the options and the checkpoint only
    assert set(stopped.files) == {"config.toml", CHECKPOINT}
    saved = tmp_path / CHECKPOINT  # the checkpoint as the signal left it (resumed since)
    saved.write_bytes(stopped.files[CHECKPOINT])
    tensors, metadata = read_safetensors(saved, "checkpoint")
    assert metadata["epoch"] == str(epoch)
    full = full_run(signalled)
    reference = [float(row.split(",")[1]) for row in history_rows(full)[:epoch]]
    assert tensors["history"].tolist() == reference  # the losses so far, bit for bit
    assert stopped.files["config.toml"] == (full / "config.toml").read_bytes()


@posix_only
@pytest.mark.parametrize(("name", "signame", "code"), SIGNALS)
def test_resume_ends_exactly_where_an_uninterrupted_run_ends(
    signalled: dict[str, Any], name: str, signame: str, code: int
) -> None:
    stopped, resumed = signalled[name]
    expect_exit(stopped.result, code)
    assert resumed is not None, describe(stopped.result)
    expect_exit(resumed, 0)
    full = full_run(signalled)
    for file in ("model.safetensors", "history.csv", "config.toml", CHECKPOINT):
        assert (stopped.out / file).read_bytes() == (full / file).read_bytes(), file
    first, again = metrics_of(full), metrics_of(stopped.out)
    for key in ("params", "train", "epochs_run", "converged", "lr", "data", "optimality_gap"):
        assert again[key] == first[key], key
    assert again["epochs_run"] == EPOCHS
    # it continued after the checkpoint rather than starting again
    checkpoint_epoch = int(re.search(r"epoch (\d+) saved", stopped.result.stderr).group(1))
    assert min(progress_epochs(resumed.stderr)) == checkpoint_epoch + 1
    assert hidden_files(signalled["cwd"]) == []


@posix_only
def test_resume_takes_output_options(signalled: dict[str, Any]) -> None:
    stopped, resumed = signalled["int"]
    expect_exit(resumed, 0)
    assert json.loads(resumed.stdout) == metrics_of(stopped.out)  # --json: one document
    assert_progress_and_errors(resumed, 0)
    log = (signalled["cwd"] / "resume.log").read_text().splitlines()
    assert log and all(STAMP.match(line) for line in log), log
    bare = [STAMP.sub("", line, count=1) for line in log]
    assert bare[: len(resumed.stderr.splitlines())] == resumed.stderr.splitlines()
    assert f"run directory: {stopped.out}" in bare


@posix_only
def test_interrupted_run_without_checkpoints_removes_its_run_directory(
    signalled: dict[str, Any],
) -> None:
    stopped = signalled["plain"]
    assert stopped.signalled, describe(stopped.result)
    expect_exit(stopped.result, 143)
    assert stopped.result.stdout == ""
    (line,) = assert_progress_and_errors(stopped.result, 1)
    assert line.startswith("error: interrupted by SIGTERM; stopped after epoch ")
    assert "--checkpoint-every" in line
    assert not stopped.out.exists()
    assert hidden_files(signalled["cwd"]) == []


@posix_only
def test_interrupted_run_leaves_an_existing_empty_out_empty(signalled: dict[str, Any]) -> None:
    stopped = signalled["existing"]
    assert stopped.signalled, describe(stopped.result)
    expect_exit(stopped.result, 130)
    assert_progress_and_errors(stopped.result, 1)
    assert stopped.out.is_dir()
    assert stopped.files == {}


@posix_only
def test_a_second_run_on_a_locked_out_exits_2_at_once(signalled: dict[str, Any]) -> None:
    intruder = signalled["full"]["intruder"]
    assert signalled["full"]["overlapped"], "the first run ended before the second started"
    expect_exit(intruder, 2)
    assert intruder.stdout == ""
    assert_one_error(intruder, str(signalled["cwd"] / "full"), "in use")
    full = full_run(signalled)  # the first run went on undisturbed
    assert {p.name for p in full.iterdir()} == RUN_FILES - {"plot.png"} | {CHECKPOINT}
    assert metrics_of(full)["epochs_run"] == EPOCHS


SECOND_SIGNAL = """
import os, signal, time
from cli.signals import STOP
STOP.install()
assert STOP() is False  # the training loop polls: a signal only asks it to stop
os.kill(os.getpid(), signal.SIGTERM)
deadline = time.monotonic() + 10
while STOP.received is None and time.monotonic() < deadline:
    time.sleep(0.01)
print("stop requested:", STOP.received[0], STOP(), flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(10)
print("still running", flush=True)
"""
OUTSIDE_THE_LOOP = """
import os, signal, time
from cli.signals import STOP, Interrupted
STOP.install()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    print("still running", flush=True)
except Interrupted as exc:
    print(int(exc.code), exc, flush=True)
"""


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c script`` in a clean environment, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@posix_only
def test_a_second_signal_ends_the_process_at_once(tmp_path: Path) -> None:
    result = run_script(SECOND_SIGNAL, tmp_path)
    assert result.returncode == -signal.SIGINT, describe(result)
    assert result.stdout == "stop requested: SIGTERM True\n"


@posix_only
def test_a_signal_outside_the_training_loop_interrupts_at_once(tmp_path: Path) -> None:
    result = run_script(OUTSIDE_THE_LOOP, tmp_path)
    expect_exit(result, 0)
    assert result.stdout == "143 interrupted by SIGTERM; no results were written\n"


# -- 2. checkpoints refused by --resume, end to end ----------------------------------------------


def rewrite_checkpoint(path: Path, *, drop: tuple[str, ...] = (), **metadata: str | None) -> None:
    """Change a checkpoint's metadata or tensors and give it a valid checksum again, as
    another version of linreg (or a buggy writer) would have written it."""
    tensors, old = read_safetensors(path, "checkpoint")
    new = {key: value for key, value in old.items() if key != "sha256"}
    for key, value in metadata.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    kept = {name: np.array(tensor) for name, tensor in tensors.items() if name not in drop}
    path.write_bytes(safetensors_bytes(kept, new))


def edit_config(path: Path) -> None:
    text = path.read_text()
    assert "epochs = 12\n" in text
    path.write_text(text.replace("epochs = 12\n", "epochs = 13\n"))


TAMPERED: dict[str, Callable[[Path], None]] = {
    "intact": lambda run: None,
    "version": lambda run: rewrite_checkpoint(run / CHECKPOINT, linreg_version="0.0.1-other"),
    "no_shuffle_state": lambda run: rewrite_checkpoint(run / CHECKPOINT, drop=("shuffle_state",)),
    "options": lambda run: edit_config(run / "config.toml"),
    "no_checkpoint": lambda run: (run / CHECKPOINT).unlink(),
}
REFUSED = {
    "version": ["linreg 0.0.1-other"],
    "no_shuffle_state": ["incomplete", "shuffle_state"],
    "options": ["different options"],
    "data": ["different data"],
    "no_checkpoint": [],
}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished run on a CSV file with a checkpoint of epoch 10 of 12; copies of it, each
    changed in one way, are resumed side by side; then the data file itself changes."""
    cwd = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(11)
    table = rng.uniform(size=(400, 3))
    table[:, 2] = table[:, 0] - 2 * table[:, 1] + 0.5 + 0.1 * rng.standard_normal(400)
    data = cwd / "data.csv"
    np.savetxt(data, table, delimiter=",", header="a,b,y", comments="", fmt="%.17g")
    base = cwd / "base"
    created = run_linreg(
        "train",
        *("--data", data, "--batch-size", "64", "--momentum", "0.5", "--epochs", "12"),
        *("--tol", "0", "--val-fraction", "0.25", "--checkpoint-every", "5", "--no-plot"),
        *("--device", "cpu", "--out", base, "-q"),
        cwd=cwd,
    )
    expect_exit(created, 0)
    before = {}
    for name, tamper in [*TAMPERED.items(), ("data", lambda run: None)]:
        shutil.copytree(base, cwd / name)
        tamper(cwd / name)
        before[name] = snapshot(cwd / name)

    def resume(name: str) -> Callable[[], Run]:
        return lambda: run_linreg("train", "--resume", cwd / name, "-q", cwd=cwd)

    results = run_concurrently({name: resume(name) for name in TAMPERED})
    table[:, 2] += 1.0  # other data at the same path
    np.savetxt(data, table, delimiter=",", header="a,b,y", comments="", fmt="%.17g")
    results["data"] = resume("data")()
    return {"cwd": cwd, "base": base, "before": before, **results}


def test_resume_of_an_intact_checkpoint_ends_like_the_original(resumed: dict[str, Any]) -> None:
    result = expect_exit(resumed["intact"], 0)
    assert result.stdout == result.stderr == ""
    base, again = resumed["base"], resumed["cwd"] / "intact"
    for name in ("model.safetensors", "history.csv", CHECKPOINT, "config.toml"):
        assert (again / name).read_bytes() == (base / name).read_bytes(), name
    assert history_rows(again)[0].count(",") == 2  # epoch, train_loss, val_loss


@pytest.mark.parametrize(("name", "needles"), REFUSED.items(), ids=REFUSED.keys())
def test_resume_refuses_a_checkpoint_that_does_not_belong(
    resumed: dict[str, Any], name: str, needles: list[str]
) -> None:
    result = expect_exit(resumed[name], 2)
    assert result.stdout == ""
    assert_one_error(result, str(resumed["cwd"] / name / CHECKPOINT), *needles)
    run = resumed["cwd"] / name
    assert (run / "model.safetensors").read_bytes() == resumed["before"][name]["model.safetensors"]
    assert hidden_files(run) == []


def test_a_refused_resume_leaves_the_run_directory_as_it_was(resumed: dict[str, Any]) -> None:
    for name in REFUSED:
        expect_exit(resumed[name], 2)
        assert snapshot(resumed["cwd"] / name) == resumed["before"][name], name


RESUME_WITH = {
    "a training option": (["--epochs", "5"], None, ["--epochs", "--resume"]),
    "--out": (["--out", "other"], None, ["--out", "--resume"]),
    "--config": (["--config", "c.toml"], None, ["--config", "--resume"]),
    "an environment variable": ([], {"LINREG_BATCH_SIZE": "4"}, ["--batch-size", "--resume"]),
}


@pytest.mark.parametrize(("args", "env", "needles"), RESUME_WITH.values(), ids=RESUME_WITH.keys())
def test_resume_refuses_training_options(
    tmp_path: Path, args: list[str], env: dict[str, str] | None, needles: list[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("epochs = 12\n")
    (tmp_path / "c.toml").write_text("epochs = 3\n")
    result = run_linreg("train", "--resume", run, *args, cwd=tmp_path, env=clean_env(env))
    expect_exit(result, 2)
    assert result.stdout == ""
    assert_one_error(result, *needles)
    assert sorted(os.listdir(run)) == ["config.toml"]


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = expect_exit(run_linreg("train", "--resume", tmp_path / "nothing", cwd=tmp_path), 2)
    assert_one_error(result, "--resume", "config.toml")
    assert list(tmp_path.iterdir()) == []


# -- 4. concurrent runs --------------------------------------------------------------------------

SMALL = [
    *("--samples", "500", "--features", "2", "--batch-size", "50", "--momentum", "0.3"),
    *("--epochs", "20", "--tol", "0", "--no-plot", "--checkpoint-every", "5", "--device", "cpu"),
]


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("concurrent")
    jobs = {name: train_job(cwd, cwd / "shared", *SMALL) for name in ("same_1", "same_2")}
    jobs["other"] = train_job(cwd, cwd / "other", *SMALL)
    return {"cwd": cwd, **run_concurrently(jobs)}


def test_runs_with_different_out_do_not_interfere(concurrent: dict[str, Any]) -> None:
    """The run on "other" beside the two on "shared": each writes its own directory whole."""
    cwd = concurrent["cwd"]
    result = expect_exit(concurrent["other"], 0)
    assert f"run directory: {cwd / 'other'}" in result.stdout
    assert "shared" not in result.stdout
    files = {}
    for name in ("other", "shared"):
        assert {p.name for p in (cwd / name).iterdir()} == RUN_FILES - {"plot.png"} | {CHECKPOINT}
        files[name] = {
            file: (cwd / name / file).read_bytes()
            for file in ("model.safetensors", "history.csv", CHECKPOINT, "config.toml")
        }
    assert files["other"] == files["shared"]
    assert hidden_files(cwd) == []


def test_two_runs_on_one_out_at_once_exactly_one_proceeds(concurrent: dict[str, Any]) -> None:
    results = [concurrent["same_1"], concurrent["same_2"]]
    codes = sorted(result.returncode for result in results)
    assert codes == [0, 2], "\n\n".join(describe(result) for result in results)
    winner, loser = sorted(results, key=lambda result: result.returncode)
    shared = concurrent["cwd"] / "shared"
    assert loser.stdout == ""
    assert_one_error(loser, str(shared))
    assert f"run directory: {shared}" in winner.stdout
    assert metrics_of(shared)["epochs_run"] == 20


# -- 5. cron: no terminal, no HOME, stdin closed; plain progress lines and --log-file ------------


def cron(cwd: Path, *args: str | os.PathLike[str]) -> Run:
    """linreg as cron starts it: PATH only, stdin closed, output to files, no terminal."""
    return subprocess.run(
        ["/bin/sh", "-c", 'exec "$@" <&-', "sh", *linreg_command(*map(str, args))],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        start_new_session=True,  # no controlling terminal
        check=False,
    )


@pytest.fixture(scope="module")
def crontab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("cron")
    home, nightly = cwd / "home", cwd / "nightly"
    home.mkdir()
    nightly.mkdir()
    (nightly / "train.log").write_text("an earlier line\n")
    return {
        "cwd": cwd,
        **run_concurrently(
            {
                "out": lambda: cron(
                    nightly,
                    *("train", "--epochs", "40", "--tol", "0", "--out", nightly / "run"),
                    *("--log-file", "train.log"),
                ),
                "default": lambda: cron(home, "train", "-q", "--log-file", "quiet.log"),
            }
        ),
    }


@posix_only
def test_cron_run_with_out_writes_plain_output(crontab: dict[str, Any]) -> None:
    result = expect_exit(crontab["out"], 0)
    run = crontab["cwd"] / "nightly" / "run"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert_plain(result.stdout, "stdout")
    assert f"run directory: {run}" in result.stdout
    assert_progress_and_errors(result, 0)
    # progress at doubling epochs only (a run far shorter than the one-minute heartbeat)
    assert progress_epochs(result.stderr) == [1, 2, 4, 8, 16, 32]
    assert all(found.group(2) == "40" for found in PROGRESS.finditer(result.stderr))
    assert metrics_of(run)["epochs_run"] == 40


@posix_only
def test_log_file_appends_stamped_progress_and_summary(crontab: dict[str, Any]) -> None:
    result = expect_exit(crontab["out"], 0)
    first, *lines = (crontab["cwd"] / "nightly" / "train.log").read_text().splitlines()
    assert first == "an earlier line"  # appended, not replaced
    assert_plain("\n".join(lines), "the log file")
    assert lines and all(STAMP.match(line) for line in lines), lines
    bare = [STAMP.sub("", line, count=1) for line in lines]
    assert bare == result.stderr.splitlines() + result.stdout.splitlines()


@posix_only
def test_cron_default_run_directory_is_under_the_working_directory(
    crontab: dict[str, Any],
) -> None:
    result = expect_exit(crontab["default"], 0)
    assert result.stdout == result.stderr == ""  # -q: cron mails nothing
    home = crontab["cwd"] / "home"
    assert sorted(os.listdir(home)) == ["quiet.log", "runs"]
    (made,) = (home / "runs").iterdir()
    assert RUN_NAME.fullmatch(made.name), made.name
    assert {p.name for p in made.iterdir()} == RUN_FILES
    log = [STAMP.sub("", line, count=1) for line in (home / "quiet.log").read_text().splitlines()]
    assert progress_epochs("\n".join(log))[:2] == [1, 2]  # -q still logs the progress...
    assert log[-1] == f"run directory: {Path('runs') / made.name}"  # ...and the summary


@posix_only
def test_data_sha256_is_a_sha256_of_the_training_rows(crontab: dict[str, Any]) -> None:
    expect_exit(crontab["out"], 0)
    metrics = metrics_of(crontab["cwd"] / "nightly" / "run")
    data = synthetic(TrainConfig())  # the demo's rows, no hold-out
    digest = hashlib.sha256(f"{data.samples}x{data.features};".encode())
    digest.update(np.asarray(data.X, dtype="<f8").tobytes())
    digest.update(np.asarray(data.y, dtype="<f8").tobytes())
    assert metrics["data"]["sha256"] == digest.hexdigest()


# -- 5. progress lines and the log file, unit tests ----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def report(
    epochs: list[int],
    seconds_per_epoch: float,
    *,
    quiet: bool,
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Feed the reporter one Progress per epoch, with a clock at ``seconds_per_epoch``."""
    clock = Clock()
    monkeypatch.setattr(output, "time", SimpleNamespace(monotonic=clock.monotonic))
    logfile = output.LogFile(log)
    try:
        with output.ProgressReporter(quiet=quiet, log=logfile) as reporter:
            for epoch in epochs:
                clock.now = seconds_per_epoch * epoch
                reporter(Progress(epoch, epochs[-1], 1.0 / epoch, seconds_per_epoch * epoch))
    finally:
        logfile.close()


@pytest.mark.parametrize(
    ("count", "seconds", "expected"),
    [
        (100, 0.0, [1, 2, 4, 8, 16, 32, 64]),  # fast epochs: doubling only
        (16, 25.0, [1, 2, 4, 7, 8, 11, 14, 16]),  # slow ones: also one line a minute
    ],
)
def test_plain_progress_doubles_and_beats_at_least_once_a_minute(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    seconds: float,
    expected: list[int],
) -> None:
    log = tmp_path / "train.log"
    log.write_text("before\n")
    report(list(range(1, count + 1)), seconds, quiet=False, log=log, monkeypatch=monkeypatch)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert progress_epochs(captured.err) == expected and len(lines) == len(expected)
    assert lines[2] == f"epoch 4/{count}  loss 2.500000e-01  elapsed {4 * seconds:.2f}s"
    first, *logged = log.read_text().splitlines()
    assert first == "before"
    assert [STAMP.sub("", line, count=1) for line in logged] == lines
    assert all(STAMP.match(line) for line in logged)


def test_quiet_progress_goes_to_the_log_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "train.log"
    report(list(range(1, 10)), 0.0, quiet=True, log=log, monkeypatch=monkeypatch)
    assert capsys.readouterr() == ("", "")
    assert progress_epochs(log.read_text()) == [1, 2, 4, 8]


# -- 2. regression.checkpoint --------------------------------------------------------------------


def run_identity(**options: Any) -> RunIdentity:
    config = TrainConfig(device="cpu", checkpoint_every=3, **options)
    return RunIdentity(
        config=to_toml(config.to_dict()),
        data_sha256="ab" * 32,
        lr=0.125,
        momentum=float(options.get("momentum") or 0.0),
        validation=float(options.get("val_fraction", 0.0)) > 0,
    )


IDENTITY = run_identity(momentum=0.5, val_fraction=0.25)  # for states with momentum and val
PLAIN = run_identity(momentum=0.0)


def loop_state(*, epoch: int = 3, momentum: bool = True, val: bool = True) -> LoopState:
    generator = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=generator)  # a state other than the seed's first
    history = tuple(float(v) for v in np.linspace(1.0, 0.1, epoch))
    return LoopState(
        epoch=epoch,
        weight=torch.tensor([[0.5, -1.25]]),
        bias=torch.tensor([0.125]),
        momentum=(torch.tensor([[0.01, 0.02]]), torch.tensor([0.03])) if momentum else (None, None),
        shuffle_state=generator.get_state(),
        history=history,
        val_history=tuple(1.1 * v for v in history) if val else None,
        previous_loss=history[-1] if history else float("inf"),
        stalled=min(epoch, 2),
    )


def assert_same_state(loaded: LoopState, state: LoopState) -> None:
    for name in ("weight", "bias", "shuffle_state"):
        a, b = getattr(loaded, name), getattr(state, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for a, b in zip(loaded.momentum, state.momentum, strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert loaded.history == state.history and loaded.val_history == state.val_history
    assert (loaded.epoch, loaded.previous_loss, loaded.stalled) == (
        state.epoch,
        state.previous_loss,
        state.stalled,
    )


@pytest.mark.parametrize(
    ("state", "identity"),
    [
        (loop_state(), IDENTITY),
        (loop_state(momentum=False, val=False), PLAIN),
        (loop_state(epoch=0, momentum=False), IDENTITY),  # no step yet: no momentum buffers
        (replace(loop_state(), weight=torch.tensor([[0.5, -1.25]], dtype=torch.float64)), IDENTITY),
    ],
    ids=["momentum and val", "plain", "epoch 0", "float64"],
)
def test_checkpoint_round_trip_is_exact(
    tmp_path: Path, state: LoopState, identity: RunIdentity
) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, state, identity)
    assert_same_state(load_checkpoint(path, identity), state)
    assert hidden_files(tmp_path) == []


def test_a_new_checkpoint_replaces_the_old_one_whole(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, loop_state(epoch=3), IDENTITY)
    save_checkpoint(path, loop_state(epoch=6), IDENTITY)
    assert load_checkpoint(path, IDENTITY).epoch == 6
    assert sorted(os.listdir(tmp_path)) == [CHECKPOINT]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, loop_state(), IDENTITY)
    return path


def refusal(path: Path, identity: RunIdentity = IDENTITY) -> str:
    with pytest.raises(ModelFileError) as raised:
        load_checkpoint(path, identity)
    assert str(path) in str(raised.value)
    return str(raised.value)


def test_a_checkpoint_of_another_linreg_version_is_refused(checkpoint: Path) -> None:
    rewrite_checkpoint(checkpoint, linreg_version="0.0.1-other")
    load = read_safetensors(checkpoint, "checkpoint")  # a valid file, only the version differs
    assert load[1]["linreg_version"] == "0.0.1-other"
    message = refusal(checkpoint)
    assert "linreg 0.0.1-other" in message and __version__ in message


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"format_version": "2"}, "format '2'"),
        ({"format": "linreg-model"}, "not a linreg checkpoint"),
        ({"epoch": None}, "incomplete"),
        ({"previous_loss": None}, "incomplete"),
        ({"stalled": None}, "incomplete"),
        ({"epoch": "three"}, "damaged"),
        ({"epoch": "4"}, "damaged"),  # 3 losses for 4 epochs
    ],
    ids=["format version", "a model file", "epoch", "previous_loss", "stalled", "text", "count"],
)
def test_checkpoint_with_bad_metadata_is_refused(
    checkpoint: Path, changes: dict[str, str | None], needle: str
) -> None:
    rewrite_checkpoint(checkpoint, **changes)
    assert needle in refusal(checkpoint)


@pytest.mark.parametrize("tensor", ["linear.weight", "linear.bias", "shuffle_state", "history"])
def test_checkpoint_with_a_missing_tensor_is_refused(checkpoint: Path, tensor: str) -> None:
    rewrite_checkpoint(checkpoint, drop=(tensor,))
    message = refusal(checkpoint)
    assert "incomplete" in message and tensor in message


@pytest.mark.parametrize(
    ("identity", "needle"),
    [
        (replace(IDENTITY, config=IDENTITY.config.replace("seed = 0", "seed = 1")), "options"),
        (replace(IDENTITY, data_sha256="cd" * 32), "data"),
        (replace(IDENTITY, lr=0.25), "step size"),
    ],
    ids=["options", "data", "lr"],
)
def test_checkpoint_of_another_run_is_refused(
    checkpoint: Path, identity: RunIdentity, needle: str
) -> None:
    assert identity != IDENTITY
    assert f"different {needle}" in refusal(checkpoint, identity)


def test_checkpoint_without_its_momentum_buffers_is_refused(checkpoint: Path) -> None:
    rewrite_checkpoint(checkpoint, drop=("momentum.weight", "momentum.bias"))
    assert "incomplete" in refusal(checkpoint)


def test_checkpoint_without_its_validation_history_is_refused(checkpoint: Path) -> None:
    rewrite_checkpoint(checkpoint, drop=("val_history",))
    assert "incomplete" in refusal(checkpoint)


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_truncated_checkpoint_is_refused(checkpoint: Path, keep: float) -> None:
    raw = checkpoint.read_bytes()
    checkpoint.write_bytes(raw[: int(len(raw) * keep)])
    refusal(checkpoint)


def test_edited_checkpoint_fails_its_checksum(checkpoint: Path) -> None:
    raw = bytearray(checkpoint.read_bytes())
    raw[-1] ^= 0x01  # the last byte of the last tensor
    checkpoint.write_bytes(bytes(raw))
    assert "checksum" in refusal(checkpoint)


def test_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    refusal(tmp_path / CHECKPOINT)


# -- 2. regression.train: resume and should_stop -------------------------------------------------

LR = 0.05
CPU = torch.device("cpu")


def problem(
    *, val: bool = False, dtype: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """200 training rows of 3 standardized features (and 40 hold-out rows)."""
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(240, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.standard_normal(240)
    scaling = Scaling(mean=X[:200].mean(axis=0), scale=X[:200].std(axis=0))
    torch_dtype = getattr(torch, dtype)

    def tensors(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            to_training_tensor(X[rows], scaling, device=CPU, dtype=torch_dtype),
            target_tensor(y[rows], device=CPU, dtype=torch_dtype),
        )

    inputs, target = tensors(slice(0, 200))
    return inputs, target, tensors(slice(200, 240)) if val else None


def assert_same_training(result: Trained, reference: Trained) -> None:
    assert torch.equal(result.model.weight, reference.model.weight)
    assert torch.equal(result.model.bias, reference.model.bias)
    assert result.history == reference.history
    assert result.val_history == reference.val_history
    assert result.converged == reference.converged


RESUME_CASES = {
    "full batch": ({"batch_size": 0, "momentum": 0.0}, False, "float32"),
    "full batch, momentum, weight decay, val": (
        {"batch_size": 0, "momentum": 0.9, "weight_decay": 0.01},
        True,
        "float32",
    ),
    "mini-batch with momentum": ({"batch_size": 32, "momentum": 0.9}, False, "float32"),
    "mini-batch with momentum and val, float64": (
        {"batch_size": 32, "momentum": 0.5},
        True,
        "float64",
    ),
}


@pytest.mark.parametrize(
    ("options", "val", "dtype"), RESUME_CASES.values(), ids=RESUME_CASES.keys()
)
def test_resumed_training_is_bit_identical(
    tmp_path: Path, options: dict[str, Any], val: bool, dtype: str
) -> None:
    X, y, hold_out = problem(val=val, dtype=dtype)
    config = TrainConfig(device="cpu", epochs=9, tol=0.0, dtype=dtype, **options)
    reference = train(X, y, config=config, lr=LR, val=hold_out)
    saved: list[LoopState] = []
    checkpointed = train(
        X, y, config=config, lr=LR, val=hold_out, checkpointer=Checkpointer(saved.append, 3)
    )
    assert_same_training(checkpointed, reference)  # checkpointing changes nothing
    assert [state.epoch for state in saved] == [3, 6, 9]
    assert saved[0].history == tuple(reference.history[:3])
    for state in saved:
        assert_same_training(
            train(X, y, config=config, lr=LR, val=hold_out, resume=state), reference
        )
    # and through the checkpoint file
    path = tmp_path / CHECKPOINT
    identity = run_identity(momentum=config.momentum, val_fraction=0.25 if val else 0.0)
    save_checkpoint(path, saved[0], identity)
    loaded = load_checkpoint(path, identity)
    assert_same_training(train(X, y, config=config, lr=LR, val=hold_out, resume=loaded), reference)


def test_resume_keeps_the_early_stopping_state() -> None:
    X, y, _ = problem()
    config = TrainConfig(device="cpu", epochs=500, tol=1e-3, patience=3, momentum=0.0)
    saved: list[LoopState] = []
    reference = train(X, y, config=config, lr=LR, checkpointer=Checkpointer(saved.append, 1))
    assert reference.converged and len(reference.history) < config.epochs
    settling = [state for state in saved if 0 < state.stalled < config.patience]
    assert settling, [state.stalled for state in saved]
    for state in settling:  # part of the way through the patience count
        assert_same_training(train(X, y, config=config, lr=LR, resume=state), reference)


class StopAfter:
    """should_stop that says yes on its ``limit``-th call."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.limit


# 200 rows in batches of 32: 7 steps an epoch, polled after the first 6 and after the epoch
@pytest.mark.parametrize(
    ("batch_size", "limit", "epoch"),
    [
        (32, 1, 0),  # in the middle of epoch 1: back to the start
        (32, 7, 1),  # at the end of epoch 1
        (32, 8, 1),  # early in epoch 2
        (32, 14, 2),
        (32, 17, 2),  # in the middle of epoch 3
        (0, 3, 3),  # full batch: polled once an epoch
    ],
)
def test_should_stop_raises_with_the_last_whole_epoch_saved(
    batch_size: int, limit: int, epoch: int
) -> None:
    X, y, hold_out = problem(val=True)
    config = TrainConfig(device="cpu", epochs=6, tol=0.0, batch_size=batch_size, momentum=0.9)
    saved: list[LoopState] = []
    stop = StopAfter(limit)
    with pytest.raises(TrainingStopped) as raised:
        train(
            X,
            y,
            config=config,
            lr=LR,
            val=hold_out,
            checkpointer=Checkpointer(saved.append, 100),
            should_stop=stop,
        )
    assert stop.calls == limit  # it stopped at the first yes
    assert (raised.value.epoch, raised.value.saved) == (epoch, True)
    (state,) = saved
    assert state.epoch == epoch and len(state.history) == epoch
    if epoch:  # the state is that of a run of exactly that many epochs
        shorter = train(X, y, config=replace(config, epochs=epoch), lr=LR, val=hold_out)
        assert torch.equal(state.weight, shorter.model.weight)
        assert state.history == tuple(shorter.history)
    else:
        assert not state.weight.any() and state.momentum == (None, None)
    reference = train(X, y, config=config, lr=LR, val=hold_out)
    assert_same_training(train(X, y, config=config, lr=LR, val=hold_out, resume=state), reference)


def test_should_stop_without_checkpointing_saves_nothing() -> None:
    X, y, _ = problem()
    config = TrainConfig(device="cpu", epochs=6, tol=0.0, batch_size=32, momentum=0.0)
    with pytest.raises(TrainingStopped) as raised:
        train(X, y, config=config, lr=LR, should_stop=StopAfter(10))
    assert (raised.value.epoch, raised.value.saved) == (1, False)
