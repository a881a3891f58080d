"""Predictions from a saved model for the rows of a data file (or of stdin)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .artifacts import ModelFile, load_model
from .datafile import columns_of, read_table
from .errors import ConfigError, DataError, ModelFileError
from .metrics import Fit, fit_metrics
from .statistics import Intervals, prediction_intervals
from .tables import (
    STDIN,
    UNKNOWN_POLICIES,
    Batch,
    CellProblem,
    Coding,
    Encoding,
    Header,
    TextFile,
    cell_message,
    column_index,
    locate_problem,
    open_text,
    read_batch,
    read_header,
    text_format,
)


@dataclass(frozen=True)
class Prediction:
    predictions: np.ndarray  # float64, one per row; NaN for a row that has none
    fit: Fit | None  # against the target column, when the file has one
    model: ModelFile
    ignored: tuple[str, ...]  # columns of the file that are neither features nor the target
    intervals: Intervals | None = None  # when asked for
    # rows without a prediction (a missing cell, for a model trained with --missing drop)
    skipped: int = 0
    unknown: int = 0  # cells of levels not seen in training, coded as the reference level


def model_encoding(model: ModelFile) -> Encoding:
    """The model's encoding; for a model of plain numbers (or from before encodings were
    recorded), one that takes each feature from the column of its name."""
    if model.encoding is not None:
        return Encoding.from_json(model.encoding)
    columns = tuple(Coding(name=name, index=k) for k, name in enumerate(model.feature_names))
    return Encoding(
        columns=columns,
        target=model.target_name,
        target_index=len(columns),
        width=len(columns) + 1,
        headed=True,
    )


def read_for_model(
    model: ModelFile,
    data_path: Path | str,
    target: str | None = None,
    *,
    unknown: str = "error",
    fmt: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int, tuple[str, ...]]:
    """A data file's rows encoded as the model's training rows were (its columns matched by
    name or position, see ``predict_file``): the features (NaN rows where a row has no
    value under --missing drop), the target (None without its column), which rows have
    values, the cells of unseen levels, and the columns ignored."""
    encoding = model_encoding(model)
    name = str(data_path)
    if name == STDIN or text_format(name, fmt) is not None:
        file = open_text(name, fmt)
        try:
            header = read_header(file)
            matched, target_col, ignored = _match(encoding, header, file.label, target)
            text = _text_columns(matched, header, target_col)
            try:
                batch = read_batch(
                    file, header, text, matched.na_values, numeric=_used(matched, target_col)
                )
                X, y, kept, unseen = _encode(matched, batch, target_col, unknown)
            except CellProblem as problem:
                locate_problem(file, header, problem, matched.na_values)
                raise AssertionError("unreachable") from None
        finally:
            file.close()
    else:
        if fmt is not None:
            raise DataError(f"--format {fmt} is for text data (CSV or TSV); {name} is not text")
        table = read_table(Path(name), min_rows=1)
        if table.values is None and table.X is not None:  # an .npz with arrays X and y
            if table.X.shape[1] != len(encoding.columns):
                raise DataError(
                    f"{table.path}: array X has {table.X.shape[1]} columns; the model expects "
                    f"{len(encoding.columns)} features ({', '.join(model.feature_names)})"
                )
            assert table.y is not None
            table = replace(table, X=None, y=None, values=np.column_stack([table.X, table.y]))
            target = target if target is not None else str(table.columns - 1)
        header, batch = columns_of(table)
        matched, target_col, ignored = _match(encoding, header, str(table.path), target)
        try:
            X, y, kept, unseen = _encode(matched, batch, target_col, unknown)
        except CellProblem as problem:
            at = (
                f"{table.path} data row {problem.row + 1}"
                if problem.row is not None
                else str(table.path)
            )
            raise DataError(cell_message(problem, at, header, None)) from None
    return X, y, kept, unseen, ignored


def predict_file(
    model_path: Path,
    data_path: Path | str,
    target: str | None = None,
    *,
    intervals: bool = False,
    confidence: float | None = None,
    unknown: str = "error",
    fmt: str | None = None,
) -> Prediction:
    """Load the model, find its columns in the data, encode them as in training (levels,
    fill values), predict in float64.

    Files with a header are matched by the column names recorded in the model (any order,
    other columns ignored; the target is ``target`` or the model's target name, when
    present). Files without one are matched by position: as many columns as the model's
    are its columns, one more has the target (the last unless ``target`` says otherwise),
    as many as the training file are that file's.

    ``unknown`` (``zero``): a categorical level not seen in training gets all-zero
    indicators (the reference level) instead of an error. With ``intervals``, each
    prediction gets the confidence interval of the mean response and the prediction
    interval of the least-squares fit at its row, at level ``confidence`` (default: the
    level the model was trained with).
    """
    if confidence is not None and not 0 < confidence < 1:
        raise ConfigError("confidence", "must be in (0, 1)", confidence)
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError("unknown_level", f"must be one of {', '.join(UNKNOWN_POLICIES)}", unknown)
    model = load_model(model_path)
    if intervals and model.intervals is None:
        raise ModelFileError(
            f"{model_path} has no interval data: its least-squares fit had no residual degrees "
            "of freedom or linearly dependent features, or it was written by an older linreg; "
            "retrain with this version (and more rows than features + 1) for --intervals"
        )
    X, y, kept, unseen, ignored = read_for_model(model, data_path, target, unknown=unknown, fmt=fmt)
    predictions = np.full(X.shape[0], np.nan)
    predictions[kept] = model.predict(X[kept])
    bands = None
    if intervals and model.intervals is not None:
        level = confidence if confidence is not None else model.intervals.confidence
        full = prediction_intervals(model.intervals, X[kept], predictions[kept], level)
        bands = _spread(full, kept)
    fit = None
    if y is not None:
        scored = kept & ~np.isnan(y)
        if scored.any():
            fit = fit_metrics(y[scored], predictions[scored])
    return Prediction(
        predictions=predictions,
        fit=fit,
        model=model,
        ignored=ignored,
        intervals=bands,
        skipped=int((~kept).sum()),
        unknown=unseen,
    )


def _spread(bands: Intervals, kept: np.ndarray) -> Intervals:
    """Intervals of the kept rows, placed at their rows (NaN elsewhere)."""

    def place(values: np.ndarray) -> np.ndarray:
        out = np.full(kept.shape[0], np.nan)
        out[kept] = values
        return out

    return replace(
        bands,
        mean_lower=place(bands.mean_lower),
        mean_upper=place(bands.mean_upper),
        lower=place(bands.lower),
        upper=place(bands.upper),
    )


def _match(
    encoding: Encoding, header: Header, label: str, target: str | None
) -> tuple[Encoding, int | None, tuple[str, ...]]:
    """The encoding with its columns' positions in this file, the target's position (None:
    not in the file), and the names of the columns neither uses."""
    k = len(encoding.columns)
    if header.names is None:
        if header.width == k and target is None:
            positions, target_col = list(range(k)), None
        elif header.width == k + 1:
            target_col = column_index(header, label, "--target", target) if target else k
            positions = [j for j in range(header.width) if j != target_col]
        elif header.width == encoding.width:
            positions = [c.index for c in encoding.columns]
            target_col = (
                column_index(header, label, "--target", target) if target else encoding.target_index
            )
        else:
            raise DataError(
                f"{label}: {header.width} columns; the model expects {k} feature columns "
                f"({', '.join(c.name for c in encoding.columns)}), or {k + 1} with the target"
            )
        columns = tuple(
            replace(c, index=j) for c, j in zip(encoding.columns, positions, strict=True)
        )
        return replace(encoding, columns=columns), target_col, ()
    names = header.names
    absent = [c.name for c in encoding.columns if c.name not in names]
    if absent:
        raise DataError(
            f"{label} does not match the model: expected feature columns "
            f"{', '.join(c.name for c in encoding.columns)}; found {', '.join(names)} "
            f"(missing {', '.join(absent)})"
        )
    columns = tuple(replace(c, index=names.index(c.name)) for c in encoding.columns)
    sources = {c.name for c in encoding.columns}
    target_col = None
    if target is not None:
        target_col = column_index(header, label, "--target", target)
    elif encoding.target in names and encoding.target not in sources:
        target_col = names.index(encoding.target)
    used = {c.index for c in columns} | ({target_col} if target_col is not None else set())
    ignored = tuple(name for j, name in enumerate(names) if j not in used)
    return replace(encoding, columns=columns), target_col, ignored


def _used(encoding: Encoding, target_col: int | None) -> set[int]:
    """The columns that must hold numbers."""
    numeric = {c.index for c in encoding.columns if not c.categorical}
    return numeric | ({target_col} if target_col is not None else set())


def _text_columns(encoding: Encoding, header: Header, target_col: int | None) -> set[int]:
    """The columns read as text: the categorical ones, and those the model does not use
    (whatever they hold)."""
    used = _used(encoding, target_col)
    return {j for j in range(header.width) if j not in used}


def _encode(
    encoding: Encoding, batch: Batch, target_col: int | None, unknown: str
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """Features (NaN rows where a row has no prediction), the target, which rows have a
    prediction, and the cells of unseen levels."""
    from .tables import encode_batch

    if not batch or len(batch[0]) == 0:
        return np.zeros((0, encoding.features)), None, np.zeros(0, dtype=bool), 0
    part = encode_batch(encoding, batch, 0, target=None, unknown=unknown, keep_rows=True)
    assert part.kept is not None
    y = None
    if target_col is not None:
        y = batch[target_col]
        infinite = np.isinf(y)
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise CellProblem("nonfinite", target_col, row, repr(float(y[row])))
    return part.X, y, part.kept, part.unknown


__all__ = ["Prediction", "TextFile", "model_encoding", "predict_file"]
