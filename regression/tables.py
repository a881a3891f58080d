"""Tables as analysts have them: text files (CSV/TSV, compressed, or on stdin) read into
typed columns, and those columns encoded into the feature matrix a fit needs.

Reading. pyarrow's CSV reader (multi-threaded, typed, streaming) does the parsing where it
is installed; Python's ``csv`` module reads the same files, more slowly and in memory,
where it is not. Every column is first read as numbers; a column with a cell that is not a
number (or one named by ``--categorical``) is read again as text. When something is wrong
with a cell, the file is scanned again by the ``csv`` module to name its line and column,
so the messages are the same whichever reader parsed it.

Encoding (``Encoding``, fitted once from the training rows by ``fit_encoding`` and stored
in the model file so that ``predict`` does the same): numeric columns as they are;
categorical ones in treatment coding, one 0/1 column per level but the reference level (the
most frequent one; ties go to the first in sorted order), named ``column=level``; missing
cells refused, dropped with their rows, or filled with the training mean plus a 0/1
``missing(column)`` indicator.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import numpy as np

from . import safeio
from .config import MAX_LEVELS, MISSING_POLICIES, NA_VALUES
from .data import release
from .errors import DataError

UNKNOWN_POLICIES = ("error", "zero")  # predict --unknown-level
DELIMITERS = {"csv": ",", "tsv": "\t"}
# compressed text by the last suffix: the codec's name for pyarrow (Python's csv reader
# takes .gz and .bz2 too; .zst needs pyarrow, Python's zstd module being 3.14+)
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
STDIN = "-"
MAGIC = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".zst": b"\x28\xb5\x2f\xfd"}  # stdin's
# bytes of text a batch of pyarrow's streaming reader: it parses about 20 ahead, so this
# bounds the memory of a streamed read (16 MB blocks: about 300 MB held; 1 MB: 40 MB)
ARROW_BLOCK_BYTES = 1 << 20
# its multi-threaded whole-file reader: a batch (about 40,000 rows of 8 numbers) is encoded
# while it is in cache, into the feature matrix, and then let go
ARROW_WHOLE_BLOCK_BYTES = 4 << 20
HUGE_ARRAY_BYTES = 64 << 20  # a feature matrix this large is put in huge pages
MAX_ENCODE_THREADS = 8
PYTHON_BATCH_ROWS = 1 << 16


# -- where the text comes from ---------------------------------------------------------------


@dataclass(frozen=True)
class TextFile:
    """A delimited text file: ``label`` names it in messages (the path as given, or
    ``<stdin>``); ``path`` is what is read (stdin is first copied to a temporary file, so
    that it can be read twice: once to learn the columns, once to encode them)."""

    label: str
    path: Path
    delimiter: str
    compression: str | None  # a key of COMPRESSIONS
    spooled: bool = False  # path is a temporary copy of stdin, removed by close()
    # under torchrun (shard_text): the header's lines and this rank's lines, and how many
    # lines of the file come before the first of this rank's; the whole file's header
    shard: tuple[bytes, int] | None = None
    header: Header | None = None

    @property
    def first_line(self) -> int:
        """The file's line number of the first line that open_binary gives."""
        if self.shard is None or self.header is None:
            return 1
        return self.shard[1] + 1 - self.header.line

    @contextlib.contextmanager
    def open_binary(self) -> Iterator[IO[bytes]]:
        """The file's bytes, decompressed."""
        if self.shard is not None:
            yield io.BytesIO(self.shard[0])
            return
        if self.compression == ".zst" and _arrow() is None:
            raise DataError(
                f"{self.label}: reading {self.compression} files needs pyarrow "
                "(pip install 'linreg-torch-cli[csv]')"
            )
        with open_data(self.path) as handle:
            if self.compression is None:
                yield handle
            elif self.compression == ".gz":
                with gzip.GzipFile(fileobj=handle, mode="rb") as unzipped:
                    yield cast(IO[bytes], unzipped)
            elif self.compression == ".bz2":
                with bz2.BZ2File(handle, "rb") as unzipped:
                    yield cast(IO[bytes], unzipped)
            else:
                import pyarrow as pa

                with pa.input_stream(handle, compression="zstd") as stream:
                    yield stream

    def close(self) -> None:
        if self.spooled:
            with contextlib.suppress(OSError):
                self.path.unlink()


BINARY_SUFFIXES = (".npy", ".npz", ".parquet")
DATA_ADVICE = "name a data file, or use --data - to read a pipe"


def open_data(path: Path | str) -> BinaryIO:
    """A data file opened for reading: DataError when it is not a regular file (a FIFO, a
    device, a directory: ``safeio``); OSError (no such file, no permission) as it comes."""
    return safeio.open_regular(path, refuse=DataError, advice=DATA_ADVICE)


def text_format(path: str, fmt: str | None) -> tuple[str, str | None] | None:
    """(csv or tsv, compression) of a path by its suffixes, ``fmt`` (--format) overriding
    the text format; None when it is not a text table (and DataError when ``fmt`` is given
    for a binary format's suffix)."""
    name = path.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    if compression is not None:
        name = name[: -len(compression)]
    suffix = os.path.splitext(name)[1]
    if fmt is not None:
        if suffix in BINARY_SUFFIXES:
            raise DataError(f"--format {fmt} is for text data (CSV or TSV); {path} is not text")
        return fmt, compression
    if suffix in (".csv", ".tsv"):
        return suffix[1:], compression
    return None


def open_text(path: str, fmt: str | None) -> TextFile:
    """The text table at ``path`` (``-`` for stdin, which needs ``fmt`` or defaults to
    CSV); DataError when it is missing or not a file."""
    if path == STDIN:
        return _spool_stdin(DELIMITERS[fmt or "csv"])
    kind = text_format(path, fmt)
    assert kind is not None
    file = Path(path)
    try:
        open_data(file).close()  # refused here, before its columns are looked at
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return TextFile(label=path, path=file, delimiter=DELIMITERS[kind[0]], compression=kind[1])


def _spool_stdin(delimiter: str) -> TextFile:
    """stdin copied to a temporary file (gzip, bzip2 and zstd input is recognised by its
    magic bytes); the copy is removed by ``TextFile.close``."""
    source = sys.stdin.buffer
    fd, name = tempfile.mkstemp(prefix="linreg-stdin-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise DataError(f"<stdin>: cannot be copied to a temporary file ({exc.strerror})") from exc
    path = Path(name)
    with path.open("rb") as handle:
        magic = handle.read(4)
    compression = next((c for c, m in MAGIC.items() if magic.startswith(m)), None)
    return TextFile(
        label="<stdin>",
        path=path,
        delimiter=delimiter,
        compression=compression,
        spooled=True,
    )


# -- columns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The file's column names (None: no header row, columns are known by position) and
    how many there are."""

    names: tuple[str, ...] | None
    width: int
    line: int = 0  # the header's last line in the file (0: no header)

    def name(self, j: int) -> str:
        return self.names[j] if self.names is not None else str(j)

    def where(self, j: int) -> str:
        return f"column {j + 1}" + (f" ({self.names[j]})" if self.names is not None else "")


# A batch of rows: one array per column of the file, float64 (NaN where missing) for a
# column read as numbers, object (str, None where missing) for one read as text.
Batch = list[np.ndarray]


class _TextColumn(Exception):
    """pyarrow found a cell that is not a number in column ``index``: read it as text."""

    def __init__(self, index: int) -> None:
        self.index = index


class CellProblem(Exception):
    """A cell that cannot be used (``kind``: text where a number is needed, nonfinite,
    missing, unknown level), at data row ``row`` (0-based, counting the data rows of the
    file; None: the first cell of the column that is not a number) of column ``column``."""

    def __init__(
        self,
        kind: str,
        column: int,
        row: int | None,
        value: str = "",
        *,
        levels: str = "",
        na_values: tuple[str, ...] = (),
    ) -> None:
        self.kind, self.column, self.row, self.value = kind, column, row, value
        self.levels, self.na_values = levels, na_values


def _arrow() -> Any:
    try:
        import pyarrow.csv as arrow_csv
    except ImportError:
        return None
    return arrow_csv


def shard_text(file: TextFile, shard: Callable[[int], tuple[int, int]]) -> TextFile:
    """``file`` (uncompressed, on disk) cut to this rank's share of its bytes: the lines
    that start in ``shard(size)``'s range, after the header's lines (which come first, so
    that each share reads as a file of its own). The header is the whole file's."""
    header = read_header(file)
    with open_data(file.path) as handle:
        start, end = shard(safeio.size_of(handle))
        prefix = b"".join(handle.readline() for _ in range(header.line))
        if start <= len(prefix):
            position = len(prefix)
        else:
            handle.seek(start - 1)
            _line_bytes(handle, file.label)  # the line under way at `start` is the rank before's
            position = handle.tell()
        handle.seek(0)
        before = 0
        for _ in range(0, position, 1 << 20):  # count the lines before, for error messages
            before += handle.read(min(1 << 20, position - handle.tell())).count(b"\n")
        handle.seek(position)
        data = handle.read(max(0, end - position)) if position < end else b""
        if data and not data.endswith(b"\n"):
            data += _line_bytes(handle, file.label)  # the last line starts here: finish it
    if position == 0 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # the byte order mark of a file without a header
    return TextFile(
        label=file.label,
        path=file.path,
        delimiter=file.delimiter,
        compression=None,
        shard=(prefix + data, before),
        header=header,
    )


# the longest line read: a header of 100,000 columns fits; a file without line ends (a device's
# bytes, a sparse file) is refused at this length instead of taking memory to its end
MAX_LINE_CHARS = 16 << 20


def bounded_lines(text: IO[str], label: str) -> Iterator[str]:
    """The lines of ``text`` (what csv.reader takes), each read within MAX_LINE_CHARS:
    DataError for a longer one, so memory stays bounded whatever the file holds."""
    number = 0
    while line := text.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise DataError(
                f"{label} line {number}: longer than {MAX_LINE_CHARS:,} characters "
                "(not a table of text lines)"
            )
        yield line


def _line_bytes(handle: IO[bytes], label: str) -> bytes:
    """One line of a binary file, within MAX_LINE_CHARS bytes (DataError beyond)."""
    line = handle.readline(MAX_LINE_CHARS + 1)
    if len(line) > MAX_LINE_CHARS:
        raise DataError(f"{label}: a line longer than {MAX_LINE_CHARS:,} bytes")
    return line


def read_header(file: TextFile) -> Header:
    """The first non-blank row: a header when none of its cells is a number."""
    if file.header is not None:
        return file.header
    with file.open_binary() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            reader = csv.reader(bounded_lines(text, file.label), delimiter=file.delimiter)
            for cells in reader:
                if not cells or all(not cell.strip() for cell in cells):
                    continue
                if any(_is_number(cell) for cell in cells):
                    return Header(names=None, width=len(cells))
                names = tuple(cell.strip() for cell in cells)
                _check_names(file.label, names)
                return Header(names=names, width=len(names), line=reader.line_num)
        except UnicodeDecodeError as exc:
            raise DataError(f"{file.label}: not a text file ({exc.reason})") from exc
        except (csv.Error, EOFError, OSError) as exc:
            raise DataError(f"{file.label}: malformed or unreadable text ({exc})") from exc
    raise DataError(f"{file.label}: the file is empty")


def _check_names(label: str, names: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{label} line 1, column {i + 1}: empty column name in the header")
        if name in seen:
            raise DataError(f"{label}: column name {name!r} appears twice in the header")
        seen.add(name)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def batches(
    file: TextFile,
    header: Header,
    text: set[int],
    na_values: tuple[str, ...],
    *,
    whole: bool,
) -> Iterator[Batch]:
    """The file's rows as batches of columns; the columns in ``text`` as text, the others as
    numbers. ``whole``: one batch (pyarrow's multi-threaded reader), else bounded batches
    (its streaming reader). _TextColumn when a column in neither holds a non-number."""
    arrow_csv = _arrow()
    if arrow_csv is None:
        yield from _python_batches(file, header, text, na_values)
    else:
        yield from _arrow_batches(arrow_csv, file, header, text, na_values, whole=whole)


def _arrow_batches(
    arrow_csv: Any,
    file: TextFile,
    header: Header,
    text: set[int],
    na_values: tuple[str, ...],
    *,
    whole: bool,
) -> Iterator[Batch]:
    import pyarrow as pa

    names = [f"c{j}" for j in range(header.width)]
    read = arrow_csv.ReadOptions(
        column_names=names,
        skip_rows=header.line,  # pyarrow counts blank lines too
        block_size=ARROW_WHOLE_BLOCK_BYTES if whole else ARROW_BLOCK_BYTES,
        use_threads=True,
    )
    parse = arrow_csv.ParseOptions(delimiter=file.delimiter, invalid_row_handler=_blank_row)
    convert = arrow_csv.ConvertOptions(
        column_types={
            name: pa.string() if j in text else pa.float64() for j, name in enumerate(names)
        },
        null_values=list(na_values),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    codec = COMPRESSIONS[file.compression] if file.compression else None
    try:
        stream = (
            pa.BufferReader(file.shard[0])
            if file.shard is not None
            else pa.input_stream(open_data(file.path), compression=codec)
        )
        with stream:
            if whole:  # parsed at once, handed out a record batch at a time
                table = arrow_csv.read_csv(
                    stream, read_options=read, parse_options=parse, convert_options=convert
                )
                stack = table.to_batches()[::-1]
                del table  # each batch's memory goes when its consumer lets it go
                reader: Iterable[Any] = _popping(stack)
            else:
                reader = arrow_csv.open_csv(
                    stream, read_options=read, parse_options=parse, convert_options=convert
                )
            for batch in reader:
                if batch.num_rows:
                    yield _without_empty_rows(
                        [_arrow_column(batch.column(j), j in text) for j in range(header.width)]
                    )
    except pa.ArrowInvalid as exc:
        if "Could not skip initial" in str(exc) or "Empty CSV file" in str(exc):
            return  # a header and no rows
        match = re.search(r"In CSV column #(\d+): CSV conversion error to double", str(exc))
        if match:
            raise _TextColumn(int(match.group(1))) from None
        locate_problem(file, header, None, na_values)  # names the line, if it can
        raise DataError(f"{file.label}: malformed CSV: {exc}") from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{file.label}: cannot read: {exc}") from None


def _popping(stack: list[Any]) -> Iterator[Any]:
    """The items of ``stack`` from its end, each dropped from it as it is handed out."""
    while stack:
        yield stack.pop()


def _blank_row(row: Any) -> str:
    """pyarrow's handler of a row with the wrong number of cells: a blank line is skipped
    (as the csv module's reader does), anything else is an error."""
    return "skip" if not row.text.strip() else "error"


def _without_empty_rows(batch: Batch) -> Batch:
    """The batch without the rows whose every cell is missing (",,", "NA,NA"): such rows
    are skipped like blank lines, by both readers."""
    empty = None
    for column in batch:
        missing = _absent(column)
        empty = missing if empty is None else empty & missing
        if not empty.any():
            return batch
    assert empty is not None
    return [column[~empty] for column in batch]


def _arrow_column(column: Any, as_text: bool) -> np.ndarray:
    if as_text:
        import pyarrow.compute as pc

        values: np.ndarray = pc.utf8_trim_whitespace(column).to_numpy(zero_copy_only=False)
        return values.astype(object, copy=False)
    numbers: np.ndarray = column.to_numpy(zero_copy_only=False)  # nulls become NaN
    return numbers.astype(np.float64, copy=False)


def _python_rows(
    file: TextFile, na_values: tuple[str, ...] = ()
) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every row after the header, by the csv module; blank rows
    and rows whose every cell is missing (``na_values``) are skipped."""
    missing = set(na_values)
    with file.open_binary() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(bounded_lines(text, file.label), delimiter=file.delimiter)
        first = True
        try:
            for cells in reader:
                if not cells or all(not cell.strip() for cell in cells):
                    continue
                if first:
                    first = False
                    if not any(_is_number(cell) for cell in cells):
                        continue  # the header
                if missing and all(cell.strip() in missing or cell in missing for cell in cells):
                    continue
                yield file.first_line - 1 + reader.line_num, cells
        except UnicodeDecodeError as exc:
            raise DataError(f"{file.label}: not a text file ({exc.reason})") from exc
        except csv.Error as exc:
            raise DataError(f"{file.label}: malformed CSV: {exc}") from exc
        except (EOFError, OSError) as exc:
            raise DataError(f"{file.label}: cannot read: {exc}") from exc


def _python_batches(
    file: TextFile, header: Header, text: set[int], na_values: tuple[str, ...]
) -> Iterator[Batch]:
    """Without pyarrow: the whole file in one batch, by the csv module."""
    missing = set(na_values)
    columns: list[list[str]] = [[] for _ in range(header.width)]
    for line, cells in _python_rows(file, na_values):
        if len(cells) != header.width:
            raise DataError(
                f"{file.label} line {line}: {len(cells)} fields, expected {header.width} "
                "(ragged rows)"
            )
        for j, cell in enumerate(cells):
            columns[j].append(cell)
    if not columns[0]:
        return
    batch: Batch = []
    for j, cells in enumerate(columns):
        if j in text:
            batch.append(
                np.array(
                    [None if cell in missing else cell.strip() for cell in cells], dtype=object
                )
            )
            continue
        try:
            batch.append(
                np.array(
                    [math.nan if cell in missing else float(cell) for cell in cells],
                    dtype=np.float64,
                )
            )
        except ValueError:
            raise _TextColumn(j) from None
    yield batch


def locate_problem(
    file: TextFile,
    header: Header,
    problem: CellProblem | None,
    na_values: tuple[str, ...] = NA_VALUES,
) -> None:
    """Scan the file with the csv module to the cell of ``problem`` (its data row, or with
    no row the first cell of its column that is neither a number nor missing; with no
    problem, the first ragged row) and raise the DataError that names its line and column;
    returns when there is no ragged row to find (the caller then says what it knows)."""
    for row, (line, cells) in enumerate(_python_rows(file, na_values)):
        if len(cells) != header.width:
            raise DataError(
                f"{file.label} line {line}: {len(cells)} fields, expected {header.width} "
                "(ragged rows)"
            )
        if problem is None:
            continue
        if problem.row is None:
            cell = cells[problem.column].strip()
            if cell in na_values or _is_number(cell):
                continue
        elif row != problem.row:
            continue
        raise DataError(cell_message(problem, f"{file.label} line {line}", header, cells))
    if problem is not None:
        at = f"{file.label} data row {problem.row + 1}" if problem.row is not None else file.label
        raise DataError(cell_message(problem, at, header, None))


def cell_message(problem: CellProblem, at: str, header: Header, cells: list[str] | None) -> str:
    where = f"{at}, {header.where(problem.column)}"
    cell = cells[problem.column].strip() if cells is not None else problem.value
    if problem.kind == "text":
        return f"{where}: {cell!r} is not a number"
    if problem.kind == "nonfinite":
        return f"{where}: {cell} is not a finite number (NaN and inf cannot be fitted)"
    if problem.kind == "missing":
        shown = (
            "missing value"
            if cells is None
            else "empty cell"
            if not cell
            else f"missing value {cell!r}"
        )
        return (
            f"{where}: {shown}; use --missing drop (drop the row) or --missing mean (fill with "
            "the mean), or --na-values to say which cells are missing"
        )
    return (
        f"{where}: level {cell!r} was not seen in training (levels: {problem.levels}); "
        "use --unknown-level zero to predict it as the reference level"
    )


# -- choosing columns ------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Which columns of a file are used: the features (in this order) and the target."""

    features: tuple[int, ...]
    target: int


def column_index(header: Header, label: str, what: str, token: str) -> int:
    """A column by name or 0-based index (negative from the end); DataError listing the
    columns when there is no such one."""
    if header.names is not None and token in header.names:
        return header.names.index(token)
    try:
        index = int(token)
    except ValueError:
        if header.names is None:
            raise DataError(
                f"{what} {token!r}: {label} has no header row, so columns are chosen by 0-based "
                f"index, 0 to {header.width - 1}"
            ) from None
        raise DataError(
            f"{what} {token!r} is not a column of {label}; columns: {', '.join(header.names)}"
        ) from None
    if not -header.width <= index < header.width:
        raise DataError(
            f"{what} {index} is out of range: {label} has {header.width} columns "
            f"(0 to {header.width - 1})"
        )
    return index % header.width


def _tokens(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def choose_columns(
    header: Header,
    label: str,
    target: str | None,
    features: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> Columns:
    """The target (default the last column) and the features: ``features`` in the order
    given, or every other column; less ``exclude``."""
    if header.width < 2:
        raise DataError(f"{label}: only one column ({header.name(0)}); no feature columns are left")
    target_col = (
        header.width - 1 if target is None else column_index(header, label, "--target", target)
    )
    if features:
        chosen = [column_index(header, label, "--features", t) for t in _tokens(features)]
        if len(set(chosen)) != len(chosen):
            raise DataError(f"--features names a column of {label} twice")
        if target_col in chosen:
            raise DataError(f"--features includes the target column {header.name(target_col)!r}")
    else:
        chosen = [j for j in range(header.width) if j != target_col]
    dropped = {column_index(header, label, "--exclude", t) for t in _tokens(exclude)}
    if target_col in dropped:
        raise DataError(f"--exclude names the target column {header.name(target_col)!r}")
    chosen = [j for j in chosen if j not in dropped]
    if not chosen:
        raise DataError(f"{label}: no feature columns are left (see --features and --exclude)")
    return Columns(features=tuple(chosen), target=target_col)


# -- the encoding ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Coding:
    """How one column of the file becomes features.

    ``levels`` (a categorical column): the levels that get a 0/1 column, sorted; the
    reference level gets none. ``fill``: the value that takes a missing cell's place (the
    training mean of a numeric column with ``--missing mean``). ``indicator``: a 0/1
    ``missing(name)`` column follows (the column had missing cells in training)."""

    name: str
    index: int  # the column's position in the training file
    levels: tuple[str, ...] | None = None
    reference: str | None = None
    fill: float | None = None
    indicator: bool = False

    @property
    def categorical(self) -> bool:
        return self.levels is not None

    @property
    def feature_names(self) -> tuple[str, ...]:
        names = (
            [f"{self.name}={level}" for level in self.levels]
            if self.levels is not None
            else [self.name]
        )
        if self.indicator:
            names.append(f"missing({self.name})")
        return tuple(names)


@dataclass(frozen=True)
class Encoding:
    """From the columns of a file to the feature matrix: fitted on the training rows, kept
    in the model file (JSON), applied the same way by ``predict``."""

    columns: tuple[Coding, ...]
    target: str
    target_index: int
    width: int  # columns of the training file
    headed: bool  # the training file had a header row
    missing: str = "error"
    na_values: tuple[str, ...] = NA_VALUES

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for coding in self.columns for name in coding.feature_names)

    @property
    def features(self) -> int:
        return len(self.feature_names)

    @property
    def plain(self) -> bool:
        """Numbers only, nothing filled: each feature is a column of the file as it is."""
        return all(not c.categorical and c.fill is None and not c.indicator for c in self.columns)

    def to_json(self) -> str:
        return json.dumps(
            {
                "columns": [
                    {
                        "name": c.name,
                        "index": c.index,
                        "levels": None if c.levels is None else list(c.levels),
                        "reference": c.reference,
                        "fill": c.fill,
                        "indicator": c.indicator,
                    }
                    for c in self.columns
                ],
                "target": self.target,
                "target_index": self.target_index,
                "width": self.width,
                "headed": self.headed,
                "missing": self.missing,
                "na_values": list(self.na_values),
            },
            sort_keys=True,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        """ValueError/KeyError/TypeError for anything but what ``to_json`` writes."""
        document = json.loads(text)
        columns = []
        for item in document["columns"]:
            levels = item["levels"]
            fill = item["fill"]
            coding = Coding(
                name=str(item["name"]),
                index=int(item["index"]),
                levels=None if levels is None else tuple(str(level) for level in levels),
                reference=None if item["reference"] is None else str(item["reference"]),
                fill=None if fill is None else float(fill),
                indicator=bool(item["indicator"]),
            )
            if coding.fill is not None and not math.isfinite(coding.fill):
                raise ValueError("a fill value is not finite")
            if coding.categorical and coding.reference is None:
                raise ValueError(f"column {coding.name!r} has levels but no reference level")
            columns.append(coding)
        encoding = cls(
            columns=tuple(columns),
            target=str(document["target"]),
            target_index=int(document["target_index"]),
            width=int(document["width"]),
            headed=bool(document["headed"]),
            missing=str(document["missing"]),
            na_values=tuple(str(v) for v in document["na_values"]),
        )
        if encoding.missing not in MISSING_POLICIES or not encoding.columns:
            raise ValueError("unknown missing-value policy or no columns")
        return encoding


@dataclass
class _Profile:
    """What the training rows say of one column: missing cells, the numbers' sum (for the
    mean), the text levels and their counts."""

    text: bool
    missing: int = 0
    count: int = 0
    total: float = 0.0
    levels: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "missing": self.missing,
            "count": self.count,
            "total": self.total,
            "levels": dict(self.levels),
        }


@dataclass(frozen=True)
class TableOptions:
    """The column and cell options of ``train`` (see TrainConfig for their meaning)."""

    target: str | None = None
    features: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    missing: str = "error"
    na_values: tuple[str, ...] = NA_VALUES
    max_levels: int = MAX_LEVELS


def profile_batches(
    source: Iterator[Batch], columns: Columns, used_text: set[int], missing: str = "error"
) -> tuple[dict[int, _Profile], int]:
    """One pass over the batches: each used column's profile, and the number of rows. The
    rows the policy ``missing`` drops (a missing target; with drop, any missing cell) take
    no part in the levels and means."""
    used = (*columns.features, columns.target)
    profiles = {j: _Profile(text=j in used_text) for j in used}
    rows = 0
    for batch in source:
        problems: list[CellProblem] = []
        for j in used:
            if batch[j].dtype != object:
                _note_nonfinite(problems, batch[j], j, rows)
        if problems:
            raise first_in_file(problems)
        keep = None
        if missing != "error":
            dropped = _absent(batch[columns.target])
            if missing == "drop":
                for j in columns.features:
                    dropped = dropped | _absent(batch[j])
            keep = ~dropped if dropped.any() else None
        for j in used:
            _profile_column(profiles[j], batch[j] if keep is None else batch[j][keep])
        rows += len(batch[0])
    return profiles, rows


def _absent(values: np.ndarray) -> np.ndarray:
    none = np.array(None, dtype=object)
    result: np.ndarray = np.equal(values, none) if values.dtype == object else np.isnan(values)
    return result


def _profile_column(profile: _Profile, values: np.ndarray) -> None:
    if profile.text:
        present = [value for value in values.tolist() if value is not None]
        profile.missing += len(values) - len(present)
        profile.levels.update(present)
        return
    missing = np.isnan(values)
    count = int(missing.sum())
    finite = values if not count else values[~missing]
    profile.missing += count
    profile.count += int(finite.size)
    profile.total += float(finite.sum())


def merge_profiles(parts: list[dict[str, Any]]) -> tuple[dict[int, _Profile], set[int]]:
    """The profiles of every rank (``_Profile.to_dict`` by column), merged in rank order:
    counts and sums added, levels pooled. Also the columns that some ranks read as text and
    others as numbers (they must read them again, as text)."""
    merged: dict[int, _Profile] = {}
    kinds: dict[int, set[bool]] = {}
    for part in parts:
        for key, item in part.items():
            j = int(key)
            profile = merged.setdefault(j, _Profile(text=False))
            kinds.setdefault(j, set()).add(bool(item["text"]))
            profile.text = profile.text or bool(item["text"])
            profile.missing += int(item["missing"])
            profile.count += int(item["count"])
            profile.total += float(item["total"])
            profile.levels.update({str(k): int(v) for k, v in item["levels"].items()})
    return merged, {j for j, seen in kinds.items() if len(seen) > 1}


def fit_encoding(
    header: Header,
    label: str,
    columns: Columns,
    profiles: dict[int, _Profile],
    options: TableOptions,
) -> Encoding:
    """The encoding of the used columns from their training profiles."""
    codings: list[Coding] = []
    if profiles[columns.target].text:
        example = next(iter(profiles[columns.target].levels), "")
        raise CellProblem("text", columns.target, None, example, na_values=options.na_values)
    for j in columns.features:
        profile = profiles[j]
        name = header.name(j) if header.names is not None else f"x{len(codings) + 1}"
        indicator = options.missing == "mean" and profile.missing > 0
        if profile.text:
            levels = _levels(profile, header, label, j, options.max_levels)
            reference = levels[0]
            codings.append(
                Coding(
                    name=name,
                    index=j,
                    levels=tuple(sorted(level for level in levels if level != reference)),
                    reference=reference,
                    indicator=indicator,
                )
            )
            continue
        fill = None
        if options.missing == "mean":
            if profile.count == 0:
                raise DataError(f"{label}: {header.where(j)} has no values to take the mean of")
            fill = profile.total / profile.count
        codings.append(Coding(name=name, index=j, fill=fill, indicator=indicator))
    return Encoding(
        columns=tuple(codings),
        target=header.name(columns.target) if header.names is not None else "y",
        target_index=columns.target,
        width=header.width,
        headed=header.names is not None,
        missing=options.missing,
        na_values=options.na_values,
    )


def _levels(profile: _Profile, header: Header, label: str, j: int, max_levels: int) -> list[str]:
    """The levels, the reference (most frequent; ties: first in sorted order) first."""
    if not profile.levels:
        raise DataError(f"{label}: {header.where(j)} has no values")
    if len(profile.levels) > max_levels:
        words = [level for level in sorted(profile.levels) if not _is_number(level)][:1]
        hint = f" (its first value that is not a number: {words[0]!r})" if words else ""
        raise DataError(
            f"{label}: {header.where(j)} has {len(profile.levels)} distinct text values, more "
            f"than --max-levels {max_levels}{hint}; exclude it (--exclude "
            f"{header.name(j)}) or raise --max-levels"
        )
    return sorted(profile.levels, key=lambda level: (-profile.levels[level], level))


@dataclass
class Encoded:
    """Rows of the feature matrix and the target, and how many rows were dropped."""

    X: np.ndarray
    y: np.ndarray | None
    dropped: int = 0
    unknown: int = 0  # cells of unseen levels predicted as the reference (--unknown-level zero)
    kept: np.ndarray | None = None  # predict with --missing drop: which rows have values


def encode_batch(
    encoding: Encoding,
    batch: Batch,
    first_row: int,
    *,
    target: int | None,
    unknown: str = "error",
    keep_rows: bool = False,
    out: np.ndarray | None = None,
) -> Encoded:
    """The feature rows (float64) of a batch, and its target when ``target`` (a column of
    the batch) is given. CellProblem for a missing cell under ``--missing error`` or an
    unseen level (unless ``unknown`` is zero). ``keep_rows`` (predict): rows with a missing
    cell under drop stay, as NaN rows, and ``kept`` says which. ``out`` (batch rows x
    features) is written in place of a new array; the result's X is it unless rows were
    dropped."""
    n = len(batch[0])
    X = np.empty((n, encoding.features), dtype=np.float64) if out is None else out
    drop = np.zeros(n, dtype=bool)
    unseen = 0
    problems: list[CellProblem] = []  # the first of each column; the file's first is raised
    offset = 0
    for coding, column in zip(
        encoding.columns, (batch[c.index] for c in encoding.columns), strict=True
    ):
        if coding.levels is not None:
            index = {level: k for k, level in enumerate(coding.levels)}
            width = len(coding.levels)
            values = (
                column.tolist()
                if column.dtype == object
                else [_level_text(v) for v in column.tolist()]
            )
            codes = np.fromiter(
                (
                    -2
                    if value is None
                    else index.get(value, -1 if value == coding.reference else -3)
                    for value in values
                ),
                dtype=np.int64,
                count=n,
            )
            absent = codes == -2
            strange = codes == -3
            if strange.any():
                if unknown == "error":
                    row = int(np.flatnonzero(strange)[0])
                    shown = ", ".join(repr(v) for v in (coding.reference, *coding.levels)[:10])
                    value = str(values[row])
                    problems.append(
                        CellProblem("unknown", coding.index, first_row + row, value, levels=shown)
                    )
                unseen += int(strange.sum())
            hot = codes >= 0
            rows = np.flatnonzero(hot)
            X[:, offset : offset + width] = 0.0
            X[rows, offset + codes[hot]] = 1.0
        else:
            values_f = column if column.dtype != object else _numbers(column, coding, first_row)
            absent = np.isnan(values_f)
            _note_nonfinite(problems, values_f, coding.index, first_row)
            X[:, offset] = values_f
            width = 1
            if coding.fill is not None and absent.any():
                X[absent, offset] = coding.fill
        if absent.any():
            if encoding.missing == "error":
                row = int(np.flatnonzero(absent)[0])
                problems.append(CellProblem("missing", coding.index, first_row + row, ""))
            if encoding.missing == "drop":
                drop |= absent
        offset += width
        if coding.indicator:
            X[:, offset] = absent
            offset += 1
    y = None
    if target is not None:
        y = batch[target]
        if y.dtype == object:
            raise DataError("the target column holds text; the target must be numeric")
        y_absent = np.isnan(y)
        _note_nonfinite(problems, y, target, first_row)
        if y_absent.any():
            if encoding.missing == "error":
                row = int(np.flatnonzero(y_absent)[0])
                problems.append(CellProblem("missing", target, first_row + row, ""))
            drop |= y_absent
    if problems:
        raise first_in_file(problems)
    if keep_rows:
        X[drop] = np.nan
        return Encoded(X=X, y=y, unknown=unseen, kept=~drop)
    dropped = int(drop.sum())
    if dropped:
        X = X[~drop]
        y = y[~drop] if y is not None else None
    return Encoded(X=X, y=y, dropped=dropped, unknown=unseen)


def _note_nonfinite(
    problems: list[CellProblem], values: np.ndarray, column: int, first_row: int
) -> None:
    infinite = np.isinf(values)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        problems.append(CellProblem("nonfinite", column, first_row + row, repr(float(values[row]))))


def first_in_file(problems: list[CellProblem]) -> CellProblem:
    """The problem a reader of the file meets first: the earliest row, then the leftmost
    column."""
    return min(problems, key=lambda p: (math.inf if p.row is None else p.row, p.column))


def _level_text(value: float) -> str | None:
    """A number of a column read as numbers, as the level text it stands for (a column
    forced categorical where another reader saw numbers)."""
    if math.isnan(value):
        return None
    return repr(value) if not float(value).is_integer() else str(int(value))


def _numbers(column: np.ndarray, coding: Coding, first_row: int) -> np.ndarray:
    """A text column (read as text for another column's sake, or by --categorical in
    predict) as numbers."""
    out = np.empty(len(column), dtype=np.float64)
    for i, value in enumerate(column.tolist()):
        if value is None:
            out[i] = math.nan
            continue
        try:
            out[i] = float(value)
        except ValueError:
            raise DataError(
                f"data row {first_row + i + 1}, column {coding.index + 1} ({coding.name}): "
                f"{value!r} is not a number (the model was trained on numbers here)"
            ) from None
    return out


# -- reading a table -------------------------------------------------------------------------


@dataclass
class TableRead:
    """A text table read and encoded: the feature matrix and target, their names, the
    encoding, the rows dropped."""

    X: np.ndarray
    y: np.ndarray
    encoding: Encoding
    dropped: int
    rows: int  # data rows in the file (before dropping)


def with_text_columns(
    file: TextFile,
    header: Header,
    text: set[int],
    na_values: tuple[str, ...],
    work: Callable[[set[int]], Any],
) -> Any:
    """``work(text)``, with the columns that turn out to hold text added to ``text`` and the
    work started again (each column at most once)."""
    while True:
        try:
            return work(text)
        except _TextColumn as found:
            if found.index in text:  # cannot happen: a text column converts anything
                raise DataError(
                    f"{file.label}: {header.where(found.index)} cannot be read"
                ) from None
            text = {*text, found.index}


def read_batch(
    file: TextFile, header: Header, text: set[int], na_values: tuple[str, ...], *, numeric: set[int]
) -> Batch:
    """The whole file as one batch (predict): the ``text`` columns as text, the rest as
    numbers; a cell that is not a number in a ``numeric`` column is a CellProblem, in any
    other it makes the column text. DataError when there are no data rows."""
    while True:
        try:
            found = list(batches(file, header, text, na_values, whole=True))
            break
        except _TextColumn as exc:
            if exc.index in numeric or exc.index in text:
                raise CellProblem("text", exc.index, None, na_values=na_values) from None
            text = {*text, exc.index}
    if not found:
        raise DataError(f"{file.label}: has no data rows")
    return (
        found[0]
        if len(found) == 1
        else [np.concatenate([batch[j] for batch in found]) for j in range(header.width)]
    )


def categorical_columns(header: Header, label: str, names: tuple[str, ...]) -> set[int]:
    return {column_index(header, label, "--categorical", t) for t in _tokens(names)}


def read_text_table(
    file: TextFile,
    options: TableOptions,
    *,
    spill: Callable[[int, int], np.ndarray] | None = None,
    merge: Callable[[dict[str, Any]], tuple[dict[int, _Profile], set[int]]] | None = None,
) -> TableRead:
    """Read, check and encode a text table for training.

    Without ``spill`` the file is parsed once, in memory. With it (bounded memory: mini-
    batches of a large file) it is streamed twice, once to learn the columns and once to
    encode them into the arrays ``spill(rows, columns)`` returns (memory-mapped files).
    ``merge`` (torchrun) turns this rank's profiles into everyone's."""
    header = read_header(file)
    columns = choose_columns(header, file.label, options.target, options.features, options.exclude)
    forced = categorical_columns(header, file.label, options.categorical)
    if columns.target in forced:
        raise DataError(f"--categorical names the target column {header.name(columns.target)!r}")
    held: list[Batch] = []

    def learn(text: set[int]) -> tuple[set[int], dict[int, _Profile], int]:
        held.clear()
        stream = batches(file, header, text, options.na_values, whole=spill is None)
        if spill is None:
            stream = _holding(stream, held)
        profiles, rows = profile_batches(stream, columns, text, options.missing)
        return text, profiles, rows

    try:
        text, profiles, rows = with_text_columns(file, header, forced, options.na_values, learn)
        while merge is not None:  # every rank goes round as often: they see the same
            merged, mixed = merge({str(j): p.to_dict() for j, p in profiles.items()})
            if not mixed:
                profiles = merged
                break
            text, profiles, rows = with_text_columns(
                file, header, text | mixed, options.na_values, learn
            )
        if rows == 0 and merge is None:
            raise DataError(f"{file.label}: has a header but no data rows")
        encoding = fit_encoding(header, file.label, columns, profiles, options)
        if spill is None:
            held.reverse()  # handed out from the end: each batch let go once encoded
            X, y, dropped = encode_all(encoding, _popping(held), columns.target, rows)
        else:
            stream = batches(file, header, text, options.na_values, whole=False)
            X, y, dropped = encode_all(encoding, stream, columns.target, rows, allocate=spill)
    except CellProblem as problem:
        locate_problem(file, header, problem, options.na_values)
        raise AssertionError("unreachable") from None
    return TableRead(X=X, y=y, encoding=encoding, dropped=dropped, rows=rows)


def _fresh_array(rows: int, columns: int) -> np.ndarray:
    """A new float64 (rows, columns) array; a large one in huge pages where the kernel
    offers them (madvise), which cuts the cost of its first touch (page faults)."""
    import mmap

    size = rows * columns * 8
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if size < HUGE_ARRAY_BYTES or advice is None or os.environ.get("NOHUGE"):
        return np.empty((rows, columns), dtype=np.float64)
    memory = mmap.mmap(-1, size)
    with contextlib.suppress(OSError):
        memory.madvise(advice)
    return np.frombuffer(memory, dtype=np.float64).reshape(rows, columns)


def _holding(stream: Iterator[Batch], held: list[Batch]) -> Iterator[Batch]:
    for batch in stream:
        held.append(batch)
        yield batch


def encode_all(
    encoding: Encoding,
    stream: Iterable[Batch],
    target: int,
    rows: int,
    *,
    allocate: Callable[[int, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The features (C-contiguous) and the target of the batches of ``rows`` rows, each
    batch encoded straight into its rows of the arrays ``allocate(rows, columns)`` makes
    (default: in memory, the batches encoded on every core); the dropped rows left out. A
    memory-mapped array's pages are given back as they are written, so memory stays at a
    batch."""
    X = (allocate or _fresh_array)(rows, encoding.features)
    y = (allocate or _fresh_array)(rows, 1)[:, 0]
    filled = dropped = 0
    parts = _encoded(encoding, stream, target, X, threads=allocate is None)
    for first, part in parts:  # in file order: the first bad batch raises
        assert part.y is not None
        count = part.X.shape[0]
        if part.dropped or filled != first:  # compacted: the rows before are all written
            X[filled : filled + count] = part.X
        y[filled : filled + count] = part.y
        release(X, filled, filled + count)  # written: out of this process's memory
        release(y, filled, filled + count)
        filled += count
        dropped += part.dropped
    return X[:filled], y[:filled], dropped


def _encoded(
    encoding: Encoding, stream: Iterable[Batch], target: int, X: np.ndarray, *, threads: bool
) -> Iterator[tuple[int, Encoded]]:
    """(first row, encoded batch) of each batch, in order, each encoded into its own rows
    of X: on the process's worker threads (one a core, a few batches ahead) when
    ``threads``, else one at a time here."""
    from .threads import background

    workers = min(os.cpu_count() or 1, MAX_ENCODE_THREADS) if threads else 1
    pending: list[tuple[int, Any]] = []
    first = 0
    for batch in stream:
        n = len(batch[0])
        if workers == 1:
            yield first, _encode_into(encoding, batch, first, target, X)
        else:
            work = background(_encode_into, encoding, batch, first, target, X, workers=workers)
            pending.append((first, work))
            if len(pending) > 2 * workers:
                at, future = pending.pop(0)
                yield at, future.result()
        first += n
    for at, future in pending:
        yield at, future.result()


def _encode_into(
    encoding: Encoding, batch: Batch, first: int, target: int, X: np.ndarray
) -> Encoded:
    return encode_batch(encoding, batch, first, target=target, out=X[first : first + len(batch[0])])


def numeric_batch(values: np.ndarray) -> Batch:
    """The columns of a numeric array (an .npy or .npz file), as a batch."""
    return [np.asarray(values[:, j], dtype=np.float64) for j in range(values.shape[1])]


def encode_columns(
    header: Header, batch: Batch, label: str, options: TableOptions
) -> tuple[np.ndarray, np.ndarray, Encoding, int]:
    """A table already in memory (parquet, or an .npy/.npz with column options) encoded for
    training: features, target, the encoding and the rows dropped. Cell problems name the
    data row (these formats have no lines)."""
    columns = choose_columns(header, label, options.target, options.features, options.exclude)
    forced = categorical_columns(header, label, options.categorical)
    if columns.target in forced:
        raise DataError(f"--categorical names the target column {header.name(columns.target)!r}")
    batch = [
        _as_text(column) if j in forced and column.dtype != object else column
        for j, column in enumerate(batch)
    ]
    text = {j for j, column in enumerate(batch) if column.dtype == object}
    try:
        profiles, rows = profile_batches(iter([batch]), columns, text, options.missing)
        if rows == 0:
            raise DataError(f"{label}: has no data rows")
        encoding = fit_encoding(header, label, columns, profiles, options)
        part = encode_batch(encoding, batch, 0, target=columns.target)
    except CellProblem as problem:
        at = f"{label} data row {problem.row + 1}" if problem.row is not None else label
        raise DataError(cell_message(problem, at, header, None)) from None
    assert part.y is not None
    return part.X, part.y, encoding, part.dropped


def _as_text(column: np.ndarray) -> np.ndarray:
    """A numeric column as the text of its levels (--categorical on a numeric file)."""
    return np.array([_level_text(value) for value in column.tolist()], dtype=object)
