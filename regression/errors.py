"""The exceptions the library raises for conditions a user can act on."""

from __future__ import annotations


class RegressionError(Exception):
    """Base class: a failure with a message meant for the user."""


class ConfigError(RegressionError):
    """An option value breaks its rule. `option` is the field name (e.g. ``batch_size``)."""

    def __init__(self, option: str, rule: str, value: object) -> None:
        self.option = option
        self.rule = rule
        self.value = value
        super().__init__(f"{option} {rule}, got {value!r}")


class DataError(RegressionError):
    """Input data that cannot be used: unreadable, malformed or the wrong shape."""


class ModelFileError(RegressionError):
    """A model file that is not a linreg model, is damaged, or does not match the data."""


class OutputError(RegressionError):
    """An output file or folder that cannot be written."""


class OutputExistsError(RegressionError):
    """The run directory already holds files and overwriting was not asked for."""


class DivergedError(RegressionError):
    """The training loss became NaN or infinite."""


class NotConvergedError(RegressionError):
    """``--require-converged``: the run finished and wrote its results, but training did not
    converge."""


class DriftDetected(RegressionError):
    """``linreg compare --fail-on-drift``: a coefficient moved significantly between runs."""


class DeviceUnavailableError(RegressionError):
    """The requested device does not exist on this machine."""


class TrainingStopped(RegressionError):
    """Training was asked to stop (a signal) and did, between two steps."""

    def __init__(self, epoch: int, *, saved: bool) -> None:
        self.epoch = epoch  # epochs completed
        self.saved = saved  # a checkpoint of that epoch was written
        super().__init__(f"training stopped after epoch {epoch}")
