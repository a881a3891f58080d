"""Where each ``linreg train`` option value comes from.

Precedence, for every option: the command line, then the environment variable
``LINREG_<OPTION>`` (``LINREG_BATCH_SIZE``), then the ``--config`` TOML file (keys with dashes
or underscores), then the default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from regression.config import to_toml
from regression.errors import ConfigError
from regression.safeio import read_bounded

# a config file is read whole: a few hundred bytes of options, refused beyond this
MAX_CONFIG_BYTES = 16 << 20
CONFIG_ADVICE = "give the path of a TOML file of options"
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Setting:
    key: str  # the option's long name with underscores: the config key and env suffix
    param: str  # the parameter of the `train` function
    # int, float, bool, str, path, floats, auto ('auto' or a number), strs (names, repeatable:
    # lists of strings), list (one comma-separated string, or a list), or columns (strs, or
    # an int: --features)
    kind: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def envvar(self) -> str:
        return "LINREG_" + self.key.upper()


SETTINGS = [
    Setting("data", "data", "path"),
    Setting("target", "target", "str"),
    Setting("features", "features", "columns"),  # a count without --data
    Setting("exclude", "exclude", "strs"),
    Setting("categorical", "categorical", "strs"),
    Setting("missing", "missing", "str"),
    Setting("na_values", "na_values", "list"),
    Setting("max_levels", "max_levels", "int"),
    Setting("format", "data_format", "str"),
    Setting("val_fraction", "val_fraction", "float"),
    Setting("samples", "samples", "int"),
    Setting("weight", "weight", "floats"),
    Setting("bias", "bias", "float"),
    Setting("noise", "noise", "float"),
    Setting("seed", "seed", "int"),
    Setting("epochs", "epochs", "int"),
    Setting("lr", "lr", "auto"),
    Setting("batch_size", "batch_size", "int"),
    Setting("momentum", "momentum", "auto"),
    Setting("weight_decay", "weight_decay", "float"),
    Setting("precondition", "precondition", "str"),
    Setting("standardize", "standardize", "bool"),  # alias: standardize or none
    Setting("tol", "tol", "float"),
    Setting("patience", "patience", "int"),
    Setting("device", "device", "str"),
    Setting("dtype", "dtype", "str"),
    Setting("checkpoint_every", "checkpoint_every", "int"),
    Setting("init_model", "init_model", "path"),
    Setting("out", "out", "path"),
    Setting("overwrite", "overwrite", "bool"),
    Setting("plot", "plot", "path"),
    Setting("no_plot", "no_plot", "bool"),
    Setting("json", "json_output", "bool"),
    Setting("quiet", "quiet", "bool"),
    Setting("require_converged", "require_converged", "bool"),
    Setting("log_file", "log_file", "path"),
    Setting("summary", "summary", "bool"),
    Setting("confidence", "confidence", "float"),
    Setting("debug", "debug", "bool"),
]
BY_KEY = {setting.key: setting for setting in SETTINGS}
# the options that decide the numbers (the rest decide where and how results are shown)
TRAINING_KEYS = [s.key for s in SETTINGS[: [s.key for s in SETTINGS].index("out")]]


def resolve(ctx: typer.Context, config_file: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Every setting's value by precedence, keyed by ``train`` parameter name, and where
    each came from: "command line", "environment", "config" or "default"."""
    from_file = read_config(config_file) if config_file is not None else {}
    values, sources = {}, {}
    for setting in SETTINGS:
        source = ctx.get_parameter_source(setting.param)
        if source is not None and source.name == "COMMANDLINE":
            values[setting.param], origin = ctx.params[setting.param], "command line"
        elif setting.envvar in os.environ:
            values[setting.param] = from_env(setting, os.environ[setting.envvar])
            origin = "environment"
        elif setting.key in from_file:
            values[setting.param], origin = from_file[setting.key], "config"
        else:
            values[setting.param], origin = ctx.params[setting.param], "default"
        sources[setting.key] = origin
    return values, sources


def from_env(setting: Setting, text: str) -> Any:
    where = f"environment variable {setting.envvar}"
    try:
        return _convert(setting, text.strip(), strings=True)
    except ValueError as exc:
        raise ConfigError(setting.key, f"({where}) {exc}", None) from None


def read_config(path: Path) -> dict[str, Any]:
    """A TOML file of option values, checked key by key; relative paths in it are taken
    relative to the file's folder, so a config works from any working directory (cron)."""

    def refuse(message: str) -> ConfigError:
        return ConfigError("config", f"file {message}", None)

    try:
        raw = read_bounded(path, limit=MAX_CONFIG_BYTES, refuse=refuse, advice=CONFIG_ADVICE)
        document = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", "must be an existing TOML file", str(path)) from None
    except OSError as exc:
        raise ConfigError("config", f"cannot be read ({exc.strerror})", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"file {path} is not UTF-8 text: {exc}", None) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"file {path} is not valid TOML: {exc}", None) from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(
            "config", f"file {path} is nested too deeply to be options", None
        ) from None
    values: dict[str, Any] = {}
    for raw_key, value in document.items():
        key = raw_key.replace("-", "_")
        if key in values:
            raise ConfigError("config", f"file {path}: key {raw_key!r} is given twice", None)
        setting = BY_KEY.get(key)
        if setting is None:
            known = ", ".join(sorted(BY_KEY))
            raise ConfigError(
                "config", f"file {path}: unknown key {raw_key!r} (known: {known})", None
            )
        try:
            converted = _convert(setting, value, strings=False)
        except ValueError as exc:
            raise ConfigError("config", f"file {path}: key {raw_key!r} {exc}", None) from None
        if setting.kind == "path" and converted is not None and not converted.is_absolute():
            converted = path.parent / converted
        values[key] = converted
    return values


def _convert(setting: Setting, value: Any, *, strings: bool) -> Any:
    """One value of ``setting.kind``; ValueError saying what was expected."""
    kind = setting.kind
    if kind == "int":
        if strings:
            value = _parse(int, value, "an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value
    if kind == "float":
        if strings:
            value = _parse(float, value, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if strings:
            if value.lower() not in TRUE + FALSE:
                raise ValueError(f"must be true or false (1/0, yes/no), got {value!r}")
            return value.lower() in TRUE
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if kind == "floats":
        if strings:
            return [_parse(float, part, "a number") for part in value.replace(",", " ").split()]
        items = value if isinstance(value, list) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, int | float) for v in items):
            raise ValueError(f"must be a number or a list of numbers, got {value!r}")
        return [float(v) for v in items]
    if kind in ("strs", "columns", "list"):
        if (
            kind == "columns"
            and not strings
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            return value
        if isinstance(value, str):
            return value.split(",") if kind == "list" or strings else [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a string or a list of strings, got {value!r}")
        return value
    if kind == "auto":
        if isinstance(value, str):
            if value.strip().lower() != "auto":
                _parse(float, value, "'auto' or a number")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be 'auto' or a number, got {value!r}")
        return repr(float(value))
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return Path(value) if kind == "path" else value


def _parse(kind: type, text: str, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"must be {what}, got {text!r}") from None


def setting_kind(key: str) -> str:
    return BY_KEY[key].kind


def to_config_toml(values: dict[str, Any], keys: list[str]) -> str:
    """The settings ``keys`` of ``values`` as a TOML document ``--config`` reads back."""
    document: dict[str, Any] = {}
    for key in keys:
        value = values[BY_KEY[key].param]
        if isinstance(value, Path):
            value = str(value.absolute())  # the file may be read from another folder
        if setting_kind(key) == "auto" and value != "auto":
            value = float(value)
        document[key] = value
    return to_toml(document)
