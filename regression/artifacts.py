"""Files on disk: atomic writes, the run directory, and the safetensors model file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from . import __version__, safeio
from .errors import ModelFileError, OutputError, OutputExistsError

if TYPE_CHECKING:
    from .metrics import FitState

MODEL_FORMAT = "linreg-model"
MODEL_FORMAT_VERSION = "1"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CONFIG_FILE = "config.toml"
PLOT_FILE = "plot.png"
CHECKPOINT_FILE = "checkpoint.safetensors"
# what a model or checkpoint file may be, read back: a model's three D x D factors (whiten,
# intervals, least-squares state) are 24 D^2 bytes, so this holds 6,600 features; and
# safetensors' own bound on its JSON header
MAX_FILE_BYTES = 1 << 30
MAX_HEADER_BYTES = 100_000_000


# the temporary files this process is writing (atomic_writer), for what must end it at once,
# with os._exit rather than an exception: it removes them first (cli/plot_worker.py)
WRITING: set[str] = set()


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temporary file in the same folder, then rename it over ``path``.

    Readers see the old file or the whole new one, never a part; on any error (a full disk,
    an interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    WRITING.add(tmp)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    finally:
        WRITING.discard(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, document: dict[str, Any]) -> None:
    write_text(path, to_json(document) + "\n")


def to_json(document: dict[str, Any]) -> str:
    """Strict JSON: NaN and infinity are refused rather than written as invalid tokens."""
    return json.dumps(document, indent=2, allow_nan=False)


def write_history(path: Path, losses: list[float], val_losses: list[float] | None = None) -> None:
    """``epoch,train_loss`` (and ``val_loss`` with a hold-out), one row per epoch run."""
    if val_losses is None:
        lines = ["epoch,train_loss"]
        lines += [f"{i},{loss!r}" for i, loss in enumerate(losses, start=1)]
    else:
        lines = ["epoch,train_loss,val_loss"]
        lines += [
            f"{i},{loss!r},{val!r}"
            for i, (loss, val) in enumerate(zip(losses, val_losses, strict=True), start=1)
        ]
    write_text(path, "\n".join(lines) + "\n")


# -- the run directory ---------------------------------------------------------------------


class RunDir:
    """A run directory held for one run: an exclusive lock on the directory keeps a second
    linreg run from writing to it at the same time (``flock``, released when the process
    ends, however it ends)."""

    def __init__(self, path: Path, *, created: bool, parents: tuple[Path, ...] = ()) -> None:
        self.path = path
        self.created = created  # this run made the directory
        self.parents = parents  # the folders above it that this run made, innermost first
        self._fd: int | None = None

    def lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise OutputExistsError(
                f"--out {self.path} is in use by another linreg run; "
                "wait for it to finish or choose another directory"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove_if_created(self) -> None:
        """Remove the directory if this run made it and it is empty (a failed run), and the
        folders above it that the run made for it, up to the first that is not empty."""
        if self.created:
            with contextlib.suppress(OSError):  # not empty: something is kept, or not ours
                for folder in (self.path, *self.parents):
                    folder.rmdir()


class RunOutputs:
    """The files a run writes, and what was at each path before it started.

    A run that fails calls ``remove``, so that nothing it wrote can be taken for a result:
    every path whose file is not the one found there at the start (a new file, or an old one
    this run replaced) is removed; files the run did not touch are left as they are. Judged
    by the file itself (device, inode, modification time), not by a record of the writes,
    so a file renamed into place just before an interrupt, or by the plotting process, is
    found as well.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self._before = {Path(path): _identity(Path(path)) for path in paths}

    def written(self, path: Path) -> bool:
        """Whether the file at ``path`` (one of the outputs) was put there by this run."""
        now = _identity(Path(path))
        return now is not None and now != self._before.get(Path(path))

    def remove(self, *, keep: Collection[Path] = ()) -> list[Path]:
        """Remove what this run wrote, except the paths in ``keep``; returns the paths that
        could not be removed."""
        left = []
        for path in self._before:
            if path in keep or not self.written(path):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(path)
        return left


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells two files at one path apart: an atomic write always makes a new inode
    (its temporary file exists while the old one does), and a link is judged as itself."""
    try:
        stat = os.lstat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns)


def prepare_run_dir(
    out: Path | None, *, overwrite: bool, resume: bool = False, root: Path = Path("runs")
) -> RunDir:
    """Create and lock the run directory, or lock an existing one that is empty (or with
    ``overwrite``, or the run being resumed).

    Without ``out`` a new folder ``runs/<UTC time>`` is made, with ``-2``, ``-3`` ... added
    when two runs start in the same second; ``mkdir`` is atomic, so they never share one.
    With ``overwrite`` (or ``resume``) a stale ``metrics.json`` is removed first, so a run
    that then fails does not leave the old results looking like its own.
    """
    if out is None:
        parents = _make_dirs(root)
        run = RunDir(_new_run_dir(root), created=True, parents=parents)
        run.lock()
        return run
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory")
    made = _make_dirs(out)
    run = RunDir(out, created=bool(made), parents=made[1:])
    run.lock()
    try:
        if not resume and any(out.iterdir()) and not overwrite:
            raise OutputExistsError(
                f"--out {out} already exists and is not empty; "
                "choose a new directory or pass --overwrite"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to --out {out}: permission denied")
        if not resume:  # a refused or failed resume keeps the finished run's results
            with contextlib.suppress(FileNotFoundError):
                (out / METRICS_FILE).unlink()
    except BaseException:
        run.release()
        raise
    return run


def _new_run_dir(root: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 1000):
        candidate = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot create {candidate}: {exc.strerror or exc}") from exc
        return candidate
    raise OutputError(f"cannot find a free run directory name under {root}")


def _make_dirs(path: Path) -> tuple[Path, ...]:
    """Create ``path`` and its missing parents; the folders made, ``path`` first."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return tuple(missing)


# -- the model file --------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalBasis:
    """What ``linreg predict --intervals`` needs: the uncertainty of the least-squares fit."""

    r: np.ndarray  # D x D upper-triangular TSQR factor of the centered training features
    x_mean: np.ndarray  # the training features' column means
    sigma: float  # residual standard error of the least-squares fit, sqrt(rss / df_resid)
    samples: int  # training rows
    df_resid: int  # residual degrees of freedom (>= 1)
    confidence: float  # the run's --confidence: the default level of the intervals


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: the model in data units and how it was trained."""

    weight: np.ndarray  # float64, one per feature, data units
    bias: float
    feature_names: tuple[str, ...]
    target_name: str
    scaling_mean: np.ndarray  # standardization used in training (zeros if none)
    scaling_scale: np.ndarray  # (ones if none)
    linear_weight: np.ndarray  # the nn.Linear parameters, in training units
    linear_bias: float
    standardize: bool
    dtype: str
    version: str = __version__
    intervals: IntervalBasis | None = None  # None: undefined for the fit, or an older file
    # none, standardize or whiten (None: as ``standardize`` says, as in files before it);
    # whitened training units are ((x - mean) / scale) @ scaling_transform
    precondition: str | None = None
    scaling_transform: np.ndarray | None = None  # (D, D), with whiten only
    # how the training table's columns became the features (tables.Encoding as JSON: the
    # columns, categorical levels, fill values); None for a file's numbers as they are
    encoding: str | None = None
    # the least-squares state of every row the model has seen (linreg update folds new rows
    # into it); None in files from before it
    state: FitState | None = None

    @property
    def preconditioner(self) -> str:
        if self.precondition is not None:
            return self.precondition
        return "standardize" if self.standardize else "none"

    @property
    def features(self) -> int:
        return int(self.weight.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions in float64 from the data-unit parameters."""
        from .metrics import linear_predict

        return linear_predict(X, self.weight, self.bias)


PRECONDITIONS = ("none", "standardize", "whiten")  # what a model file can record
_TENSORS = ("weight", "bias", "scaling.mean", "scaling.scale", "linear.weight", "linear.bias")
# present together, or not at all (intervals undefined, or a file from before they existed)
_INTERVAL_TENSORS = ("ols.r", "ols.x_mean", "ols.sigma")
_INTERVAL_METADATA = ("ols_samples", "ols_df_resid", "confidence")
_STATE_TENSORS = ("state.mean", "state.factor")


def model_bytes(model: ModelFile) -> bytes:
    """The model as safetensors bytes: raw float64 tensors and string metadata, no code.

    The file is assembled here rather than by ``safetensors.numpy.save`` because that writes
    the metadata in hash-map order, which changes from call to call; here the header is
    sorted JSON and the tensors come in a fixed order, so the same model gives the same bytes.
    """
    tensors = {
        "weight": model.weight,
        "bias": np.array([model.bias]),
        "scaling.mean": model.scaling_mean,
        "scaling.scale": model.scaling_scale,
        "linear.weight": model.linear_weight,
        "linear.bias": np.array([model.linear_bias]),
    }
    names: tuple[str, ...] = _TENSORS
    if model.scaling_transform is not None:
        tensors["scaling.transform"] = model.scaling_transform
        names = (*names, "scaling.transform")
    if model.intervals is not None:
        tensors["ols.r"] = model.intervals.r
        tensors["ols.x_mean"] = model.intervals.x_mean
        tensors["ols.sigma"] = np.array([model.intervals.sigma])
        names = (*names, *_INTERVAL_TENSORS)
    if model.state is not None:
        tensors["state.mean"] = model.state.mean
        tensors["state.factor"] = model.state.factor
        names = (*names, *_STATE_TENSORS)
    tensors = {name: np.ascontiguousarray(tensors[name], dtype="<f8") for name in names}
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "linreg_version": model.version,
        "features": str(model.features),
        "feature_names": json.dumps(list(model.feature_names)),
        "target_name": model.target_name,
        "standardize": json.dumps(model.standardize),
        "precondition": model.preconditioner,
        "dtype": model.dtype,
    }
    if model.encoding is not None:
        metadata["encoding"] = model.encoding
    if model.intervals is not None:
        metadata["ols_samples"] = str(model.intervals.samples)
        metadata["ols_df_resid"] = str(model.intervals.df_resid)
        metadata["confidence"] = repr(float(model.intervals.confidence))
    if model.state is not None:
        metadata["state_samples"] = str(model.state.samples)
    return safetensors_bytes(tensors, metadata)


_DTYPES = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("uint8"): "U8"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file, with a SHA-256 of the tensors and metadata added to the metadata.

    Assembled here rather than by ``safetensors.numpy.save``, which writes the metadata in
    hash-map order (different from call to call): the header is sorted JSON and the tensors
    come in the given order, so the same content gives the same bytes.
    """
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    metadata = {**metadata, "sha256": _checksum(arrays, metadata)}
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, array in arrays.items():
        blob = array.tobytes()
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def read_safetensors(path: Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a file written by ``safetensors_bytes``; ModelFileError for
    anything else: not a regular file, not safetensors (a pickle, a torch.save file),
    truncated, too large, or edited (the checksum of the numbers and the metadata no longer
    matches)."""
    return parse_safetensors(safetensors_file(path, kind), path, kind)


def safetensors_file(path: Path, kind: str) -> bytes:
    """The bytes of a safetensors file, read only when they can be one: a regular file
    (``safeio``) of at most MAX_FILE_BYTES whose size is the one its header declares (8
    bytes of header length, a JSON header of at most MAX_HEADER_BYTES, then the tensors up
    to their largest data offset). The header is read first, so a file that cannot be a
    model costs no more memory than its header; the read is then bounded by that size."""
    advice = _ADVICE.get(kind, f"give the path of a {kind} file that linreg wrote")
    try:
        with safeio.open_regular(path, refuse=ModelFileError, advice=advice) as handle:
            size = safeio.check_size(
                handle,
                path,
                limit=MAX_FILE_BYTES,
                refuse=ModelFileError,
                advice=f"no linreg {kind} file is that large",
            )
            declared = _declared_size(handle, path, kind, size)
            if declared != size:
                raise _not_safetensors(
                    path,
                    kind,
                    f"its header describes {declared} bytes, the file has {size}: truncated"
                    if declared > size
                    else f"{size - declared} bytes follow the data its header describes",
                )
            return safeio.read_all(handle, path, limit=declared, refuse=ModelFileError)
    except OSError as exc:
        raise ModelFileError(f"cannot read {kind} {path}: {exc.strerror or exc}") from exc


_ADVICE = {
    "checkpoint": "a checkpoint is a file that linreg train writes; start the run again "
    "without --resume",
}


def _declared_size(handle: IO[bytes], path: Path, kind: str, size: int) -> int:
    """The size of the file that the safetensors header at the start of ``handle`` says."""
    head = handle.read(8)
    if len(head) < 8:
        raise _not_safetensors(path, kind, f"{len(head)} bytes, shorter than its header length")
    length = int.from_bytes(head, "little")
    if length > MAX_HEADER_BYTES:
        raise _not_safetensors(path, kind, f"a header length of {length} bytes")
    if 8 + length > size:
        raise _not_safetensors(path, kind, f"a header of {length} bytes in a file of {size}")
    try:
        header = json.loads(handle.read(length))
        ends = [
            int(entry["data_offsets"][1])
            for name, entry in header.items()
            if name != "__metadata__"
        ]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise _not_safetensors(path, kind, f"unreadable header: {exc}") from exc
    return 8 + length + max(ends, default=0)


def _not_safetensors(path: Path, kind: str, reason: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a linreg {kind} file (not safetensors: {reason})")


def parse_safetensors(
    raw: bytes, path: Path, kind: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of the bytes of a safetensors file (``safetensors_file``)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(raw)
        metadata = _header_metadata(raw)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise _not_safetensors(path, kind, str(exc)) from exc
    if "sha256" in metadata and metadata["sha256"] != _checksum(tensors, metadata):
        raise ModelFileError(f"{path}: damaged or modified {kind} file (checksum mismatch)")
    return tensors, metadata


def _checksum(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """SHA-256 of the metadata and the numbers, so that an edited file (tampered, or
    bit-rotted) is refused: the names matter as much as the weights, since predict matches
    columns by them."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "sha256":
            digest.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(str(tensors[name].dtype).encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def save_model(path: Path, model: ModelFile) -> None:
    write_bytes(path, model_bytes(model))


def load_model(path: Path) -> ModelFile:
    """Read a model file, refusing anything that is not a complete linreg model.

    safetensors holds raw numbers and a JSON header, so loading never executes code; a
    pickle, a ``torch.save`` file, a truncated or edited file all fail the checks below, and
    what is not a regular file of a model's size is refused before it is read
    (``safetensors_file``).
    """
    return model_from_bytes(safetensors_file(path, "model"), path)


def model_from_bytes(raw: bytes, path: Path) -> ModelFile:
    """The model in the bytes of the model file ``path`` (named in the messages)."""
    tensors, metadata = parse_safetensors(raw, path, "model")
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a linreg model file (no '{MODEL_FORMAT}' marker)")
    if metadata.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {metadata.get('format_version')!r}; "
            f"this linreg reads version {MODEL_FORMAT_VERSION}"
        )
    try:
        features = int(metadata["features"])
        names = tuple(json.loads(metadata["feature_names"]))
        standardize = json.loads(metadata["standardize"])
        target_name = metadata["target_name"]
        dtype = metadata["dtype"]
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: damaged model metadata ({exc})") from exc
    expected = {
        "weight": (features,),
        "bias": (1,),
        "scaling.mean": (features,),
        "scaling.scale": (features,),
        "linear.weight": (features,),
        "linear.bias": (1,),
    }
    for name, shape in expected.items():
        tensor = tensors.get(name)
        if tensor is None or tensor.shape != shape or tensor.dtype != np.float64:
            raise ModelFileError(f"{path}: damaged model file (tensor {name!r} missing or wrong)")
        if not np.all(np.isfinite(tensor)):
            raise ModelFileError(f"{path}: damaged model file (tensor {name!r} is not finite)")
    intervals = _interval_basis(path, tensors, metadata, features)
    precondition = metadata.get("precondition", "standardize" if standardize else "none")
    transform = tensors.get("scaling.transform")
    if precondition not in PRECONDITIONS or (transform is not None) != (precondition == "whiten"):
        raise ModelFileError(f"{path}: damaged model metadata (precondition {precondition!r})")
    if transform is not None and (
        transform.shape != (features, features)
        or transform.dtype != np.float64
        or not np.all(np.isfinite(transform))
    ):
        raise ModelFileError(f"{path}: damaged model file (tensor 'scaling.transform' wrong)")
    state = _fit_state(path, tensors, metadata, features)
    expected_names = set(_TENSORS) | (set(_INTERVAL_TENSORS) if intervals is not None else set())
    if state is not None:
        expected_names |= set(_STATE_TENSORS)
    if transform is not None:
        expected_names.add("scaling.transform")
    if set(tensors) != expected_names or len(names) != features:
        raise ModelFileError(f"{path}: damaged model file (unexpected contents)")
    if "sha256" not in metadata:
        raise ModelFileError(f"{path}: damaged model file (no checksum)")
    if not all(isinstance(n, str) for n in names) or not isinstance(standardize, bool):
        raise ModelFileError(f"{path}: damaged model metadata")
    encoding = metadata.get("encoding")
    if encoding is not None:
        from .tables import Encoding

        try:
            decoded = Encoding.from_json(encoding)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{path}: damaged model metadata (encoding: {exc})") from exc
        if decoded.feature_names != names:
            raise ModelFileError(f"{path}: damaged model metadata (encoding and feature names)")
    return ModelFile(
        weight=tensors["weight"],
        bias=float(tensors["bias"][0]),
        feature_names=names,
        target_name=target_name,
        scaling_mean=tensors["scaling.mean"],
        scaling_scale=tensors["scaling.scale"],
        linear_weight=tensors["linear.weight"],
        linear_bias=float(tensors["linear.bias"][0]),
        standardize=standardize,
        dtype=dtype,
        version=metadata.get("linreg_version", "unknown"),
        intervals=intervals,
        precondition=precondition,
        scaling_transform=transform,
        encoding=encoding,
        state=state,
    )


def _fit_state(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str], features: int
) -> FitState | None:
    """The least-squares state of a model file: all of it or none (a file from before it)."""
    from .metrics import FitState

    present = [name in tensors for name in _STATE_TENSORS] + ["state_samples" in metadata]
    if not any(present):
        return None
    damaged = ModelFileError(f"{path}: damaged model file (least-squares state wrong)")
    if not all(present):
        raise damaged
    mean, factor = (tensors[name] for name in _STATE_TENSORS)
    try:
        samples = int(metadata["state_samples"])
    except ValueError:
        raise damaged from None
    if (
        mean.shape != (features + 1,)
        or factor.shape != (features + 1, features + 1)
        or not all(a.dtype == np.float64 and np.all(np.isfinite(a)) for a in (mean, factor))
        or samples < 1
        or np.any(np.tril(factor, -1) != 0)
    ):
        raise damaged
    return FitState(samples=samples, mean=mean, factor=factor)


def _interval_basis(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str], features: int
) -> IntervalBasis | None:
    """The interval data of a model file: all of it or none (an older file, or a fit whose
    intervals are undefined); a part of it, or values out of range, mean a damaged file."""
    present = [name in tensors for name in _INTERVAL_TENSORS]
    present += [key in metadata for key in _INTERVAL_METADATA]
    if not any(present):
        return None
    damaged = ModelFileError(f"{path}: damaged model file (interval data incomplete or wrong)")
    if not all(present):
        raise damaged
    r, x_mean, sigma = (tensors[name] for name in _INTERVAL_TENSORS)
    if (r.shape, x_mean.shape, sigma.shape) != ((features, features), (features,), (1,)):
        raise damaged
    try:
        samples = int(metadata["ols_samples"])
        df_resid = int(metadata["ols_df_resid"])
        confidence = float(metadata["confidence"])
    except ValueError:
        raise damaged from None
    arrays_ok = all(a.dtype == np.float64 and np.all(np.isfinite(a)) for a in (r, x_mean, sigma))
    if not (
        arrays_ok
        and 1 <= df_resid < samples
        and 0 < confidence < 1
        and sigma[0] >= 0
        and np.all(np.diag(r) != 0)
        and np.all(np.tril(r, -1) == 0)
    ):
        raise damaged
    return IntervalBasis(
        r=r,
        x_mean=x_mean,
        sigma=float(sigma[0]),
        samples=samples,
        df_resid=df_resid,
        confidence=confidence,
    )


def _header_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte length, then JSON)."""
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a mapping")
    return {str(k): str(v) for k, v in metadata.items()}
