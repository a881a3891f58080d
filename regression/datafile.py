"""Reading and writing data files: CSV/TSV, .npy (memory-mapped), .npz and .parquet.

A file is read as a table of numeric columns (with names when it has a header), checked for
what would silently spoil a fit (text, NaN, infinity, ragged rows), and then split into the
feature matrix and the target column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import CHUNK_ROWS, Dataset, chunks
from .distributed import SINGLE, World
from .errors import DataError

FORMATS = (".csv", ".tsv", ".npy", ".npz", ".parquet")
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

    @property
    def columns(self) -> int:
        if self.values is not None:
            return int(self.values.shape[1])
        assert self.X is not None
        return int(self.X.shape[1]) + 1

    @property
    def rows(self) -> int:
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
    if suffix not in FORMATS:
        raise DataError(
            f"{path}: unsupported data format {suffix or '(none)'!r}; use {', '.join(FORMATS)}"
        )
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    try:
        if suffix in (".csv", ".tsv"):
            table = _read_delimited(path, "\t" if suffix == ".tsv" else ",", shard)
        elif suffix == ".npy":
            table = _read_npy(path, shard)
        elif suffix == ".npz":
            table = _read_npz(path)
        else:
            table = _read_parquet(path)
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if table.rows < min_rows and not table.sharded:
        raise DataError(f"{path}: has {table.rows} data row(s); at least {min_rows} are needed")
    return table


def _read_delimited(
    path: Path, delimiter: str, shard: Callable[[int], tuple[int, int]] | None = None
) -> Table:
    """CSV/TSV with quoted fields, blank lines skipped, a header row detected.

    The first non-blank row is a header when none of its cells is a number. Every other
    cell must be a finite number; errors give the line and column (1-based). With ``shard``
    (under torchrun) only this rank's byte range of the file is parsed: the lines that
    start in it (a quoted field must then not span lines).
    """
    rows: list[list[float]] = []
    names: tuple[str, ...] | None = None
    width = 0
    first_line = 1
    try:
        if shard is None:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                text = handle.read()
        else:
            header, text, first_line = _byte_shard(path, shard)
            cells = next(csv.reader([header], delimiter=delimiter), [])
            width = len(cells)
            if cells and not any(_is_number(cell) for cell in cells):
                names = tuple(cell.strip() for cell in cells)
                _check_names(path, names)
        reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
        for cells in reader:
            if not cells or all(not cell.strip() for cell in cells):
                continue
            line = first_line + reader.line_num - 1
            if width == 0 or (line == 1 and names is not None):
                width = len(cells)
                if not any(_is_number(cell) for cell in cells):
                    names = tuple(cell.strip() for cell in cells)
                    _check_names(path, names)
                    continue
            if len(cells) != width:
                raise DataError(
                    f"{path} line {line}: {len(cells)} fields, expected {width} (ragged rows)"
                )
            rows.append([_number(path, line, col, cell, names) for col, cell in enumerate(cells)])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    if width == 0:
        raise DataError(f"{path}: the file is empty")
    if not rows and shard is None:
        raise DataError(f"{path}: has a header but no data rows")
    values = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    return Table(path=path, values=values, names=names, sharded=shard is not None)


def _byte_shard(path: Path, shard: Callable[[int], tuple[int, int]]) -> tuple[str, str, int]:
    """The file's first line, the text of the lines that start in this rank's share of the
    bytes, and the line number of the first of those."""
    size = path.stat().st_size
    start, end = shard(size)
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8-sig")
        if start == 0:
            position = 0
        else:
            handle.seek(start - 1)
            handle.readline()  # the line under way at `start` belongs to the rank before
            position = handle.tell()
        handle.seek(0)
        line = 1
        for _ in range(0, position, 1 << 20):  # count the lines before, for error messages
            line += handle.read(min(1 << 20, position - handle.tell())).count(b"\n")
        handle.seek(position)
        data = handle.read(max(0, end - position)) if position < end else b""
        if data and not data.endswith(b"\n"):
            data += handle.readline()  # the last line starts in this share: finish it
    return header, data.decode("utf-8-sig" if position == 0 else "utf-8"), line


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(path: Path, line: int, col: int, cell: str, names: tuple[str, ...] | None) -> float:
    where = f"{path} line {line}, column {col + 1}" + (f" ({names[col]})" if names else "")
    text = cell.strip()
    if not text:
        raise DataError(f"{where}: empty cell")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {text} is not a finite number (NaN and inf cannot be fitted)")
    return value


def _check_names(path: Path, names: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{path} line 1, column {i + 1}: empty column name in the header")
        if name in seen:
            raise DataError(f"{path}: column name {name!r} appears twice in the header")
        seen.add(name)


def _read_npy(path: Path, shard: Callable[[int], tuple[int, int]] | None = None) -> Table:
    """A 2-D numeric array, memory-mapped: rows are read from disk as they are used. With
    ``shard`` (under torchrun) only this rank's rows are read and checked."""
    _check_magic(path, b"\x93NUMPY", "a .npy file")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from exc
    rows = shard(array.shape[0]) if shard is not None and array.ndim == 2 else None
    return Table(path=path, values=_numeric_2d(path, array, "the array", rows), names=None)


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    with path.open("rb") as handle:
        if handle.read(len(magic)) != magic:
            raise DataError(f"{path}: not {what} (wrong file signature)")


def _read_npz(path: Path) -> Table:
    """Arrays ``X`` (2-D) and ``y`` (1-D, or one column), or a single 2-D array."""
    import zipfile

    _check_magic(path, b"PK", "an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
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


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet needs the optional extra 'parquet' ({PARQUET_EXTRA})"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/ArrowIOError family
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc
    names = tuple(table.column_names)
    columns = []
    for name in names:
        column = table.column(name).to_numpy(zero_copy_only=False)
        if column.dtype.kind not in "biuf":
            raise DataError(f"{path}: column {name!r} is {column.dtype}, not numeric")
        columns.append(column.astype(np.float64))
    if not columns:
        raise DataError(f"{path}: the file has no columns")
    values = np.column_stack(columns)
    _check_finite(path, values, names)
    return Table(path=path, values=values, names=names)


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
    names = table.column_names()
    if target is None:
        return table.columns - 1
    if table.names is not None and target in table.names:
        return table.names.index(target)
    try:
        index = int(target)
    except ValueError:
        if table.names is None:
            raise DataError(
                f"--target {target!r}: {table.path} has no header row, so columns are chosen "
                f"by 0-based index, 0 to {table.columns - 1}"
            ) from None
        raise DataError(
            f"--target {target!r} is not a column of {table.path}; columns: {', '.join(names)}"
        ) from None
    if not -table.columns <= index < table.columns:
        raise DataError(
            f"--target {index} is out of range: {table.path} has {table.columns} columns "
            f"(0 to {table.columns - 1})"
        )
    return index % table.columns


def load_dataset(path: Path, target: str | None = None, world: World = SINGLE) -> Dataset:
    """The file's features and target; under torchrun a memory-mapped .npy is only read
    (and checked) in this rank's rows."""
    return select_target(read_table(path, shard=world.shard if world.distributed else None), target)


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
