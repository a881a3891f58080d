"""The run's figure: the fit, the loss curve and the residuals, built on ``matplotlib.figure``
objects (no pyplot, so no global figure registry and no display needed)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import FORMATS

MAX_POINTS = 5000  # scatter points drawn; larger data sets are subsampled (seeded)


@dataclass(frozen=True)
class Line:
    """y = slope * x + intercept, labelled."""

    slope: float
    intercept: float
    label: str


@dataclass(frozen=True)
class FigureData:
    y: np.ndarray  # the target, (N,)
    predicted: np.ndarray  # the model's predictions, (N,)
    train_loss: np.ndarray  # one value per epoch
    x: np.ndarray | None = None  # the single feature, when there is exactly one
    fitted: Line | None = None  # the trained line (one feature)
    reference: Line | None = None  # the least-squares line (one feature)
    x_label: str = "x"
    y_label: str = "y"


def regression_figure(data: FigureData) -> Figure:
    """Three panels: the data with the fitted and least-squares lines (one feature) or
    predicted against actual (several), the loss per epoch on a log scale, the residuals."""
    fig = Figure(figsize=(15, 4.5))
    # fixed margins: a layout engine (constrained, tight) would cost a third of the drawing
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.12, top=0.92, wspace=0.22)
    fit_ax, loss_ax, resid_ax = fig.subplots(1, 3)
    shown = _subsample(len(data.y))
    y, predicted = data.y[shown], data.predicted[shown]

    if data.x is not None and data.fitted is not None:
        x = data.x[shown]
        fit_ax.scatter(x, y, s=8, alpha=0.6, label="data")
        ends = np.array([np.min(data.x), np.max(data.x)])
        fit_ax.plot(
            ends,
            data.fitted.slope * ends + data.fitted.intercept,
            color="red",
            label=data.fitted.label,
        )
        if data.reference is not None:
            fit_ax.plot(
                ends,
                data.reference.slope * ends + data.reference.intercept,
                color="black",
                linestyle="--",
                label=data.reference.label,
            )
        fit_ax.set_xlabel(data.x_label)
        fit_ax.set_ylabel(data.y_label)
        fit_ax.set_title("Data and fitted line")
    else:
        fit_ax.scatter(y, predicted, s=8, alpha=0.6, label="samples")
        ends = np.array([np.min(data.y), np.max(data.y)])
        fit_ax.plot(ends, ends, color="red", label="predicted = actual")
        fit_ax.set_xlabel(f"actual {data.y_label}")
        fit_ax.set_ylabel(f"predicted {data.y_label}")
        fit_ax.set_title("Predicted against actual")
    fit_ax.legend()

    epochs = np.arange(1, len(data.train_loss) + 1)
    loss_ax.plot(epochs, data.train_loss, marker="." if len(epochs) < 50 else None)
    if np.all(np.asarray(data.train_loss) > 0):
        loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (MSE)")
    loss_ax.set_title("Loss")

    resid_ax.scatter(predicted, y - predicted, s=8, alpha=0.6)
    resid_ax.axhline(0.0, color="red", linewidth=1)
    resid_ax.set_xlabel(f"predicted {data.y_label}")
    resid_ax.set_ylabel("residual (actual - predicted)")
    resid_ax.set_title("Residuals")
    return fig


def _subsample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def figure_format(path: Path) -> str:
    """The file format for ``path``'s suffix; ValueError for one we do not write."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported figure format {Path(path).suffix or '(none)'!r}")
    return fmt


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as a ``fmt`` file (png, svg or pdf); the caller writes it atomically."""
    import matplotlib

    buffer = io.BytesIO()
    # no dates, software stamps or random ids: the same run gives the same file
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    if fmt not in metadata:
        raise ValueError(f"unsupported figure format {fmt!r}; use png, svg or pdf")
    with matplotlib.rc_context({"svg.hashsalt": "linreg"}):
        fig.savefig(buffer, format=fmt, dpi=100, metadata=metadata[fmt])
    return buffer.getvalue()


def warm_up() -> None:
    """Draw a throw-away figure once: loads the fonts and the renderer, so that the real
    figure, drawn later, takes a fraction of the time."""
    points = np.linspace(0.0, 1.0, 3)
    figure_bytes(
        regression_figure(FigureData(y=points, predicted=points, train_loss=points + 1.0)), "png"
    )
