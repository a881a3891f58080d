"""The training configuration: every default in one place, validated once.

This module must stay cheap to import: the command line reads its defaults to print ``--help``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError

DTYPES = ("float32", "float64")
# none: the raw features; standardize: (x - mean) / std; whiten: standardized and then
# decorrelated (see model.Scaling.whitened); auto: whiten where the standardized features are
# badly conditioned (see pipeline.choose_precondition), standardize elsewhere
PRECONDITIONERS = ("auto", "none", "standardize", "whiten")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
SYNTHETIC_FIELDS = ("samples", "features", "weight", "bias", "noise")
# a data file's cells that are missing values, unless --na-values says otherwise ("" is an
# empty cell); a NaN number is missing whatever the list
NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")
MISSING_POLICIES = ("error", "drop", "mean")  # --missing
TEXT_FORMATS = ("csv", "tsv")  # --format
MAX_LEVELS = 1000
# the options that describe the columns and cells of a data file (need --data)
TABLE_FIELDS = ("feature_columns", "exclude", "categorical", "missing", "na_values", "max_levels")


@dataclass(frozen=True)
class TrainConfig:
    """What to fit and how. Field names match the command-line options (``_`` for ``-``)."""

    # data from a file (.csv, .tsv, .npy, .npz, .parquet); None = synthetic data
    data: str | None = None
    target: str | None = None  # target column: a name or 0-based index; None = the last
    # the data file's feature columns (names or 0-based indices, in this order; "a,b" is two);
    # () = every column but the target. The option is --features (a count without --data)
    feature_columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # columns left out (names or indices)
    categorical: tuple[str, ...] = ()  # numeric-coded columns to treat as categorical
    missing: str = "error"  # missing cells: error, drop (the rows), mean (fill, + indicator)
    na_values: tuple[str, ...] = NA_VALUES  # the cells that are missing values
    max_levels: int = MAX_LEVELS  # most levels of a categorical column, >= 2
    format: str | None = None  # csv or tsv, where the data's name cannot tell (stdin)
    val_fraction: float = 0.0  # share of rows held out for validation (seeded), in [0, 1)
    # synthetic data: y = X @ weight + bias + noise * N(0, 1), X ~ U[0, 1)
    samples: int = 100  # rows, >= 1
    features: int = 1  # columns, >= 1
    weight: tuple[float, ...] = (2.0,)  # true weights: one per feature, or one for all
    bias: float = 1.0  # true intercept
    noise: float = 0.1  # standard deviation of the Gaussian noise, >= 0
    seed: int = 0  # seeds the data and the mini-batch order, >= 0
    # training
    epochs: int = 1000  # most passes over the training data, >= 1
    lr: float | None = None  # SGD step size > 0; None = derived from the data ("auto")
    batch_size: int = 0  # rows per mini-batch, >= 0; 0 = the full data set
    momentum: float | None = None  # SGD momentum in [0, 1); None = "auto" (see train.py)
    weight_decay: float = 0.0  # L2 penalty on the weights (not the intercept), >= 0
    # the features' preconditioner: none, standardize, whiten, or auto (see PRECONDITIONERS)
    precondition: str = "auto"
    tol: float = 1e-6  # stop when the loss improves by less than this (relative), >= 0
    patience: int = 5  # ... for this many epochs in a row, >= 1
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: str = "float32"  # float32 or float64
    checkpoint_every: int = 0  # save the loop state every this many epochs; 0 = never
    # a model file whose parameters start training (same feature names), instead of zeros
    init_model: str | None = None

    def __post_init__(self) -> None:
        _check_int(self, "samples", 1)
        _check_int(self, "features", 1)
        _check_int(self, "seed", 0)
        if self.seed >= 2**63:
            raise ConfigError("seed", "must be < 2**63", self.seed)
        _check_int(self, "epochs", 1)
        _check_int(self, "batch_size", 0)
        _check_int(self, "patience", 1)
        _check_int(self, "checkpoint_every", 0)
        _check_int(self, "max_levels", 2)
        for name in ("feature_columns", "exclude", "categorical", "na_values"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(name, "must be a list of strings", value)
            object.__setattr__(self, name, tuple(value))
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(
                "missing", f"must be one of {', '.join(MISSING_POLICIES)}", self.missing
            )
        if self.format is not None and self.format not in TEXT_FORMATS:
            raise ConfigError("format", f"must be one of {', '.join(TEXT_FORMATS)}", self.format)
        if self.data is None:
            for name in (*TABLE_FIELDS, "format"):
                if getattr(self, name) != getattr(DEFAULT_TABLE, name, None):
                    option = "features" if name == "feature_columns" else name
                    raise ConfigError(
                        option, "needs --data (it describes a data file's columns)", None
                    )
        weight = tuple(float(w) for w in self.weight)
        object.__setattr__(self, "weight", weight)
        if len(weight) not in (1, self.features):
            raise ConfigError(
                "weight",
                f"takes 1 value or one per feature (--features {self.features})",
                f"{len(weight)} values",
            )
        if not all(math.isfinite(w) for w in weight):
            raise ConfigError("weight", "must be finite", list(weight))
        _check_float(self, "bias")
        _check_float(self, "noise", low=0.0)
        _check_float(self, "weight_decay", low=0.0)
        _check_float(self, "tol", low=0.0)
        if self.momentum is not None:
            _check_float(self, "momentum", low=0.0, high=1.0)
        _check_float(self, "val_fraction", low=0.0, high=1.0)
        for name in ("data", "target", "init_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(name, "must be a non-empty string", value)
        if self.lr is not None:
            _check_float(self, "lr", low=0.0, low_open=True)
        if self.precondition not in PRECONDITIONERS:
            raise ConfigError(
                "precondition", f"must be one of {', '.join(PRECONDITIONERS)}", self.precondition
            )
        if self.precondition == "whiten" and self.weight_decay:
            raise ConfigError(
                "precondition",
                "whiten cannot be used with --weight-decay (the penalty is on standardized "
                "weights: use --precondition standardize or auto)",
                self.precondition,
            )
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError("device", "must be auto, cpu, cuda, cuda:N or mps", self.device)

    @property
    def weights(self) -> tuple[float, ...]:
        """The true weights, one per feature."""
        return self.weight * self.features if len(self.weight) == 1 else self.weight

    def to_dict(self) -> dict[str, Any]:
        """Plain values for TOML and JSON; ``lr`` is the string ``"auto"`` when derived."""
        values = asdict(self)
        values["weight"] = list(self.weight)
        values["lr"] = "auto" if self.lr is None else self.lr
        values["momentum"] = "auto" if self.momentum is None else self.momentum
        columns = values.pop("feature_columns")
        for name in ("exclude", "categorical", "na_values"):
            values[name] = list(values[name])
        if self.data is not None:  # the synthetic options play no part in this run
            for name in SYNTHETIC_FIELDS:
                del values[name]
            values["features"] = list(columns)  # --features, as data columns
            if self.format is None:
                del values["format"]  # by the name's suffix
        else:  # nor do the data file's
            for name in (*TABLE_FIELDS, "format"):
                values.pop(name, None)
        if self.init_model is None:  # TOML has no null: absent means none
            del values["init_model"]
        return values


class _TableDefaults:
    """The defaults of the table options, to tell whether one was given."""

    feature_columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    missing = "error"
    na_values = NA_VALUES
    max_levels = MAX_LEVELS
    format = None


DEFAULT_TABLE = _TableDefaults()


def _check_int(config: TrainConfig, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, "must be an integer", value)
    if value < low:
        raise ConfigError(name, f"must be >= {low}", value)


def _check_float(
    config: TrainConfig,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, "must be a number", value)
    value = float(value)
    object.__setattr__(config, name, value)
    if not math.isfinite(value):
        raise ConfigError(name, "must be finite", value)
    if low is not None and high is not None and not low <= value < high:
        raise ConfigError(name, f"must be in [{low:g}, {high:g})", value)
    if low is not None and high is None and (value <= low if low_open else value < low):
        raise ConfigError(name, f"must be {'>' if low_open else '>='} {low:g}", value)


def parse_lr(text: str) -> float | None:
    """``auto`` -> None, otherwise a float (range checked by TrainConfig)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError("lr", "must be 'auto' or a number > 0", text) from None


def parse_momentum(text: str) -> float | None:
    """``auto`` -> None, otherwise a float (range checked by TrainConfig)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError("momentum", "must be 'auto' or a number in [0, 1)", text) from None


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def to_toml(values: dict[str, Any]) -> str:
    """Flat TOML: one ``key = value`` line per entry (None values are left out)."""
    lines = []
    for key, value in values.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_char(char: str) -> str:
    """A character inside a TOML basic string: quote, backslash and controls escaped."""
    if char in '"\\':
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
