"""Reading and writing data files: CSV/TSV, .npy (memory-mapped), .npz and .parquet.

A file is read as a table of numeric columns (with names when it has a header), checked for
what would silently spoil a fit (text, NaN, infinity, ragged rows), and then split into the
feature matrix and the target column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .config import NA_VALUES, TrainConfig
from .data import CHUNK_ROWS, Dataset, chunks
from .distributed import SINGLE, World
from .errors import DataError
from .tables import (
    BINARY_SUFFIXES,
    STDIN,
    Batch,
    Header,
    TableOptions,
    column_index,
    encode_columns,
    merge_profiles,
    numeric_batch,
    open_data,
    open_text,
    read_batch,
    read_header,
    read_text_table,
    shard_text,
    text_format,
)

FORMATS = (".csv", ".tsv", ".npy", ".npz", ".parquet")
TEXT_SUFFIXES = (".csv.gz", ".tsv.gz", ".csv.bz2", ".tsv.bz2", ".csv.zst", ".tsv.zst")
PARQUET_EXTRA = "pip install 'linreg-torch-cli[parquet]'"


@dataclass(frozen=True)
class Table:
    """Numeric columns read from a file. ``names`` is None for a file without a header.

    ``target`` is set when the file itself says which column is the target (an .npz with
    arrays ``X`` and ``y``); ``values`` may then be None and ``X``/``y`` hold the arrays.
    """

    path: Path
    values: np.ndarray | None  # (rows, columns); memory-mapped for .npy
    names: tuple[str, ...] | None
    X: np.ndarray | None = None
    y: np.ndarray | None = None
    sharded: bool = False  # holds only this rank's rows (a CSV read by byte range)
    batch: Batch | None = None  # parquet: the columns (text ones as str, None where missing)

    @property
    def columns(self) -> int:
        if self.batch is not None:
            return len(self.batch)
        if self.values is not None:
            return int(self.values.shape[1])
        assert self.X is not None
        return int(self.X.shape[1]) + 1

    @property
    def rows(self) -> int:
        if self.batch is not None:
            return len(self.batch[0]) if self.batch else 0
        array = self.values if self.values is not None else self.X
        assert array is not None
        return int(array.shape[0])

    def column_names(self) -> tuple[str, ...]:
        """The names, or ``x1..xD, y`` style names by position for a headerless table."""
        if self.names is not None:
            return self.names
        return (*(f"x{j + 1}" for j in range(self.columns - 1)), "y")


def read_table(
    path: Path, *, min_rows: int = 2, shard: Callable[[int], tuple[int, int]] | None = None
) -> Table:
    """Read ``path`` by its suffix; DataError (naming the file) for anything unusable.
    Fitting needs ``min_rows`` = 2 rows at least; predicting needs one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if text_format(str(path), None) is not None:
        table = _read_text(path, shard)
        if table.rows < min_rows and not table.sharded:
            raise DataError(f"{path}: has {table.rows} data row(s); at least {min_rows} are needed")
        return table
    if suffix not in BINARY_SUFFIXES:
        raise DataError(
            f"{path}: unsupported data format {suffix or '(none)'!r}; use {', '.join(FORMATS)}, "
            f"{', '.join(TEXT_SUFFIXES)}, or - for CSV on stdin (--format csv|tsv where the "
            "name cannot tell)"
        )
    try:
        with open_data(path) as handle:  # DataError unless a regular file
            if suffix == ".npy":
                table = _read_npy(path, handle, shard)
            elif suffix == ".npz":
                table = _read_npz(path, handle)
            else:
                table = _read_parquet(path, handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if table.rows < min_rows and not table.sharded:
        raise DataError(f"{path}: has {table.rows} data row(s); at least {min_rows} are needed")
    return table


def _read_text(path: Path, shard: Callable[[int], tuple[int, int]] | None) -> Table:
    """A text table's columns as they are (numbers, or text where a column holds any),
    missing cells NaN or None: a table of numbers in ``values`` when every column is."""
    file = open_text(str(path), None)
    if shard is not None and file.compression is None:
        file = shard_text(file, shard)
    header = read_header(file)
    try:
        batch = read_batch(file, header, set(), NA_VALUES, numeric=set())
    except DataError:
        if file.shard is None:
            raise
        batch = [np.zeros(0) for _ in range(header.width)]  # a share without rows
    sharded = file.shard is not None
    if all(column.dtype != object for column in batch):
        values = np.column_stack(batch) if batch else np.zeros((0, header.width))
        return Table(path=path, values=values, names=header.names, sharded=sharded)
    return Table(path=path, values=None, names=header.names, batch=batch, sharded=sharded)


def _read_npy(
    path: Path, handle: BinaryIO, shard: Callable[[int], tuple[int, int]] | None = None
) -> Table:
    """A 2-D numeric array, memory-mapped: rows are read from disk as they are used. With
    ``shard`` (under torchrun) only this rank's rows are read and checked."""
    _check_magic(path, handle, b"\x93NUMPY", "a .npy file")
    try:
        array = _map_npy(handle)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from exc
    rows = shard(array.shape[0]) if shard is not None and array.ndim == 2 else None
    return Table(path=path, values=_numeric_2d(path, array, "the array", rows), names=None)


def _map_npy(handle: BinaryIO) -> np.ndarray:
    """The .npy array in ``handle``, mapped read-only (the mapping keeps the file open):
    ``np.load`` maps only a path, which it would open again, unchecked. ValueError for a
    file that is not a numeric .npy array."""
    from numpy.lib import format as npy

    version = npy.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(handle)
    else:  # 3.0 holds only structured arrays with non-Latin-1 field names
        raise ValueError(f"format version {version[0]}.{version[1]} is not a numeric array")
    if dtype.hasobject:
        raise ValueError("an array of Python objects, which is never unpickled")
    mapped: np.ndarray = np.memmap(
        handle,
        dtype=dtype,
        mode="r",
        shape=shape,
        order="F" if fortran else "C",
        offset=handle.tell(),
    )
    return mapped


def _check_magic(path: Path, handle: BinaryIO, magic: bytes, what: str) -> None:
    if handle.read(len(magic)) != magic:
        raise DataError(f"{path}: not {what} (wrong file signature)")
    handle.seek(0)


def _read_npz(path: Path, handle: BinaryIO) -> Table:
    """Arrays ``X`` (2-D) and ``y`` (1-D, or one column), or a single 2-D array."""
    import zipfile

    _check_magic(path, handle, b"PK", "an .npz archive")
    try:
        archive = np.load(handle, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive")
    with archive:
        keys = list(archive.keys())
        try:
            if "X" in keys and "y" in keys:
                X = _numeric_2d(path, archive["X"], "array X")
                y = np.asarray(archive["y"])
                if y.ndim == 2 and y.shape[1] == 1:
                    y = y[:, 0]
                if y.ndim != 1 or y.shape[0] != X.shape[0]:
                    raise DataError(
                        f"{path}: array y has shape {y.shape}; expected ({X.shape[0]},) to match X"
                    )
                y = _numeric(path, y, "array y")
                _check_finite(path, y.reshape(-1, 1), ("y",))
                return Table(path=path, values=None, names=None, X=X, y=y)
            if len(keys) == 1:
                return Table(
                    path=path,
                    values=_numeric_2d(path, archive[keys[0]], f"array {keys[0]}"),
                    names=None,
                )
        except ValueError as exc:
            raise DataError(f"{path}: cannot read array ({exc})") from exc
    raise DataError(
        f"{path}: expected arrays 'X' and 'y', or a single 2-D array; found {keys or 'none'}"
    )


def _read_parquet(path: Path, handle: BinaryIO) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet needs the optional extra 'parquet' ({PARQUET_EXTRA})"
        ) from None
    try:
        table = pq.read_table(handle)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/ArrowIOError family
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    names = tuple(table.column_names)
    if not names:
        raise DataError(f"{path}: the file has no columns")
    batch: Batch = []
    for name in names:
        column = table.column(name)
        values = column.to_numpy(zero_copy_only=False)
        if values.dtype.kind in "biuf":
            batch.append(values.astype(np.float64))
        elif values.dtype.kind in "OUT" or str(column.type) in ("string", "large_string"):
            batch.append(
                np.array(
                    [None if v is None else str(v).strip() for v in values.tolist()], dtype=object
                )
            )
        else:
            raise DataError(f"{path}: column {name!r} is {column.type}, neither numbers nor text")
    numeric = all(column.dtype != object for column in batch)
    # the batch is kept either way: its missing and infinite cells are checked when encoded
    values = np.column_stack(batch) if numeric else None
    return Table(path=path, values=values, names=names, batch=batch)


def _numeric(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} has dtype {array.dtype}; a numeric array is needed")
    return array


def _numeric_2d(
    path: Path, array: np.ndarray, what: str, rows: tuple[int, int] | None = None
) -> np.ndarray:
    if array.ndim != 2:
        raise DataError(
            f"{path}: {what} has {array.ndim} dimension(s), shape {array.shape}; "
            "a 2-D array (rows x columns) is needed"
        )
    _numeric(path, array, what)
    first, last = rows if rows is not None else (0, array.shape[0])
    _check_finite(path, array[first:last], None, offset=first)
    return array


def _check_finite(
    path: Path, array: np.ndarray, names: tuple[str, ...] | None, offset: int = 0
) -> None:
    """Scan in chunks (a memory-mapped file is never loaded whole); report the first bad cell."""
    if array.dtype.kind != "f":
        return
    for start, chunk in chunks(array):
        bad = ~np.isfinite(chunk)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            name = f" ({names[col]})" if names else ""
            raise DataError(
                f"{path}: row {offset + start + row + 1}, column {col + 1}{name} is "
                f"{chunk[row, col]}; NaN and inf cannot be fitted"
            )


def select_target(table: Table, target: str | None) -> Dataset:
    """Split a table into features and target. ``target`` is a column name or a 0-based
    index; None means the last column (or ``y`` of an .npz with X and y)."""
    if table.values is None:
        assert table.X is not None and table.y is not None
        if target not in (None, "y", str(table.columns - 1), "-1"):
            raise DataError(
                f"--target {target}: {table.path} holds arrays X and y, so the target is y"
            )
        names = tuple(f"x{j + 1}" for j in range(table.X.shape[1]))
        return Dataset(
            X=table.X, y=table.y, feature_names=names, target_name="y", source=str(table.path)
        )
    names = table.column_names()
    index = target_index(table, target)
    if table.columns < 2:
        raise DataError(f"{table.path}: only one column ({names[0]}); no feature columns are left")
    keep = [j for j in range(table.columns) if j != index]
    last = index == table.columns - 1
    X = table.values[:, :-1] if last else table.values[:, keep]  # a view when the target is last
    y = table.values[:, index]
    feature_names = tuple(names[j] for j in keep)
    if table.names is None:
        feature_names = tuple(f"x{j + 1}" for j in range(len(keep)))
    target_name = names[index] if table.names is not None else "y"
    return Dataset(
        X=X,
        y=y,
        feature_names=feature_names,
        target_name=target_name,
        source=str(table.path),
        sharded=table.sharded,
    )


def target_index(table: Table, target: str | None) -> int:
    if target is None:
        return table.columns - 1
    header = Header(names=table.names, width=table.columns)
    return column_index(header, str(table.path), "--target", target)


def load_dataset(
    path: Path | str,
    target: str | None = None,
    world: World = SINGLE,
    *,
    options: TableOptions | None = None,
    fmt: str | None = None,
    stream: bool = False,
) -> Dataset:
    """The file's features and target, with the column and cell ``options``.

    Text tables (CSV/TSV, compressed, or ``-`` for stdin) are read by ``tables``; with
    ``stream`` (mini-batches) they are encoded into a temporary memory-mapped file, so memory
    stays bounded whatever their size. Under torchrun an uncompressed text file or a
    memory-mapped .npy is only read (and checked) in this rank's share.
    """
    options = options if options is not None else TableOptions(target=target)
    name = str(path)
    if name == STDIN or text_format(name, fmt) is not None:
        return _load_text(name, options, fmt, world, stream)
    if fmt is not None:
        raise DataError(f"--format {fmt} is for text data (CSV or TSV); {name} is not text")
    table = read_table(Path(name), shard=world.shard if world.distributed else None)
    if table.batch is None and _plain(options):
        return select_target(table, options.target)
    header, batch = columns_of(table)
    X, y, encoding, dropped = encode_columns(header, batch, str(table.path), options)
    return Dataset(
        X=X,
        y=y,
        feature_names=encoding.feature_names,
        target_name=encoding.target,
        source=str(table.path),
        sharded=table.sharded,
        encoding=encoding,
        dropped=dropped,
    )


def table_options(config: TrainConfig) -> TableOptions:
    """The column and cell options of a training configuration."""
    return TableOptions(
        target=config.target,
        features=config.feature_columns,
        exclude=config.exclude,
        categorical=config.categorical,
        missing=config.missing,
        na_values=config.na_values,
        max_levels=config.max_levels,
    )


def _plain(options: TableOptions) -> bool:
    return not (options.features or options.exclude or options.categorical) and (
        options.missing == "error"
    )


def columns_of(table: Table) -> tuple[Header, Batch]:
    if table.batch is not None:
        return Header(names=table.names, width=len(table.batch)), table.batch
    if table.values is None:
        assert table.X is not None and table.y is not None
        return Header(names=None, width=table.columns), numeric_batch(
            np.column_stack([table.X, table.y])
        )
    return Header(names=table.names, width=table.columns), numeric_batch(table.values)


def _load_text(
    name: str, options: TableOptions, fmt: str | None, world: World, stream: bool
) -> Dataset:
    file = open_text(name, fmt)
    merge = None
    try:
        if world.distributed and file.compression is None and not file.spooled:
            file = shard_text(file, world.shard)

            def merge(profiles: dict[str, Any]) -> tuple[dict[int, Any], set[int]]:
                return merge_profiles(
                    [json.loads(part) for part in world.gather_text(json.dumps(profiles))]
                )

        read = read_text_table(file, options, spill=spill_array if stream else None, merge=merge)
    finally:
        file.close()
    if read.X.shape[0] < 2 and file.shard is None:
        after = f" after dropping {read.dropped} with missing values" if read.dropped else ""
        raise DataError(
            f"{file.label}: has {read.X.shape[0]} data row(s){after}; at least 2 are needed"
        )
    return Dataset(
        X=read.X,
        y=read.y,
        feature_names=read.encoding.feature_names,
        target_name=read.encoding.target,
        source=file.label,
        sharded=file.shard is not None,
        encoding=read.encoding,
        dropped=read.dropped,
    )


def spill_array(rows: int, columns: int) -> np.ndarray:
    """A float64 (rows, columns) array in a temporary file, mapped into memory: the file is
    unlinked at once (its space is given back when the mapping goes) and its blocks are
    reserved first, so a full disk is an error here rather than a crash (SIGBUS) later.
    The folder is $TMPDIR (default /tmp)."""
    import os
    import tempfile

    size = max(rows * columns * 8, 8)
    fd, tmp = tempfile.mkstemp(prefix="linreg-table-", suffix=".f64")
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise DataError(
                f"cannot stage the table in {Path(tmp).parent} ({size / 1e6:.0f} MB for "
                f"--batch-size): {exc.strerror}; set TMPDIR to a folder with room"
            ) from exc
        return np.memmap(tmp, dtype=np.float64, mode="r+", shape=(rows, columns))
    finally:
        os.close(fd)
        os.unlink(tmp)


def write_table(path: Path, X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> bytes:
    """The bytes of a data file with columns ``names`` (features then target) by suffix."""
    import io

    suffix = Path(path).suffix.lower()
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, np.column_stack([X, y]))
    elif suffix == ".npz":
        np.savez(buffer, X=X, y=y)
    elif suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        text = io.StringIO()
        text.write(delimiter.join(names) + "\n")
        table = np.column_stack([X, y])
        for start in range(0, table.shape[0], CHUNK_ROWS):
            # repr-exact values: reading the file back gives the same numbers
            for row in table[start : start + CHUNK_ROWS].tolist():
                text.write(delimiter.join(map(repr, row)) + "\n")
        buffer.write(text.getvalue().encode())
    else:
        raise DataError(
            f"{path}: unsupported output format {suffix!r}; use .csv, .tsv, .npy or .npz"
        )
    return buffer.getvalue()
