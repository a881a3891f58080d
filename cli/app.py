"""The ``linreg`` command. Options become a ``TrainConfig``; the library does the work.

Only typer and the pure-Python config are imported at the top, so ``--help`` stays fast;
torch, numpy and matplotlib are imported by the commands that use them.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from regression import __version__
from regression.config import TrainConfig, parse_lr, parse_momentum
from regression.errors import (
    ConfigError,
    DataError,
    DriftDetected,
    ModelFileError,
    NotConvergedError,
    OutputExistsError,
    RegressionError,
)

from . import output
from .exit_codes import ExitCode
from .signals import STOP, Interrupted

DEFAULTS = TrainConfig()
DATA = "Data"
SYNTHETIC = "Synthetic data"
TRAINING = "Training"
OUTPUT = "Output"

app = typer.Typer(
    name="linreg",
    help="Fit linear regressions with PyTorch (nn.Linear + SGD on MSELoss) from the shell.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # rich help panels only on a terminal; plain text in pipes and logs
    rich_markup_mode="rich" if output.is_terminal(sys.stdout) else None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class DEBUG:
    """Whether tracebacks were asked for (--debug, LINREG_DEBUG or the config file)."""

    requested = False


def _version(value: bool) -> None:
    if value:
        print(f"linreg {__version__}")
        raise typer.Exit()


@app.callback()
def linreg(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Fit linear regressions with PyTorch (nn.Linear + SGD on MSELoss) from the shell.

    Exit codes: 0 success, 1 failure while running, 2 invalid usage or input, 3 not
    converged (--require-converged), 4 drift (compare --fail-on-drift),
    130/143 interrupted by SIGINT/SIGTERM.
    """


# Option types shared by `train` and `generate` (one definition, one help text).
Samples = Annotated[
    int, typer.Option("--samples", help="Rows of synthetic data (>= 1).", rich_help_panel=SYNTHETIC)
]
Features = Annotated[
    int,
    typer.Option(
        "--features", help="Feature columns of synthetic data (>= 1).", rich_help_panel=SYNTHETIC
    ),
]
Weight = Annotated[
    list[float] | None,
    typer.Option(
        "--weight",
        metavar="W",
        help="True weight; repeat once per feature, or give one value for all "
        f"[default: {DEFAULTS.weight[0]}].",
        show_default=False,
        rich_help_panel=SYNTHETIC,
    ),
]
Bias = Annotated[float, typer.Option("--bias", help="True intercept.", rich_help_panel=SYNTHETIC)]
Noise = Annotated[
    float,
    typer.Option(
        "--noise",
        help="Standard deviation of the Gaussian noise (>= 0).",
        rich_help_panel=SYNTHETIC,
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of the data, the hold-out split and the mini-batch order (>= 0).",
        rich_help_panel=SYNTHETIC,
    ),
]
Dtype = Annotated[
    str, typer.Option("--dtype", help="float32 or float64.", rich_help_panel=TRAINING)
]


@app.command(no_args_is_help=False)
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Train on a file: .csv, .tsv (also .gz, .bz2, .zst), .npy, .npz or .parquet; "
            "- reads CSV from stdin [default: synthetic data].",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            metavar="COL",
            help="Target column of --data: a name or 0-based index [default: the last column].",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share of rows held out for validation (seeded), in [0, 1).",
            rich_help_panel=DATA,
        ),
    ] = DEFAULTS.val_fraction,
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--features",
            metavar="COLS",
            help="With --data: the feature columns, names or 0-based indices, comma separated, "
            "repeatable [default: all but the target]. Without --data: how many synthetic "
            f"feature columns (>= 1) [default: {DEFAULTS.features}].",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            metavar="COLS",
            help="Columns of --data to leave out (names or indices; comma separated, repeatable).",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    categorical: Annotated[
        list[str] | None,
        typer.Option(
            metavar="COLS",
            help="Numeric-coded columns to treat as categorical, like a zip code (columns "
            "holding text always are).",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    missing: Annotated[
        str,
        typer.Option(
            help="Missing cells: error, drop (their rows), or mean (fill with the training "
            "mean and add a 0/1 missing(COL) column). A missing target is dropped by both.",
            rich_help_panel=DATA,
        ),
    ] = DEFAULTS.missing,
    na_values: Annotated[
        str | None,
        typer.Option(
            metavar="LIST",
            help="Comma-separated cells that are missing values, replacing the default "
            "'',NA,N/A,NaN,nan,null,NULL (an empty item is the empty cell).",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    max_levels: Annotated[
        int,
        typer.Option(
            help="Most levels a categorical column may have (an ID column is refused).",
            rich_help_panel=DATA,
        ),
    ] = DEFAULTS.max_levels,
    data_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or tsv, where the name of --data cannot tell (- for stdin: csv).",
            show_default=False,
            rich_help_panel=DATA,
        ),
    ] = None,
    samples: Samples = DEFAULTS.samples,
    weight: Weight = None,
    bias: Bias = DEFAULTS.bias,
    noise: Noise = DEFAULTS.noise,
    seed: Seed = DEFAULTS.seed,
    epochs: Annotated[
        int,
        typer.Option(help="Most passes over the training data (>= 1).", rich_help_panel=TRAINING),
    ] = DEFAULTS.epochs,
    lr: Annotated[
        str,
        typer.Option(
            metavar="auto|FLOAT",
            help="SGD step size (> 0), or 'auto': 1/L from the curvature of the data.",
            rich_help_panel=TRAINING,
        ),
    ] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            help="Rows per mini-batch, reshuffled each epoch; 0 = full batch.",
            rich_help_panel=TRAINING,
        ),
    ] = DEFAULTS.batch_size,
    momentum: Annotated[
        str,
        typer.Option(
            metavar="auto|FLOAT",
            help="SGD momentum in [0, 1), or 'auto': the optimal heavy-ball value for the data "
            "(full batch with --lr auto; 0 otherwise).",
            rich_help_panel=TRAINING,
        ),
    ] = "auto",
    weight_decay: Annotated[
        float,
        typer.Option(
            help="L2 penalty on the weights (>= 0), in training units.", rich_help_panel=TRAINING
        ),
    ] = DEFAULTS.weight_decay,
    precondition: Annotated[
        str,
        typer.Option(
            metavar="auto|none|standardize|whiten",
            help="Training units: none (raw features), standardize ((x - mean) / std), whiten "
            "(standardized and decorrelated: every conditioning trains in a few epochs), or "
            "auto: whiten where the standardized condition number is above 30. Coefficients "
            "are always reported in data units.",
            rich_help_panel=TRAINING,
        ),
    ] = DEFAULTS.precondition,
    standardize: Annotated[
        bool | None,
        typer.Option(
            "--standardize/--no-standardize",
            help="Aliases of --precondition standardize and --precondition none.",
            rich_help_panel=TRAINING,
            show_default=False,
        ),
    ] = None,
    tol: Annotated[
        float,
        typer.Option(
            help="Stop when the loss improves by less than this (relative); 0 runs every epoch.",
            rich_help_panel=TRAINING,
        ),
    ] = DEFAULTS.tol,
    patience: Annotated[
        int,
        typer.Option(help="... for this many epochs in a row (>= 1).", rich_help_panel=TRAINING),
    ] = DEFAULTS.patience,
    device: Annotated[
        str,
        typer.Option(
            help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.",
            rich_help_panel=TRAINING,
        ),
    ] = DEFAULTS.device,
    dtype: Dtype = DEFAULTS.dtype,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            metavar="K",
            help="Save a checkpoint every K epochs (and when stopped by a signal); 0 = never.",
            rich_help_panel=TRAINING,
        ),
    ] = DEFAULTS.checkpoint_every,
    init_model: Annotated[
        Path | None,
        typer.Option(
            metavar="MODEL",
            help="Start from this model file's parameters (same feature names) instead of "
            "zeros: a warm start from yesterday's model.",
            show_default=False,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Continue the interrupted run in DIR from its checkpoint, with its options.",
            show_default=False,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE.toml",
            help="Option values from TOML (command line > LINREG_<OPTION> > file > default).",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run directory [default: a new runs/<UTC time>]. Must be new or empty.",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Allow a non-empty --out; its files are replaced.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Figure path; .png, .svg or .pdf [default: DIR/plot.png].",
            show_default=False,
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    no_plot: Annotated[
        bool, typer.Option("--no-plot", help="Do not draw the figure.", rich_help_panel=OUTPUT)
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help="Print only the metrics JSON on stdout.", rich_help_panel=OUTPUT
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print nothing unless there is an error or training did not converge.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    require_converged: Annotated[
        bool,
        typer.Option(
            "--require-converged",
            help="Exit 3 when training did not converge (the stopping rule unmet, or the "
            "optimality gap above --tol); the run directory is still written.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the resolved options as TOML and exit.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(
            help="Append progress lines and the summary to this file.", rich_help_panel=OUTPUT
        ),
    ] = None,
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="Print the coefficient table (std err, t, p, CI).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    confidence: Annotated[
        float,
        typer.Option(help="Confidence level of the intervals, in (0, 1).", rich_help_panel=OUTPUT),
    ] = 0.95,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks of unexpected errors (or LINREG_DEBUG=1).",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
) -> None:
    """Train nn.Linear with SGD on MSELoss; write metrics, model, history and figure.

    With no options it runs the demo: 100 samples of y = 2x + 1 + 0.1 N(0, 1).
    Every option can also come from LINREG_<OPTION> or a --config TOML file.
    """
    from . import settings

    values, sources = settings.resolve(ctx, config_file)
    DEBUG.requested = bool(values["debug"])  # also from LINREG_DEBUG or the config file
    if resume is not None:
        _resume_values(values, sources, resume, config_file)
    config = _train_config(values, sources)
    confidence = values["confidence"]
    if not 0 < confidence < 1:
        raise ConfigError("confidence", "must be in (0, 1)", confidence)
    if values["require_converged"] and config.tol == 0:
        raise ConfigError(
            "require_converged", "needs --tol > 0 (--tol 0 runs every epoch, never converges)", None
        )
    if values["plot"] is not None and values["no_plot"]:
        raise ConfigError("plot", "cannot be combined with --no-plot", str(values["plot"]))
    if print_config:
        resolved = {**values, **config.to_dict()}  # TrainConfig's names are the parameters'
        if values["standardize"] is not None:  # the alias, as resolved
            resolved["standardize"] = config.precondition != "none"
        shown = [
            setting.key
            for setting in settings.SETTINGS
            if resolved.get(setting.param) is not None
            and setting.key != "debug"
            and (
                setting.key in config.to_dict()
                or setting.key not in settings.TRAINING_KEYS
                or setting.key == "standardize"
            )
        ]
        print(settings.to_config_toml(resolved, shown), end="")
        return
    from .train_command import run_train

    run_train(
        config,
        out=resume if resume is not None else values["out"],
        overwrite=values["overwrite"],
        resume=resume is not None,
        plot=None if values["no_plot"] else values["plot"],
        draw=not values["no_plot"],
        json_output=values["json_output"],
        quiet=values["quiet"],
        require_converged=values["require_converged"],
        log_file=values["log_file"],
        summary=values["summary"],
        confidence=confidence,
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A model file written by linreg train.")],
    data: Annotated[
        Path,
        typer.Option(
            help="Rows to predict: .csv, .tsv (also .gz, .bz2, .zst), .npy, .npz or .parquet; "
            "- reads CSV from stdin.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write predictions to .csv or .npy [default: CSV on stdout].", show_default=False
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            metavar="COL",
            help="Target column (name or 0-based index) for metrics [default: the model's target "
            "name, when present].",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: predictions and metrics.")
    ] = False,
    intervals: Annotated[
        bool,
        typer.Option(
            "--intervals",
            help="Add the least-squares confidence interval of the mean (mean_lower, "
            "mean_upper) and the prediction interval (lower, upper) of each prediction.",
        ),
    ] = False,
    confidence: Annotated[
        float | None,
        typer.Option(
            help="Level of --intervals, in (0, 1) [default: the model's training --confidence].",
            show_default=False,
        ),
    ] = None,
    unknown_level: Annotated[
        str,
        typer.Option(
            help="A categorical level not seen in training: error (exit 2), or zero (all-zero "
            "indicators, i.e. the reference level, and a warning).",
        ),
    ] = "error",
    data_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or tsv, where the name of --data cannot tell (- for stdin: csv).",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    """Predict with a saved model: a CSV column `prediction`, plus metrics when the target
    column is present."""
    from .predict_command import run_predict

    run_predict(
        model,
        data=data,
        out=out,
        target=target,
        json_output=json_output,
        intervals=intervals,
        confidence=confidence,
        unknown_level=unknown_level,
        data_format=data_format,
    )


@app.command()
def update(
    model: Annotated[
        Path, typer.Argument(help="The model to fold new rows into (from linreg train or update).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="The new rows, with the model's columns and target: .csv, .tsv (also .gz, "
            ".bz2, .zst), .npy, .npz or .parquet; - reads CSV from stdin.",
            show_default=False,
        ),
    ],
    target: Annotated[
        str | None,
        typer.Option(
            metavar="COL",
            help="Target column (name or 0-based index) [default: the model's target name].",
            show_default=False,
        ),
    ] = None,
    data_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or tsv, where the name of --data cannot tell (- for stdin: csv).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory [default: a new runs/<UTC time>].", show_default=False),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Allow a non-empty --out; its files are replaced.")
    ] = False,
    epochs: Annotated[int, typer.Option(help="Most epochs (>= 1).")] = DEFAULTS.epochs,
    tol: Annotated[float, typer.Option(help="Stopping tolerance (>= 0).")] = DEFAULTS.tol,
    patience: Annotated[
        int, typer.Option(help="Epochs in a row below --tol to stop (>= 1).")
    ] = DEFAULTS.patience,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Figure path (of the new rows); .png, .svg or .pdf [default: DIR/plot.png].",
            show_default=False,
        ),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not draw the figure.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the metrics JSON on stdout.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Print nothing unless there is an error or no convergence."
        ),
    ] = False,
    require_converged: Annotated[
        bool, typer.Option("--require-converged", help="Exit 3 when training did not converge.")
    ] = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="Print the coefficient table (std err, t, p, CI).")
    ] = False,
    confidence: Annotated[
        float, typer.Option(help="Confidence level of the intervals, in (0, 1).")
    ] = 0.95,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    """Fold new rows into a model's exact least-squares fit, without the old rows.

    The new run's least-squares reference, statistics and standardization are those of
    every row seen so far (the model file carries their least-squares state), and nn.Linear
    starts from the model's parameters and trains on that state (float64, full batch, CPU).
    The rows are encoded as the model's were (its columns, levels and fill values).
    """
    DEBUG.requested = DEBUG.requested or debug
    if not 0 < confidence < 1:
        raise ConfigError("confidence", "must be in (0, 1)", confidence)
    if require_converged and tol == 0:
        raise ConfigError(
            "require_converged", "needs --tol > 0 (--tol 0 runs every epoch, never converges)", None
        )
    if plot is not None and no_plot:
        raise ConfigError("plot", "cannot be combined with --no-plot", str(plot))
    config = TrainConfig(
        data="-" if str(data) == "-" else os.path.abspath(data),
        target=target,
        format=data_format,
        epochs=epochs,
        tol=tol,
        patience=patience,
        device="cpu",
        dtype="float64",
        init_model=os.path.abspath(model),
    )
    from .train_command import run_train

    run_train(
        config,
        out=out,
        overwrite=overwrite,
        resume=False,
        plot=None if no_plot else plot,
        draw=not no_plot,
        json_output=json_output,
        quiet=quiet,
        require_converged=require_converged,
        log_file=None,
        summary=summary,
        confidence=confidence,
        update=True,
    )


@app.command()
def runs(
    folder: Annotated[
        Path, typer.Argument(help="A folder of run directories.", show_default=True)
    ] = Path("runs"),
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: the runs, newest first.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(metavar="N", help="Show the N newest runs only.", show_default=False),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    """List the run directories, newest first: time, data, rows, R2, optimality gap,
    convergence and the first coefficients (from each metrics.json; incomplete and foreign
    directories are listed as such)."""
    from .history import run_runs

    run_runs(folder, json_output=json_output, limit=limit)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="A run directory (or its metrics.json).")],
    run_b: Annotated[Path, typer.Argument(help="The run to compare it with.")],
    confidence: Annotated[
        float, typer.Option(help="Level of the test, in (0, 1): drift is p < 1 - level.")
    ] = 0.95,
    fail_on_drift: Annotated[
        bool,
        typer.Option("--fail-on-drift", help="Exit 4 when any coefficient moved significantly."),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: the comparison.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    """Compare the coefficients of two runs: both estimates, the difference, and a z-test of
    it, z = (b - a) / sqrt(se_a^2 + se_b^2), which treats the two fits as independent
    (from different rows); also the change in R2 and residual std err."""
    from .history import run_compare

    run_compare(
        run_a, run_b, confidence=confidence, fail_on_drift=fail_on_drift, json_output=json_output
    )


@app.command()
def generate(
    out: Annotated[
        Path, typer.Option(help="File to write: .csv, .tsv, .npy or .npz.", show_default=False)
    ],
    samples: Samples = DEFAULTS.samples,
    features: Features = DEFAULTS.features,
    weight: Weight = None,
    bias: Bias = DEFAULTS.bias,
    noise: Noise = DEFAULTS.noise,
    seed: Seed = DEFAULTS.seed,
    dtype: Dtype = DEFAULTS.dtype,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing unless there is an error.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
) -> None:
    """Write the synthetic data `linreg train` would generate with the same options
    (columns x1..xD, y)."""
    from .predict_command import run_generate

    config = TrainConfig(
        samples=samples,
        features=features,
        weight=tuple(weight) if weight else DEFAULTS.weight,
        bias=bias,
        noise=noise,
        seed=seed,
        dtype=dtype,
    )
    run_generate(config, out=out, quiet=quiet)


def _train_config(values: dict[str, Any], sources: dict[str, str]) -> TrainConfig:
    """The TrainConfig of the resolved values; synthetic options with --data, and the data
    file's options without it, are refused."""
    data = values["data"]
    features = values["features"]
    if data is not None:
        for key in ("samples", "weight", "bias", "noise"):
            if sources[key] != "default":
                raise ConfigError(
                    key, "describes synthetic data and cannot be used with --data", None
                )
        count = DEFAULTS.features
        columns = (str(features),) if isinstance(features, int) else tuple(features or ())
    else:
        if values["target"] is not None:
            raise ConfigError(
                "target", "needs --data (synthetic data has one target, y)", values["target"]
            )
        count = _feature_count(features)
        columns = ()
    weight = values["weight"]
    na_values = values["na_values"]
    if isinstance(na_values, str):  # from the command line: one comma-separated string
        na_values = na_values.split(",")
    return TrainConfig(
        data=None if data is None else "-" if str(data) == "-" else os.path.abspath(data),
        target=values["target"],
        feature_columns=columns,
        exclude=tuple(values["exclude"] or ()),
        categorical=tuple(values["categorical"] or ()),
        missing=values["missing"],
        na_values=DEFAULTS.na_values if na_values is None else tuple(na_values),
        max_levels=values["max_levels"],
        format=values["data_format"],
        val_fraction=values["val_fraction"],
        samples=values["samples"],
        features=count,
        weight=tuple(weight) if weight else DEFAULTS.weight,
        bias=values["bias"],
        noise=values["noise"],
        seed=values["seed"],
        epochs=values["epochs"],
        lr=parse_lr(values["lr"]),
        batch_size=values["batch_size"],
        momentum=parse_momentum(values["momentum"]),
        weight_decay=values["weight_decay"],
        precondition=_precondition(values, sources),
        tol=values["tol"],
        patience=values["patience"],
        device=values["device"],
        dtype=values["dtype"],
        checkpoint_every=values["checkpoint_every"],
        init_model=None if values["init_model"] is None else os.path.abspath(values["init_model"]),
    )


def _feature_count(features: list[str] | int | None) -> int:
    """--features without --data: the number of synthetic feature columns."""
    if isinstance(features, int):
        return features
    if not features:  # typer gives [] for a list option not given
        return DEFAULTS.features
    if len(features) == 1:
        try:
            return int(features[0])
        except ValueError:
            pass
    raise ConfigError(
        "features",
        "without --data is the number of synthetic feature columns (an integer); "
        "column names need --data",
        ",".join(features),
    )


LAYERS = ("default", "config", "environment", "command line")  # lowest first


def _precondition(values: dict[str, Any], sources: dict[str, str]) -> str:
    """--precondition, or its alias --standardize/--no-standardize (standardize or none),
    whichever comes from the higher layer; the two from the same layer must agree."""
    precondition: str = values["precondition"]
    if values["standardize"] is None:
        return precondition
    alias = "standardize" if values["standardize"] else "none"
    given, aliased = LAYERS.index(sources["precondition"]), LAYERS.index(sources["standardize"])
    if given == aliased and precondition != alias:
        flag = "--standardize" if values["standardize"] else "--no-standardize"
        raise ConfigError(
            "precondition",
            f"contradicts {flag} (an alias of --precondition {alias}): give one of them",
            precondition,
        )
    return alias if aliased > given else precondition


def _resume_values(
    values: dict[str, Any], sources: dict[str, str], run_dir: Path, config_file: Path | None
) -> None:
    """With --resume DIR the training options are DIR's config.toml, and nothing else."""
    from regression.artifacts import CONFIG_FILE

    from . import settings

    given = [key for key in [*settings.TRAINING_KEYS, "out"] if sources[key] != "default"]
    if config_file is not None:
        given.insert(0, "config")
    if given:
        raise ConfigError(
            given[0],
            "cannot be used with --resume: the run continues with the options in "
            f"{run_dir / CONFIG_FILE}",
            None,
        )
    if not (run_dir / CONFIG_FILE).exists():  # what exists is read only if a regular file
        raise ConfigError("resume", f"needs a run directory with {CONFIG_FILE}", str(run_dir))
    saved = settings.read_config(run_dir / CONFIG_FILE)
    for key in settings.TRAINING_KEYS:
        if key in saved:
            values[settings.BY_KEY[key].param] = saved[key]
            sources[key] = "config"


EXIT_CODES: list[tuple[type[RegressionError], ExitCode]] = [
    (ConfigError, ExitCode.USAGE),
    (DataError, ExitCode.USAGE),
    (ModelFileError, ExitCode.USAGE),
    (OutputExistsError, ExitCode.USAGE),
    (NotConvergedError, ExitCode.NOT_CONVERGED),
    (DriftDetected, ExitCode.DRIFT),
    (RegressionError, ExitCode.FAILURE),
]


def exit_code_for(exc: RegressionError) -> ExitCode:
    return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))


def message_for(exc: RegressionError) -> str:
    if isinstance(exc, ConfigError):
        got = "" if exc.value is None else f", got {_shown(exc.value)}"
        return f"--{exc.option.replace('_', '-')} {exc.rule}{got}"
    return str(exc)


def _shown(value: Any) -> str:
    return str(value) if isinstance(value, int | float) else repr(value)


COMMANDS = ("train", "predict", "update", "runs", "compare", "generate")


def usage_message(message: str, args: list[str]) -> str:
    """Click's message, with the offending value added where Click leaves it out."""
    found = re.match(r"Invalid value for '(--[\w-]+)'", message)
    if found:
        option, value = found.group(1), None
        for i, arg in enumerate(args):
            if arg == option and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(option + "="):
                value = arg.split("=", 1)[1]
        if value is not None and repr(value) not in message:
            message = f"{message.rstrip('.')}, got {value!r}"
    command = next((arg for arg in args if arg in COMMANDS), None)
    return f"{message} (see linreg {command + ' ' if command else ''}--help)"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush finds no broken
    pipe to complain of."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of ``linreg`` and ``python -m cli``: one place turns failures into exit codes."""
    args = sys.argv[1:] if argv is None else argv
    DEBUG.requested = "--debug" in args or os.environ.get("LINREG_DEBUG", "") not in ("", "0")
    STOP.install()
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="linreg", standalone_mode=False)
        code = result if isinstance(result, int) else ExitCode.OK
    except RegressionError as exc:
        if DEBUG.requested:
            traceback.print_exc()
        output.error(message_for(exc))
        code = exit_code_for(exc)
    except typer.TyperException as exc:  # usage errors found while parsing the command line
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `linreg`: show the help
            print(exc.format_message())
            code = ExitCode.OK
        else:
            output.error(usage_message(exc.format_message(), args))
            code = getattr(exc, "exit_code", ExitCode.USAGE)
    except Interrupted as exc:
        output.error(str(exc))
        code = exc.code
    except typer.Abort:
        output.error("aborted")
        code = ExitCode.FAILURE
    except (BrokenPipeError, output.PipeClosed):  # stdout's reader went away: stop, quietly
        _silence_stdout()
        code = ExitCode.BROKEN_PIPE
    except Exception as exc:
        if DEBUG.requested:
            traceback.print_exc()
        hint = "" if DEBUG.requested else " (rerun with --debug for the traceback)"
        output.error(f"unexpected {type(exc).__name__}: {exc}{hint}")
        code = ExitCode.FAILURE
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = ExitCode.BROKEN_PIPE
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, leave without running C++ static destructors: torch's distributed
        # threads can abort the process at interpreter shutdown ("terminate called without
        # an active exception") after the work is done and the process group destroyed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    sys.exit(int(code))
