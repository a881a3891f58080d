"""``linreg runs`` and ``linreg compare``: what the run directories of a nightly job say.

Both read ``metrics.json`` files only (no torch, no model files), and never trust them: a
directory without one is an incomplete run, one whose file is not a linreg metrics document
(schema 1) is foreign, and both are listed as such instead of stopping the listing.
"""

from __future__ import annotations

import json
import math
import statistics as stdlib_statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from regression import safeio
from regression.artifacts import METRICS_FILE, to_json
from regression.errors import ConfigError, DataError, DriftDetected

from . import output

# run directory names that say when: the default runs/<UTC time>, and dates (`date +%F`)
NAME_TIMES = ("%Y%m%dT%H%M%SZ", "%Y-%m-%d", "%Y%m%d")
COEFFICIENTS_SHOWN = 3  # the first coefficients in a listing's row (intercept first)
# a metrics document is a few kilobytes per feature: one larger than this is not linreg's
MAX_METRICS_BYTES = 64 << 20


@dataclass(frozen=True)
class RunEntry:
    """One directory of a runs folder, as the listing shows it."""

    path: Path
    time: datetime
    status: str  # complete, incomplete (no metrics.json) or foreign (not linreg's)
    metrics: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        metrics = self.metrics or {}
        data = metrics.get("data") or {}
        train = metrics.get("train") or {}
        params = metrics.get("params")
        return {
            "path": str(self.path),
            "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": self.status,
            "data": data.get("source"),
            "samples": data.get("samples"),
            "r2": train.get("r2"),
            "optimality_gap": metrics.get("optimality_gap"),
            "converged": metrics.get("converged"),
            "update": metrics.get("update"),
            "coefficients": None if params is None else _coefficients(data, params),
        }


def _coefficients(data: dict[str, Any], params: dict[str, Any]) -> dict[str, float]:
    names = ["intercept", *data.get("feature_names", [])]
    values = [params.get("bias"), *params.get("weight", [])]
    return dict(zip(names, values, strict=False))


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A run directory's metrics document; None when it is not one of linreg's (schema 1
    with data, parameters and statistics). OSError when it cannot be read at all, DataError
    when it is not a regular file or larger than any metrics document (read within that
    bound, so a link to a device costs no memory)."""
    raw = safeio.read_bounded(path, limit=MAX_METRICS_BYTES, refuse=DataError)
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("schema") != 1:
        return None
    for key, kind in (("data", dict), ("params", dict), ("train", dict)):
        if not isinstance(document.get(key), kind):
            return None
    return document


def list_runs(folder: Path) -> list[RunEntry]:
    """The run directories of ``folder``, newest first (by the time in a default name, else
    by the directory's modification time); files and hidden entries are skipped."""
    if not folder.exists():
        raise DataError(f"{folder}: no such folder (linreg train writes its runs to ./runs)")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of run directories")
    entries = []
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    for child in children:
        if child.name.startswith(".") or not child.is_dir():
            continue
        metrics_path = child / METRICS_FILE
        metrics: dict[str, Any] | None = None
        try:  # a device, a FIFO or a folder named metrics.json is refused unread: foreign
            metrics = read_metrics(metrics_path)
            status = "complete" if metrics is not None else "foreign"
        except FileNotFoundError:
            status = "incomplete"
        except (OSError, DataError):
            status = "foreign"
        entries.append(RunEntry(child, _run_time(child), status, metrics))
    entries.sort(key=lambda entry: (entry.time, entry.path.name), reverse=True)
    return entries


def _run_time(path: Path) -> datetime:
    """The time in the directory's name (``runs/<UTC time>``, with ``-2`` ... for runs of
    the same second, or a date such as ``$(date +%F)`` gives), else its modification time."""
    for name in (path.name, path.name.rsplit("-", 1)[0]):
        for pattern in NAME_TIMES:
            try:
                return datetime.strptime(name, pattern).replace(tzinfo=UTC)
            except ValueError:
                pass
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
    except OSError:
        return datetime.fromtimestamp(0, UTC)


def run_runs(folder: Path, *, json_output: bool, limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError("limit", "must be >= 1", limit)
    entries = list_runs(folder)[:limit]
    if json_output:
        print(to_json({"folder": str(folder), "runs": [e.to_dict() for e in entries]}))
        return
    if not entries:
        print(f"no runs in {folder}")
        return
    rows = [["time", "run", "data", "rows", "R2", "gap", "converged", "coefficients"]]
    for entry in entries:
        item = entry.to_dict()
        if entry.status != "complete":
            rows.append([item["time"], entry.path.name, f"({entry.status})", "", "", "", "", ""])
            continue
        shown = list((item["coefficients"] or {}).items())[:COEFFICIENTS_SHOWN]
        more = len(item["coefficients"] or {}) - len(shown)
        coefficients = "  ".join(f"{name} {output.fmt(value)}" for name, value in shown)
        rows.append(
            [
                item["time"],
                entry.path.name,
                Path(str(item["data"])).name if item["data"] else "-",
                str(item["samples"]),
                output.fmt(item["r2"]),
                output.fmt(item["optimality_gap"], 3),
                "yes" if item["converged"] else "no",
                coefficients + (f"  (+{more})" if more > 0 else ""),
            ]
        )
    print("\n".join(output.aligned(rows)))


# -- compare ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One coefficient in two runs: the z-test of their difference."""

    name: str
    a: float
    b: float
    se_a: float | None
    se_b: float | None

    @property
    def difference(self) -> float:
        return self.b - self.a

    @property
    def z(self) -> float | None:
        if self.se_a is None or self.se_b is None:
            return None
        se = math.hypot(self.se_a, self.se_b)
        if se == 0:
            return None if self.difference == 0 else math.copysign(math.inf, self.difference)
        return self.difference / se

    @property
    def p(self) -> float | None:
        z = self.z
        return None if z is None else math.erfc(abs(z) / math.sqrt(2))

    def to_dict(self, level: float) -> dict[str, Any]:
        z = self.z
        return {
            "name": self.name,
            "a": self.a,
            "b": self.b,
            "difference": self.difference,
            "std_err_a": self.se_a,
            "std_err_b": self.se_b,
            "z": None if z is None or math.isinf(z) else z,
            "p": self.p,
            "drifted": self.drifted(level),
        }

    def drifted(self, level: float) -> bool | None:
        """Outside the combined interval at ``level`` (None: no standard errors to judge)."""
        p = self.p
        return None if p is None else p < 1 - level


def compare_runs(a: Path, b: Path, level: float) -> tuple[list[Drift], dict[str, Any]]:
    """The coefficients of two runs side by side, and the change of the fit."""
    first, second = _run_metrics(a), _run_metrics(b)
    names_a, names_b = first["data"]["feature_names"], second["data"]["feature_names"]
    if names_a != names_b:
        lost = [n for n in names_a if n not in names_b]
        new = [n for n in names_b if n not in names_a]
        detail = "; ".join(
            [f"only in {a}: {', '.join(lost)}"] * bool(lost)
            + [f"only in {b}: {', '.join(new)}"] * bool(new)
        )
        raise DataError(
            f"{a} and {b} have different features ({detail or 'in another order'}); "
            "compare runs of the same features"
        )
    drifts = []
    for one, two in zip(_coefficient_rows(first), _coefficient_rows(second), strict=True):
        drifts.append(Drift(one["name"], one["estimate"], two["estimate"], one["se"], two["se"]))
    stats_a, stats_b = first["statistics"], second["statistics"]
    fit = {
        "r2": [stats_a.get("r2"), stats_b.get("r2")],
        "residual_std_err": [stats_a.get("residual_std_err"), stats_b.get("residual_std_err")],
        "samples": [first["data"].get("samples"), second["data"].get("samples")],
    }
    return drifts, fit


def _run_metrics(path: Path) -> dict[str, Any]:
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.exists():
        raise DataError(
            f"{path}: no {METRICS_FILE} (not a run directory, or a run that did not finish)"
        )
    try:
        metrics = read_metrics(file)
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if metrics is None or not isinstance(metrics.get("statistics"), dict):
        raise DataError(f"{file} is not the metrics.json of a linreg run")
    return metrics


def _coefficient_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for item in metrics["statistics"].get("coefficients") or []:
        se = item.get("std_err")
        rows.append({"name": item["name"], "estimate": float(item["estimate"]), "se": se})
    expected = 1 + len(metrics["data"]["feature_names"])
    if len(rows) != expected:
        raise DataError("a metrics.json whose statistics do not match its features")
    return rows


def run_compare(
    a: Path, b: Path, *, confidence: float, fail_on_drift: bool, json_output: bool
) -> None:
    if not 0 < confidence < 1:
        raise ConfigError("confidence", "must be in (0, 1)", confidence)
    drifts, fit = compare_runs(a, b, confidence)
    moved = [d for d in drifts if d.drifted(confidence)]
    if json_output:
        document = {
            "a": str(a),
            "b": str(b),
            "confidence": confidence,
            "coefficients": [d.to_dict(confidence) for d in drifts],
            "fit": fit,
            "drifted": [d.name for d in moved],
        }
        print(to_json(document))
    else:
        critical = stdlib_statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
        rows = [["", "a", "b", "difference", "z", "p", f"drifted (|z| > {critical:.3g})"]]
        for d in drifts:
            drifted = d.drifted(confidence)
            rows.append(
                [
                    d.name,
                    output.fmt(d.a),
                    output.fmt(d.b),
                    output.fmt(d.difference, 3),
                    output.fmt(d.z, 3),
                    output.fmt_p(d.p),
                    "-" if drifted is None else "YES" if drifted else "no",
                ]
            )
        print(f"a: {a}\nb: {b}")
        print("\n".join(output.aligned(rows, indent=2)))
        for key, label in (("r2", "R2"), ("residual_std_err", "residual std err")):
            one, two = fit[key]
            change = None if one is None or two is None else two - one
            print(
                f"{label}: {output.fmt(one)} -> {output.fmt(two)} (change {output.fmt(change, 3)})"
            )
    if moved and fail_on_drift:
        shown = ", ".join(f"{d.name} (z {output.fmt(d.z, 3)})" for d in moved)
        raise DriftDetected(
            f"{len(moved)} coefficient(s) moved significantly at level {confidence:g}: {shown}"
        )
