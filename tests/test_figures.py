"""plots.figures: the artists' data first, the file formats second."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

import plots.figures
from plots.figures import (
    FigureData,
    Line,
    figure_bytes,
    figure_format,
    regression_figure,
)

HEADERS = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def one_feature(n: int = 40, seed: int = 0) -> FigureData:
    rng = np.random.default_rng(seed)
    x = rng.random(n) * 3 - 1
    y = 2 * x + 1 + 0.1 * rng.normal(size=n)
    predicted = 1.9 * x + 1.05
    return FigureData(
        y=y,
        predicted=predicted,
        train_loss=np.array([4.0, 1.0, 0.3, 0.05, 0.02]),
        x=x,
        fitted=Line(1.9, 1.05, "SGD fit"),
        reference=Line(2.0, 1.0, "least squares"),
        x_label="height",
        y_label="weight",
    )


def several_features(n: int = 60) -> FigureData:
    rng = np.random.default_rng(1)
    y = rng.normal(size=n) * 5
    return FigureData(y=y, predicted=y + rng.normal(size=n), train_loss=np.linspace(2, 1, 80))


def scatter(ax: Axes) -> np.ndarray:
    collections = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(collections) == 1
    return np.asarray(collections[0].get_offsets())


# -- artists -------------------------------------------------------------------------------


def test_one_feature_panels() -> None:
    data = one_feature()
    fig = regression_figure(data)
    assert isinstance(fig, Figure)
    fit_ax, loss_ax, resid_ax = fig.axes
    assert [ax.get_title() for ax in (fit_ax, loss_ax, resid_ax)] == [
        "Data and fitted line",
        "Loss",
        "Residuals",
    ]
    np.testing.assert_array_equal(scatter(fit_ax), np.column_stack([data.x, data.y]))
    fitted, reference = fit_ax.lines
    ends = np.array([data.x.min(), data.x.max()])
    np.testing.assert_allclose(fitted.get_xydata(), np.column_stack([ends, 1.9 * ends + 1.05]))
    np.testing.assert_allclose(reference.get_xydata(), np.column_stack([ends, 2 * ends + 1]))
    assert fitted.get_label() == "SGD fit" and reference.get_label() == "least squares"
    assert reference.get_linestyle() == "--"
    assert fit_ax.get_xlabel() == "height" and fit_ax.get_ylabel() == "weight"
    legend = fit_ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["data", "SGD fit", "least squares"]


def test_without_a_reference_line_only_the_fit_is_drawn() -> None:
    data = one_feature()
    only_fit = FigureData(
        y=data.y, predicted=data.predicted, train_loss=data.train_loss, x=data.x, fitted=data.fitted
    )
    fig = regression_figure(only_fit)
    assert len(fig.axes[0].lines) == 1


def test_loss_panel_is_on_a_log_scale() -> None:
    data = one_feature()
    loss_ax = regression_figure(data).axes[1]
    assert loss_ax.get_yscale() == "log"
    (line,) = loss_ax.lines
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(line.get_ydata(), data.train_loss)
    assert line.get_marker() == "."  # few epochs: each one marked


def test_loss_of_zero_keeps_a_linear_scale() -> None:
    data = one_feature()
    zero = FigureData(y=data.y, predicted=data.predicted, train_loss=np.array([1.0, 0.0]))
    assert regression_figure(zero).axes[1].get_yscale() == "linear"


def test_long_loss_curve_has_no_markers() -> None:
    loss_ax = regression_figure(several_features()).axes[1]
    assert loss_ax.lines[0].get_marker() in ("None", "", None)
    np.testing.assert_array_equal(loss_ax.lines[0].get_xdata(), np.arange(1, 81))


def test_residual_panel() -> None:
    data = one_feature()
    resid_ax = regression_figure(data).axes[2]
    np.testing.assert_allclose(
        scatter(resid_ax), np.column_stack([data.predicted, data.y - data.predicted]), rtol=1e-15
    )
    (zero,) = resid_ax.lines
    np.testing.assert_array_equal(zero.get_ydata(), [0.0, 0.0])
    assert resid_ax.get_xlabel() == "predicted weight"


def test_several_features_show_predicted_against_actual() -> None:
    data = several_features()
    fit_ax = regression_figure(data).axes[0]
    np.testing.assert_array_equal(scatter(fit_ax), np.column_stack([data.y, data.predicted]))
    (diagonal,) = fit_ax.lines
    ends = [data.y.min(), data.y.max()]
    np.testing.assert_array_equal(diagonal.get_xydata(), np.column_stack([ends, ends]))
    assert fit_ax.get_xlabel() == "actual y" and fit_ax.get_ylabel() == "predicted y"
    assert fit_ax.get_title() == "Predicted against actual"


@pytest.mark.parametrize("n", [301, 1000])
def test_large_data_is_subsampled(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(plots.figures, "MAX_POINTS", 300)
    data = one_feature(n)
    fig_a, fig_b = regression_figure(data), regression_figure(data)
    points = scatter(fig_a.axes[0])
    assert points.shape == (300, 2)
    # a seeded subset of the real points, in their original order
    index = np.array([np.flatnonzero(data.x == px)[0] for px in points[:, 0]])
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(points[:, 1], data.y[index])
    np.testing.assert_array_equal(scatter(fig_b.axes[0]), points)
    residuals = scatter(fig_a.axes[2])
    np.testing.assert_allclose(
        residuals, np.column_stack([data.predicted[index], (data.y - data.predicted)[index]])
    )
    # the lines still span all the data, not only the points drawn
    np.testing.assert_array_equal(fig_a.axes[0].lines[0].get_xdata(), [data.x.min(), data.x.max()])


def test_data_at_the_limit_is_drawn_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots.figures, "MAX_POINTS", 300)
    data = one_feature(300)
    np.testing.assert_array_equal(
        scatter(regression_figure(data).axes[0]), np.column_stack([data.x, data.y])
    )


# -- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("plot.png", "png"), ("a/b/fit.SVG", "svg"), ("report.pdf", "pdf"), ("x.Png", "png")],
)
def test_figure_format_from_the_suffix(name: str, fmt: str) -> None:
    assert figure_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["plot.jpg", "plot", "plot.png.bak", "plot.eps", ".png"])
def test_figure_format_refuses_other_suffixes(name: str) -> None:
    with pytest.raises(ValueError, match="unsupported figure format"):
        figure_format(Path(name))


@pytest.fixture(scope="module")
def figure() -> Figure:
    return regression_figure(one_feature())


def test_png_bytes(figure: Figure) -> None:
    data = figure_bytes(figure, "png")
    assert data.startswith(HEADERS["png"])
    # IHDR: width and height in pixels at 100 dpi for the 15 x 4.5 inch figure
    assert data[12:16] == b"IHDR"
    assert int.from_bytes(data[16:20], "big") == 1500
    assert int.from_bytes(data[20:24], "big") == 450
    assert b"Software" not in data  # no software stamp
    assert data.rstrip().endswith(b"IEND\xaeB`\x82")


def test_svg_bytes(figure: Figure) -> None:
    data = figure_bytes(figure, "svg")
    root = ET.parse(io.BytesIO(data)).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == "1080pt" and root.get("height") == "324pt"
    assert b"<dc:date>" not in data  # no date


def test_pdf_bytes(figure: Figure) -> None:
    data = figure_bytes(figure, "pdf")
    assert data.startswith(HEADERS["pdf"])
    assert data.rstrip().endswith(b"%%EOF")
    assert re.search(rb"/MediaBox \[\s*0 0 1080 324\s*\]", data)


def test_png_bytes_are_deterministic(figure: Figure) -> None:
    first = figure_bytes(figure, "png")
    assert figure_bytes(figure, "png") == first
    assert figure_bytes(regression_figure(one_feature()), "png") == first
    assert figure_bytes(regression_figure(one_feature(seed=1)), "png") != first


def test_svg_bytes_are_deterministic() -> None:
    # a fresh figure each time, as in two runs (SVG ids are salted with a fixed salt)
    first = figure_bytes(regression_figure(one_feature()), "svg")
    assert figure_bytes(regression_figure(one_feature()), "svg") == first


def test_pdf_bytes_are_deterministic(figure: Figure, monkeypatch: pytest.MonkeyPatch) -> None:
    # two saves at different times, simulated through the reproducible-builds clock
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    first = figure_bytes(figure, "pdf")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert figure_bytes(figure, "pdf") == first


def test_pdf_bytes_are_identical_within_the_same_clock(
    figure: Figure, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert figure_bytes(figure, "pdf") == figure_bytes(figure, "pdf")


def test_unknown_format_is_refused(figure: Figure) -> None:
    with pytest.raises(ValueError):
        figure_bytes(figure, "bmp")
