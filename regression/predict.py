"""Predictions from a saved model for the rows of a data file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import ModelFile, load_model
from .datafile import Table, read_table, target_index
from .errors import ConfigError, DataError, ModelFileError
from .metrics import Fit, fit_metrics
from .statistics import Intervals, prediction_intervals


@dataclass(frozen=True)
class Prediction:
    predictions: np.ndarray  # float64, one per row
    fit: Fit | None  # against the target column, when the file has one
    model: ModelFile
    ignored: tuple[str, ...]  # columns of the file that are neither features nor the target
    intervals: Intervals | None = None  # when asked for


def predict_file(
    model_path: Path,
    data_path: Path,
    target: str | None = None,
    *,
    intervals: bool = False,
    confidence: float | None = None,
) -> Prediction:
    """Load the model, match the file's columns to its features, predict in float64.

    Files with a header are matched by the feature names recorded in the model (any order;
    the target is ``target`` or the model's target name, when present). Files without one
    are matched by position: D columns are the features, D + 1 are the features and the
    target (the last column unless ``target`` says otherwise).

    With ``intervals``, each prediction gets the confidence interval of the mean response
    and the prediction interval of the least-squares fit at its row (see
    ``statistics.prediction_intervals``), at level ``confidence`` (default: the level the
    model was trained with).
    """
    if confidence is not None and not 0 < confidence < 1:
        raise ConfigError("confidence", "must be in (0, 1)", confidence)
    model = load_model(model_path)
    if intervals and model.intervals is None:
        raise ModelFileError(
            f"{model_path} has no interval data: its least-squares fit had no residual degrees "
            "of freedom or linearly dependent features, or it was written by an older linreg; "
            "retrain with this version (and more rows than features + 1) for --intervals"
        )
    table = read_table(data_path, min_rows=1)
    X, y, ignored = _match(model, table, target)
    predictions = model.predict(X)
    bands = None
    if intervals and model.intervals is not None:
        level = confidence if confidence is not None else model.intervals.confidence
        bands = prediction_intervals(model.intervals, X, predictions, level)
    return Prediction(
        predictions=predictions,
        fit=fit_metrics(y, predictions) if y is not None else None,
        model=model,
        ignored=ignored,
        intervals=bands,
    )


def _match(
    model: ModelFile, table: Table, target: str | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    d = model.features
    if table.values is None:  # an .npz with arrays X and y
        assert table.X is not None
        if table.X.shape[1] != d:
            raise DataError(
                f"{table.path}: array X has {table.X.shape[1]} columns; the model expects {d} "
                f"features ({', '.join(model.feature_names)})"
            )
        return table.X, table.y, ()
    values = table.values
    if table.names is None:
        if table.columns == d and target is None:
            return values, None, ()
        if table.columns == d + 1:
            index = target_index(table, target)
            keep = [j for j in range(table.columns) if j != index]
            return values[:, keep], values[:, index], ()
        raise DataError(
            f"{table.path}: {table.columns} columns; the model expects {d} feature columns "
            f"({', '.join(model.feature_names)}), or {d + 1} with the target"
        )
    names = table.names
    missing = [name for name in model.feature_names if name not in names]
    if missing:
        raise DataError(
            f"{table.path} does not match the model: expected feature columns "
            f"{', '.join(model.feature_names)}; found {', '.join(names)} "
            f"(missing {', '.join(missing)})"
        )
    columns = [names.index(name) for name in model.feature_names]
    y = None
    target_col: int | None = None
    if target is not None:
        target_col = target_index(table, target)
    elif model.target_name in names and model.target_name not in model.feature_names:
        target_col = names.index(model.target_name)
    if target_col is not None:
        y = values[:, target_col]
    ignored = tuple(name for j, name in enumerate(names) if j not in columns and j != target_col)
    return values[:, columns], y, ignored
