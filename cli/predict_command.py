"""``linreg predict`` and ``linreg generate`` after their options are parsed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from regression import artifacts
from regression.config import TrainConfig
from regression.errors import ConfigError

from . import output

PREDICTION_FORMATS = (".csv", ".npy")
DATA_FORMATS = (".csv", ".tsv", ".npy", ".npz")


def run_predict(
    model: Path, *, data: Path, out: Path | None, target: str | None, json_output: bool
) -> None:
    from regression.predict import predict_file

    if out is not None and out.suffix.lower() not in PREDICTION_FORMATS:
        raise ConfigError("out", f"must end in {' or '.join(PREDICTION_FORMATS)}", str(out))
    result = predict_file(model, data, target)
    if result.ignored:
        output.warn(f"ignoring columns the model does not use: {', '.join(result.ignored)}")
    if out is not None:
        artifacts.write_bytes(out, prediction_bytes(out, result.predictions))
    metrics = result.fit.to_dict() if result.fit is not None else None
    if json_output:
        document: dict[str, object] = {
            "model": str(model),
            "data": str(data),
            "samples": int(result.predictions.shape[0]),
            "metrics": metrics,
            "out": str(out) if out is not None else None,
        }
        if out is None:
            document["predictions"] = [float(p) for p in result.predictions]
        print(artifacts.to_json(document))
        return
    if out is None:
        sys.stdout.write(prediction_bytes(Path("stdout.csv"), result.predictions).decode())
    if metrics is not None:
        line = "  ".join(f"{key} {output.fmt(value)}" for key, value in metrics.items())
        # with the predictions on stdout, the metrics go to stderr to keep the CSV clean
        print(line, file=sys.stdout if out is not None else sys.stderr)


def prediction_bytes(path: Path, predictions: np.ndarray) -> bytes:
    if path.suffix.lower() == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, predictions)
        return buffer.getvalue()
    return ("prediction\n" + "".join(f"{p!r}\n" for p in predictions.tolist())).encode()


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
