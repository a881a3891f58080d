"""TrainConfig: validation at the boundary, weight broadcast, TOML round trip, --lr parsing."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regression.config import (
    NA_VALUES,
    TABLE_FIELDS,
    TrainConfig,
    field_names,
    parse_lr,
    parse_momentum,
    to_toml,
)
from regression.errors import ConfigError, RegressionError

# (field, bad value, the rule the error must state)
INVALID = [
    ("samples", 0, "must be >= 1"),
    ("samples", -5, "must be >= 1"),
    ("samples", 1.5, "must be an integer"),
    ("samples", True, "must be an integer"),
    ("samples", "100", "must be an integer"),
    ("features", 0, "must be >= 1"),
    ("seed", -1, "must be >= 0"),
    ("epochs", 0, "must be >= 1"),
    ("batch_size", -1, "must be >= 0"),
    ("patience", 0, "must be >= 1"),
    ("bias", math.inf, "must be finite"),
    ("bias", math.nan, "must be finite"),
    ("bias", "1", "must be a number"),
    ("noise", -0.1, "must be >= 0"),
    ("noise", math.inf, "must be finite"),
    ("weight_decay", -1e-9, "must be >= 0"),
    ("tol", -1.0, "must be >= 0"),
    ("momentum", 1.0, "must be in [0, 1)"),
    ("momentum", -0.5, "must be in [0, 1)"),
    ("momentum", False, "must be a number"),
    ("lr", 0.0, "must be > 0"),
    ("lr", -0.01, "must be > 0"),
    ("lr", math.nan, "must be finite"),
    ("dtype", "float16", "must be one of float32, float64"),
    ("device", "gpu", "must be auto, cpu, cuda, cuda:N or mps"),
    ("device", "cuda:x", "must be auto, cpu, cuda, cuda:N or mps"),
    ("device", "CPU", "must be auto, cpu, cuda, cuda:N or mps"),
    ("val_fraction", 1.0, "must be in [0, 1)"),
    ("val_fraction", -0.1, "must be in [0, 1)"),
    ("data", "", "must be a non-empty string"),
    ("target", 3, "must be a non-empty string"),
]


@pytest.mark.parametrize(("option", "value", "rule"), INVALID)
def test_every_rule_names_option_rule_and_value(option: str, value: Any, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{option: value})
    error = info.value
    assert isinstance(error, RegressionError)
    assert error.option == option
    assert error.rule == rule
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(error.value)
    else:
        assert error.value == value
        assert type(error.value) is type(value)
    message = str(error)
    assert message.startswith(f"{option} {rule}")
    assert repr(error.value) in message


def test_weight_count_must_match_features() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(features=3, weight=(1.0, 2.0))
    assert info.value.option == "weight"
    assert "--features 3" in info.value.rule
    assert info.value.value == "2 values"


def test_weight_must_be_finite() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(features=2, weight=(1.0, math.inf))
    assert info.value.option == "weight"
    assert info.value.rule == "must be finite"
    assert info.value.value == [1.0, math.inf]


@pytest.mark.parametrize(
    "values",
    [
        {"samples": 1, "features": 1, "seed": 0, "epochs": 1, "patience": 1},
        {"batch_size": 0, "noise": 0.0, "tol": 0.0, "weight_decay": 0.0, "momentum": 0.0},
        {"momentum": 0.999, "lr": 1e-12, "bias": -1e300},
        {"device": "cpu"},
        {"device": "cuda"},
        {"device": "cuda:7"},
        {"device": "mps"},
        {"dtype": "float64"},
    ],
)
def test_boundary_values_are_accepted(values: dict[str, Any]) -> None:
    config = TrainConfig(**values)
    for key, value in values.items():
        assert getattr(config, key) == value


def test_int_for_a_float_field_is_stored_as_float() -> None:
    config = TrainConfig(bias=3, noise=0, lr=1, weight=(2,))
    assert config.bias == 3.0 and type(config.bias) is float
    assert type(config.noise) is float
    assert type(config.lr) is float
    assert config.weight == (2.0,) and type(config.weight[0]) is float


def test_config_is_frozen() -> None:
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.samples = 5  # type: ignore[misc]


def test_one_weight_is_broadcast_to_every_feature() -> None:
    config = TrainConfig(features=4, weight=(1.5,))
    assert config.weight == (1.5,)
    assert config.weights == (1.5, 1.5, 1.5, 1.5)


def test_default_weight_is_broadcast() -> None:
    assert TrainConfig(features=3).weights == (2.0, 2.0, 2.0)


def test_one_weight_per_feature_is_kept_in_order() -> None:
    config = TrainConfig(features=3, weight=[1, -2.5, 3])
    assert config.weight == (1.0, -2.5, 3.0)
    assert config.weights == (1.0, -2.5, 3.0)


def test_to_dict_has_every_field_and_plain_values() -> None:
    config = TrainConfig(features=2, weight=(1.0, 2.0))
    values = config.to_dict()
    # a synthetic run: the data file's options play no part, and are left out (and no
    # --init-model: TOML has no null)
    left_out = (*TABLE_FIELDS, "format", "init_model")
    assert list(values) == [n for n in field_names() if n not in left_out]
    assert TrainConfig(init_model="/m.safetensors").to_dict()["init_model"] == "/m.safetensors"
    assert values["weight"] == [1.0, 2.0]
    assert values["lr"] == "auto"
    assert TrainConfig(lr=0.25).to_dict()["lr"] == 0.25


def test_to_dict_of_a_file_run_leaves_out_the_synthetic_options() -> None:
    values = TrainConfig(data="train.csv", target="y", samples=7).to_dict()
    assert values["data"] == "train.csv" and values["target"] == "y"
    for name in ("samples", "weight", "bias", "noise"):
        assert name not in values
    assert values["features"] == []  # --features: the data file's columns (all, here)
    assert values["missing"] == "error" and values["na_values"] == list(NA_VALUES)
    assert tomllib.loads(to_toml(values)) == values


def _from_dict(values: dict[str, Any]) -> TrainConfig:
    values = dict(values)
    values["lr"] = parse_lr(values["lr"]) if isinstance(values["lr"], str) else values["lr"]
    if isinstance(values["momentum"], str):
        values["momentum"] = parse_momentum(values["momentum"])
    values["weight"] = tuple(values["weight"])
    return TrainConfig(**values)


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(lr=0.05, dtype="float64", device="cuda:1", precondition="none"),
        TrainConfig(features=3, weight=(1.0, -2.0, 1e-300), bias=-0.0, tol=1e-06, noise=0.0),
        TrainConfig(lr=1e-300, bias=1.7976931348623157e308, momentum=0.9, weight_decay=1e16),
    ],
)
def test_toml_round_trip(config: TrainConfig) -> None:
    text = to_toml(config.to_dict())
    parsed = tomllib.loads(text)
    assert parsed == {k: v for k, v in config.to_dict().items() if v is not None}
    assert _from_dict(parsed) == config


@settings(max_examples=60, deadline=None)
@given(
    features=st.integers(1, 4),
    data=st.data(),
    lr=st.one_of(st.none(), st.floats(min_value=1e-300, max_value=1e300)),
    bias=st.floats(allow_nan=False, allow_infinity=False),
    noise=st.floats(min_value=0, max_value=1e300),
    tol=st.floats(min_value=0, max_value=1e10),
    momentum=st.floats(min_value=0, max_value=1, exclude_max=True),
    precondition=st.sampled_from(["auto", "none", "standardize", "whiten"]),
    dtype=st.sampled_from(["float32", "float64"]),
    device=st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "mps"]),
)
def test_toml_round_trip_property(
    features, data, lr, bias, noise, tol, momentum, precondition, dtype, device
) -> None:
    weight = data.draw(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False),
            min_size=1,
            max_size=1,
        )
        | st.lists(
            st.floats(allow_nan=False, allow_infinity=False),
            min_size=features,
            max_size=features,
        )
    )
    config = TrainConfig(
        features=features,
        weight=tuple(weight),
        lr=lr,
        bias=bias,
        noise=noise,
        tol=tol,
        momentum=momentum,
        precondition=precondition,
        dtype=dtype,
        device=device,
    )
    parsed = tomllib.loads(to_toml(config.to_dict()))
    assert _from_dict(parsed) == config


def test_to_toml_leaves_out_none_and_rejects_unknown_types() -> None:
    assert to_toml({"a": 1, "b": None, "c": "x"}) == 'a = 1\nc = "x"\n'
    with pytest.raises(TypeError):
        to_toml({"a": object()})


@pytest.mark.parametrize("text", ['C:\\data "quoted"\n', "tab\there", "caf\u00e9", "a\x7fb"])
def test_to_toml_escapes_strings(text: str) -> None:
    values = {"path": text}
    assert tomllib.loads(to_toml(values)) == values


def test_to_toml_writes_characters_outside_the_bmp() -> None:
    values = {"path": "runs/\U0001f600"}
    assert tomllib.loads(to_toml(values)) == values


@pytest.mark.parametrize("text", ["auto", "AUTO", " Auto "])
def test_parse_lr_auto_is_none(text: str) -> None:
    assert parse_lr(text) is None


@pytest.mark.parametrize(("text", "value"), [("0.1", 0.1), ("1e-3", 0.001), (" 2 ", 2.0)])
def test_parse_lr_number(text: str, value: float) -> None:
    assert parse_lr(text) == value


@pytest.mark.parametrize("text", ["fast", "", "0.1.2", "1e"])
def test_parse_lr_rejects_text(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lr(text)
    assert info.value.option == "lr"
    assert info.value.rule == "must be 'auto' or a number > 0"
    assert info.value.value == text


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("-1", "must be > 0"),
        ("0", "must be > 0"),
        ("nan", "must be finite"),
        ("inf", "must be finite"),
    ],
)
def test_parsed_lr_range_is_checked_by_the_config(text: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(lr=parse_lr(text))
    assert info.value.option == "lr"
    assert info.value.rule == rule
