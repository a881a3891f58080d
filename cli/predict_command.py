"""``linreg predict`` and ``linreg generate`` after their options are parsed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from regression import artifacts
from regression.config import TrainConfig
from regression.errors import ConfigError

from . import output

if TYPE_CHECKING:
    from regression.predict import Prediction

PREDICTION_FORMATS = (".csv", ".npy")
DATA_FORMATS = (".csv", ".tsv", ".npy", ".npz")


def run_predict(
    model: Path,
    *,
    data: Path,
    out: Path | None,
    target: str | None,
    json_output: bool,
    intervals: bool = False,
    confidence: float | None = None,
    unknown_level: str = "error",
    data_format: str | None = None,
) -> None:
    from regression.predict import predict_file

    if out is not None and out.suffix.lower() not in PREDICTION_FORMATS:
        raise ConfigError("out", f"must end in {' or '.join(PREDICTION_FORMATS)}", str(out))
    if confidence is not None and not intervals:
        raise ConfigError("confidence", "sets the level of --intervals; add --intervals", None)
    result = predict_file(
        model,
        data,
        target,
        intervals=intervals,
        confidence=confidence,
        unknown=unknown_level,
        fmt=data_format,
    )
    if result.ignored:
        output.warn(f"ignoring columns the model does not use: {', '.join(result.ignored)}")
    if result.unknown:
        output.warn(
            f"{result.unknown} cell(s) held levels not seen in training: predicted with "
            "all-zero indicators, as the reference level (--unknown-level zero)"
        )
    if result.skipped:
        output.warn(
            f"{result.skipped} row(s) have a missing value and no prediction (the model was "
            "trained with --missing drop): their prediction is empty"
        )
    columns = prediction_columns(result)
    if out is not None:
        artifacts.write_bytes(out, prediction_bytes(out, columns))
    metrics = result.fit.to_dict() if result.fit is not None else None
    if json_output:
        document: dict[str, object] = {
            "model": str(model),
            "data": str(data),
            "samples": int(result.predictions.shape[0]),
            "metrics": metrics,
            "out": str(out) if out is not None else None,
            "confidence": result.intervals.confidence if result.intervals is not None else None,
        }
        if out is None:
            document["predictions"] = [_value(p) for p in result.predictions.tolist()]
            if result.intervals is not None:
                document["intervals"] = {
                    name: [_value(v) for v in values.tolist()]
                    for name, values in columns.items()
                    if name != "prediction"
                }
        print(artifacts.to_json(document))
        return
    if out is None:
        try:
            write_csv(sys.stdout, columns)
            sys.stdout.flush()
        except BrokenPipeError:  # raised past click, which would make it exit 1
            raise output.PipeClosed from None
    if metrics is not None:
        line = "  ".join(f"{key} {output.fmt(value)}" for key, value in metrics.items())
        # with the predictions on stdout, the metrics go to stderr to keep the CSV clean
        print(line, file=sys.stdout if out is not None else sys.stderr)


def prediction_columns(result: Prediction) -> dict[str, np.ndarray]:
    """``prediction``, and with intervals ``mean_lower``, ``mean_upper`` (the confidence
    interval of the mean response) and ``lower``, ``upper`` (the prediction interval)."""
    columns = {"prediction": result.predictions}
    bands = result.intervals
    if bands is not None:
        columns.update(
            mean_lower=bands.mean_lower,
            mean_upper=bands.mean_upper,
            lower=bands.lower,
            upper=bands.upper,
        )
    return columns


def prediction_bytes(path: Path, columns: dict[str, np.ndarray]) -> bytes:
    """CSV with a header row, or .npy: one column as a 1-D array, several as rows x columns
    in the CSV's column order."""
    if path.suffix.lower() == ".npy":
        import io

        values = list(columns.values())
        buffer = io.BytesIO()
        np.save(buffer, values[0] if len(values) == 1 else np.column_stack(values))
        return buffer.getvalue()
    import io

    text = io.StringIO()
    write_csv(text, columns)
    return text.getvalue().encode()


CSV_CHUNK_ROWS = 1 << 14


def write_csv(stream: IO[str], columns: dict[str, np.ndarray]) -> None:
    """The columns as CSV with a header row, written a few thousand rows at a time (a
    pipeline downstream sees the first rows early; a reader that goes away is noticed)."""
    stream.write(",".join(columns) + "\n")
    n = len(next(iter(columns.values())))
    for first in range(0, n, CSV_CHUNK_ROWS):
        parts = [values[first : first + CSV_CHUNK_ROWS].tolist() for values in columns.values()]
        rows = zip(*parts, strict=True)
        stream.write("".join(",".join(map(_cell, row)) + "\n" for row in rows))


def _cell(value: float) -> str:
    """A CSV cell: repr-exact, empty for a row without a prediction."""
    return "" if value != value else repr(value)


def _value(value: float) -> float | None:
    """A JSON number; null for a row without a prediction."""
    return None if value != value else value


def run_generate(config: TrainConfig, *, out: Path, quiet: bool) -> None:
    from regression.data import synthetic
    from regression.datafile import write_table

    if out.suffix.lower() not in DATA_FORMATS:
        raise ConfigError("out", f"must end in {', '.join(DATA_FORMATS)}", str(out))
    data = synthetic(config)
    names = (*data.feature_names, data.target_name)
    artifacts.write_bytes(out, write_table(out, data.X, data.y, names))
    if not quiet:
        print(f"wrote {data.samples} rows of {', '.join(names)} ({config.dtype}) to {out}")
