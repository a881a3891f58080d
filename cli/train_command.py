"""``linreg train`` after its options are parsed: check the outputs, train, write the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regression import artifacts
from regression.config import TrainConfig, to_toml
from regression.errors import (
    ConfigError,
    NotConvergedError,
    OutputError,
    RegressionError,
    TrainingStopped,
)

from . import output
from .plot_worker import PlotWorker
from .signals import STOP, Interrupted

if TYPE_CHECKING:
    from regression.pipeline import RunResult


def run_train(
    config: TrainConfig,
    *,
    out: Path | None,
    overwrite: bool,
    resume: bool,
    plot: Path | None,
    draw: bool,
    json_output: bool,
    quiet: bool,
    require_converged: bool,
    log_file: Path | None,
    summary: bool,
    confidence: float,
    update: bool = False,
) -> None:
    """Everything that can be refused is checked before training starts. ``update``: linreg
    update (see pipeline.run_training).

    Under torchrun, rank 0 does all of this; the other ranks only train their shard and
    write and print nothing (unless they fail).
    """
    if os.environ.get("RANK", "0") != "0":
        _train_other_rank(config, run_dir=out, resume=resume)
        return
    if plot is not None:
        _check_plot_path(plot)
    log = _open_log(log_file) if log_file is not None else None
    not_converged: str | None = None  # --require-converged: why the run does not count
    run = artifacts.prepare_run_dir(out, overwrite=overwrite, resume=resume)
    plot_path = (plot if plot is not None else run.path / artifacts.PLOT_FILE) if draw else None
    config_path = run.path / artifacts.CONFIG_FILE
    names = (
        artifacts.CHECKPOINT_FILE,
        artifacts.MODEL_FILE,
        artifacts.HISTORY_FILE,
        artifacts.METRICS_FILE,
    )
    outputs = artifacts.RunOutputs(
        [config_path, *(run.path / name for name in names)]
        + ([plot_path] if plot_path is not None else [])
    )
    plotter: PlotWorker | None = None
    try:
        plotter = PlotWorker() if draw else None  # forked now, before torch is imported
        # first, so that an interrupted run can be resumed with the same options
        header = UPDATE_HEADER.format(model=config.init_model) if update else ""
        artifacts.write_text(config_path, header + to_toml(config.to_dict()))
        not_converged = _train_and_write(
            config,
            run_dir=run.path,
            resume=resume,
            plot=plot_path,
            plotter=plotter,
            json_output=json_output,
            quiet=quiet,
            require_converged=require_converged,
            log=log,
            summary=summary,
            confidence=confidence,
            update=update,
        )
    except BaseException as exc:
        try:
            if plotter is not None:
                plotter.close()  # after this the figure is written, or never will be
        finally:
            _discard(exc, run=run, outputs=outputs, resume=resume)
        if log is not None and isinstance(exc, RegressionError | Interrupted):
            log.write(f"error: {exc}")
        raise
    finally:
        if plotter is not None:
            plotter.close()
        run.release()
        if log is not None:
            if not_converged is not None:
                log.write(f"error: {not_converged}")
            log.close()
    if not_converged is not None:  # exit 3, once the run directory is complete
        raise NotConvergedError(not_converged)


def _discard(
    exc: BaseException, *, run: artifacts.RunDir, outputs: artifacts.RunOutputs, resume: bool
) -> None:
    """A failed or interrupted run takes back every file it wrote, so that nothing it leaves
    looks like a result (no model without its metrics.json), and the run directory if it
    made it. A run that can be resumed (it wrote a checkpoint, or is a --resume) keeps the
    checkpoint and config.toml, and its error line says how to continue."""
    if outputs.written(run.path / artifacts.METRICS_FILE):
        return  # the run is complete (metrics.json is last): what failed was printing it
    config_path = run.path / artifacts.CONFIG_FILE
    checkpoint_path = run.path / artifacts.CHECKPOINT_FILE
    resumable = resume or outputs.written(checkpoint_path)
    left = outputs.remove(keep={checkpoint_path, config_path} if resumable else ())
    run.remove_if_created()
    if left:
        _add_to_message(exc, f"could not remove {', '.join(map(str, left))}; remove them by hand")
    if resumable and isinstance(exc, OutputError | Interrupted):
        _add_to_message(exc, f"continue with: linreg train --resume {run.path}")


def _add_to_message(exc: BaseException, note: str) -> None:
    """Extend the message that main() prints as the one error line."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}; {note}",)


# config.toml of an update run: its options, and that `train --config` does not repeat it
UPDATE_HEADER = (
    "# written by `linreg update {model}`: the new rows were folded into that model's\n"
    "# least-squares state; `linreg train --config` with this file warm-starts from it on\n"
    "# the new rows alone, and `linreg update` repeats the update\n"
)


def _train_other_rank(config: TrainConfig, *, run_dir: Path | None, resume: bool) -> None:
    from regression.distributed import from_environment
    from regression.pipeline import run_training

    world = from_environment(config.device)
    try:
        run_training(config, run_dir=run_dir, resume=resume, should_stop=STOP, world=world)
    except TrainingStopped:
        assert STOP.received is not None
        raise Interrupted(*STOP.received, detail="stopped with the other ranks") from None
    world.close()  # only after success: a failed rank leaves, and torchrun stops the others


def _train_and_write(
    config: TrainConfig,
    *,
    run_dir: Path,
    resume: bool,
    plot: Path | None,
    plotter: PlotWorker | None,
    json_output: bool,
    quiet: bool,
    require_converged: bool,
    log: output.LogFile | None,
    summary: bool,
    confidence: float,
    update: bool = False,
) -> str | None:
    from regression.distributed import from_environment
    from regression.metrics import FitState
    from regression.pipeline import run_training
    from regression.report import metrics_document
    from regression.statistics import interval_basis

    world = from_environment(config.device)
    try:
        with output.ProgressReporter(quiet=quiet, log=log) as progress:
            result = run_training(
                config,
                confidence=confidence,
                progress=progress,
                run_dir=run_dir,
                resume=resume,
                should_stop=STOP,
                world=world,
                update=update,
            )
    except TrainingStopped as stopped:
        assert STOP.received is not None
        if stopped.saved:  # run_train adds how to continue
            detail = f"checkpoint of epoch {stopped.epoch} saved"
        else:
            detail = (
                f"stopped after epoch {stopped.epoch}, no results were written "
                "(--checkpoint-every K makes a run resumable)"
            )
        raise Interrupted(*STOP.received, detail=detail) from None
    world.close()
    STOP.leave_loop()
    if plot is not None and plotter is not None:
        plotter.start(_figure(result), plot)  # drawn by the helper while the rest is written
    metrics = metrics_document(result)
    precondition = result.precondition
    assert precondition is not None
    for warning in result.warnings:
        # a run that did not converge is heard of even with -q (cron mails stderr); with
        # --require-converged it is an error, said after the run directory is complete
        if warning == result.not_converged:
            if not require_converged:
                output.warn(warning)
        elif not quiet:
            output.warn(warning)
    artifacts.save_model(
        run_dir / artifacts.MODEL_FILE,
        artifacts.ModelFile(
            weight=result.params.weight,
            bias=result.params.bias,
            feature_names=result.data.feature_names,
            target_name=result.data.target_name,
            scaling_mean=result.scaling.mean,
            scaling_scale=result.scaling.scale,
            linear_weight=result.linear_weight,
            linear_bias=result.linear_bias,
            standardize=precondition.name != "none",
            dtype=config.dtype,
            intervals=interval_basis(result.ols, result.confidence),
            precondition=precondition.name,
            scaling_transform=result.scaling.transform,
            encoding=None if result.data.encoding is None else result.data.encoding.to_json(),
            state=FitState.of(result.ols),
        ),
    )
    artifacts.write_history(run_dir / artifacts.HISTORY_FILE, result.history, result.val_history)
    if plot is not None and plotter is not None:
        plotter.wait()
    artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)  # last: marks a complete run

    lines = output.summary_lines(metrics, run_dir, plot)
    if log is not None:
        for line in lines:
            log.write(line)
    try:
        if json_output:
            print(artifacts.to_json(metrics))
        elif not quiet:
            print("\n".join(lines))
            if summary:
                output.coefficient_table(metrics["statistics"])
        sys.stdout.flush()
    except BrokenPipeError:  # raised past click, which would make it exit 1: main says 141
        raise output.PipeClosed from None
    return result.not_converged if require_converged else None


def _figure(result: RunResult) -> dict[str, Any]:
    """The figure's data as plain arrays (what plots.figures.FigureData takes)."""
    import numpy as np

    from regression.data import gather

    data, rows = result.data, result.figure_rows
    one = data.features == 1
    return {
        "y": gather(data.y, rows).astype(np.float64),
        "predicted": result.predicted,
        "train_loss": np.asarray(result.history),
        "x": gather(data.X, rows)[:, 0].astype(np.float64) if one else None,
        "fitted": (float(result.params.weight[0]), result.params.bias, "fitted (SGD)")
        if one
        else None,
        "reference": (float(result.ols.weight[0]), result.ols.bias, "least squares")
        if one
        else None,
        "x_label": data.feature_names[0] if one else "x",
        "y_label": data.target_name,
    }


def _check_plot_path(plot: Path) -> None:
    from plots import FORMATS

    if plot.suffix.lower() not in FORMATS:
        raise ConfigError("plot", f"must end in {', '.join(FORMATS)}", str(plot))
    if not plot.parent.is_dir():
        raise OutputError(f"--plot {plot}: directory {plot.parent} does not exist")
    if not os.access(plot.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write --plot {plot}: directory {plot.parent} is not writable")


def _open_log(path: Path) -> output.LogFile:
    try:
        return output.LogFile(path)
    except OSError as exc:
        raise OutputError(f"--log-file {path}: cannot open for appending: {exc.strerror}") from exc
