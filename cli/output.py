"""Everything linreg prints. Results go to stdout, diagnostics and progress to stderr.

On a terminal, progress is a rich bar on stderr. Otherwise (cron, pipes, CI) output is plain
text: no escape codes, no box characters, and only a few progress lines.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regression.train import Progress


HEARTBEAT_S = 60.0  # the longest gap between plain progress lines


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def error(message: str) -> None:
    """The one line a failure prints: ``error: ...`` on stderr (``error: rank R: ...``
    under torchrun, so that a cluster log says which process failed)."""
    text = " ".join(str(message).split())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        text = f"rank {os.environ.get('RANK', '?')}: {text}"
    print(f"error: {text}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class LogFile:
    """``--log-file``: progress lines and the summary appended with a UTC time stamp."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("a", encoding="utf-8")

    def write(self, line: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.handle.write(f"{stamp} {line}\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class ProgressReporter:
    """Receives the training loop's callbacks and shows them where they belong."""

    def __init__(self, *, quiet: bool, log: LogFile | None) -> None:
        self.log = log
        self.bar: Any = None
        self.plain = not quiet and not is_terminal(sys.stderr)
        self.next_line = 1
        self.last_line = time.monotonic()
        if not quiet and is_terminal(sys.stderr):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("train", total=None, loss="-")

    def __enter__(self) -> ProgressReporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, event: Progress) -> None:
        line = progress_line(event)
        if self.bar is not None:
            self.bar.update(
                self.task, completed=event.epoch, total=event.epochs, loss=f"{event.loss:.6g}"
            )
        if not self._due(event):
            return
        if self.plain:
            print(line, file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.write(line)

    def _due(self, event: Progress) -> bool:
        """Lines at epochs 1, 2, 4, 8, ... and at least one a minute in between."""
        now = time.monotonic()
        if event.epoch < self.next_line and now - self.last_line < HEARTBEAT_S:
            return False
        if event.epoch >= self.next_line:
            self.next_line = 2 * event.epoch
        self.last_line = now
        return True


def progress_line(event: Progress) -> str:
    return (
        f"epoch {event.epoch}/{event.epochs}  loss {event.loss:.6e}  elapsed {event.elapsed:.2f}s"
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fmt(value: float | None, digits: int = 6) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-4):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def summary_lines(metrics: dict[str, Any], run_dir: Path, plot: Path | None) -> list[str]:
    """The human summary of a run: parameters side by side, fit, epochs, time, files."""
    data = metrics["data"]
    source = "synthetic data" if data["source"] == "synthetic" else data["source"]
    if metrics.get("update"):
        lines = [
            f"updated {metrics['parent']['path']} with {plural(data['new_samples'], 'row')} of "
            f"{source}: {plural(data['train_samples'], 'sample')} in all, "
            f"{plural(data['features'], 'feature')}, on {metrics['device']} in {metrics['dtype']}",
        ]
    else:
        lines = [
            f"trained nn.Linear on {source}: {plural(data['train_samples'], 'sample')}, "
            f"{plural(data['features'], 'feature')}, on {metrics['device']} in {metrics['dtype']}",
        ]
        if metrics.get("parent"):
            lines.append(f"started from {metrics['parent']['path']}")
    names = ["intercept", *data["feature_names"]]
    columns: list[tuple[str, dict[str, Any] | None]] = [
        ("learned", metrics["params"]),
        ("least squares", metrics["ols_params"]),
        ("true", metrics["true_params"]),
    ]
    columns = [(title, params) for title, params in columns if params is not None]
    shown = min(len(names), 21)
    rows = [["", *(title for title, _ in columns)]]
    for i in range(shown):
        rows.append(
            [names[i], *(fmt(p["bias"] if i == 0 else p["weight"][i - 1]) for _, p in columns)]
        )
    lines += aligned(rows, indent=2)
    if shown < len(names):
        lines.append(f"  ... {len(names) - shown} more in metrics.json")
    train = metrics["train"]
    gap = metrics["optimality_gap"]
    lines.append(
        f"R2 {fmt(train['r2'])}  MSE {fmt(train['mse'])}  optimality gap {fmt(gap, 3)}  "
        f"epochs {metrics['epochs_run']}{' (converged)' if metrics['converged'] else ''}  "
        f"lr {fmt(metrics['lr'], 4)}  {metrics['seconds']:.2f}s"
    )
    val = metrics["val"]
    if val is not None:
        lines.append(
            f"validation ({data['val_samples']} held-out rows): R2 {fmt(val['r2'])}  "
            f"MSE {fmt(val['mse'])}"
        )
    if not metrics["converged"] and gap is not None and gap > 1e-3:
        lines.append(
            "note: training stopped before the loss settled; the least-squares column is the "
            "optimum (more --epochs, --lr auto or --precondition whiten get closer)"
        )
    lines.append(f"run directory: {run_dir}")
    if plot is not None and plot.parent != run_dir:
        lines.append(f"figure: {plot}")
    return lines


def aligned(rows: list[list[str]], indent: int = 0) -> list[str]:
    """Plain columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        out.append((" " * indent + "  ".join(cells)).rstrip())
    return out


def coefficient_table(statistics: dict[str, Any]) -> None:
    """``--summary``: the least-squares coefficient table, rich on a terminal, plain otherwise."""
    level = statistics["confidence"]
    pct = f"{100 * level:g}%"
    header = ["coefficient", "estimate", "std err", "t", "p", f"{pct} CI low", f"{pct} CI high"]
    rows = [
        [
            c["name"],
            fmt(c["estimate"]),
            fmt(c["std_err"], 4),
            fmt(c["t"], 4),
            fmt_p(c["p"]),
            fmt(c["ci_low"]),
            fmt(c["ci_high"]),
        ]
        for c in statistics["coefficients"]
    ]
    footer = (
        f"least-squares statistics: residual std err {fmt(statistics['residual_std_err'], 4)} "
        f"on {statistics['df_resid']} degrees of freedom, R2 {fmt(statistics['r2'])}, "
        f"adjusted R2 {fmt(statistics['adj_r2'])}, F {fmt(statistics['f_stat'], 4)} "
        f"(p {fmt_p(statistics['f_pvalue'])})"
    )
    footer_lines = [footer, *statistics_notes(statistics)]
    if is_terminal(sys.stdout):
        from rich.console import Console
        from rich.table import Table

        table = Table(*header, title="Coefficients (least squares)")
        for row in rows:
            table.add_row(*row)
        console = Console()
        console.print(table)
        for line in footer_lines:
            console.print(line, highlight=False, markup=False)
    else:
        print("coefficients (least squares):")
        print("\n".join(aligned([header, *rows], indent=2)))
        print("\n".join(footer_lines))


def statistics_notes(statistics: dict[str, Any]) -> list[str]:
    """The likelihood and diagnostics line under the table, and how the learned parameters
    relate to the least-squares ones it describes (a note when training did not converge)."""
    condition = fmt(statistics["condition_number"], 4)
    standardized = statistics.get("condition_number_standardized")
    lines = [
        f"log-likelihood {fmt(statistics['log_likelihood'])}, AIC {fmt(statistics['aic'])}, "
        f"BIC {fmt(statistics['bic'])}, Durbin-Watson {fmt(statistics['durbin_watson'], 4)}, "
        f"condition number {condition} (standardized features {fmt(standardized, 4)})"
    ]
    trained = statistics.get("trained")
    if trained is None:
        return lines
    distance = trained["max_diff_std_errs"]
    away = (
        f"{fmt(distance, 2)} standard errors"
        if distance is not None
        else f"a relative {fmt(trained['max_rel_diff'], 2)}"
    )
    if trained["converged"]:
        lines.append(f"the learned parameters are within {away} of these estimates")
    else:
        lines.append(
            f"note: training did not converge; the learned parameters are up to {away} from "
            "these least-squares estimates, which is what the table describes "
            "(more --epochs get closer)"
        )
    return lines


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return "<1e-300" if p < 1e-300 else f"{p:.3g}"


class PipeClosed(Exception):
    """stdout's reader went away (``| head``): the command stops quietly, with the status
    a shell gives a process ended by SIGPIPE (141)."""
