"""``linreg predict`` and ``linreg generate`` after their options are parsed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
) -> None:
    from regression.predict import predict_file

    if out is not None and out.suffix.lower() not in PREDICTION_FORMATS:
        raise ConfigError("out", f"must end in {' or '.join(PREDICTION_FORMATS)}", str(out))
    if confidence is not None and not intervals:
        raise ConfigError("confidence", "sets the level of --intervals; add --intervals", None)
    result = predict_file(model, data, target, intervals=intervals, confidence=confidence)
    if result.ignored:
        output.warn(f"ignoring columns the model does not use: {', '.join(result.ignored)}")
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
            document["predictions"] = [float(p) for p in result.predictions]
            if result.intervals is not None:
                document["intervals"] = {
                    name: [float(v) for v in values]
                    for name, values in columns.items()
                    if name != "prediction"
                }
        print(artifacts.to_json(document))
        return
    if out is None:
        sys.stdout.write(prediction_bytes(Path("stdout.csv"), columns).decode())
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
    rows = zip(*(values.tolist() for values in columns.values()), strict=True)
    lines = [",".join(columns), *(",".join(map(repr, row)) for row in rows)]
    return ("\n".join(lines) + "\n").encode()


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
