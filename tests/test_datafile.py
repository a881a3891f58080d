"""Unit tests of data files (regression.datafile), the hold-out split (regression.data.split)
and predictions for the rows of a file (regression.predict.predict_file).

Every refusal is a DataError (or ModelFileError) whose message names the file, and the line and
column of a parse error (the row and column of a NaN or inf in an array); the tests assert that
content, not just the exception type. Models for predict_file are written with the real
save_model, so nothing here needs torch.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import regression.data
import regression.datafile
from regression.artifacts import ModelFile, load_model, model_bytes, save_model
from regression.data import Dataset, split
from regression.datafile import load_dataset, read_table, select_target, write_table
from regression.errors import DataError, ModelFileError
from regression.predict import predict_file

REPO = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """A file in ``folder``; text is written as UTF-8 exactly as given (no newline added)."""
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def refusal(path: Path, target: str | None = None) -> str:
    """The message of the DataError that loading ``path`` raises."""
    with pytest.raises(DataError) as info:
        load_dataset(path, target)
    return str(info.value)


# -- CSV and TSV ------------------------------------------------------------------------------


def test_csv_with_a_header_gives_named_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b,y\n1,2.5,3\n-4,5e-1,6\n")
    table = read_table(path)
    assert table.names == ("a", "b", "y")
    np.testing.assert_array_equal(table.values, [[1, 2.5, 3], [-4, 0.5, 6]])
    data = select_target(table, None)
    assert data.feature_names == ("a", "b")
    assert data.target_name == "y"
    assert data.source == str(path)
    np.testing.assert_array_equal(data.X, [[1, 2.5], [-4, 0.5]])
    np.testing.assert_array_equal(data.y, [3, 6])
    assert data.X.dtype == np.float64


def test_headerless_csv_is_all_data_and_named_x1_to_xd_and_y(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "1,2,3\n4,5,6\n7,8,9\n")
    table = read_table(path)
    assert table.names is None
    assert table.rows == 3
    assert table.column_names() == ("x1", "x2", "y")
    data = load_dataset(path)
    assert data.feature_names == ("x1", "x2")
    assert data.target_name == "y"
    np.testing.assert_array_equal(data.X, [[1, 2], [4, 5], [7, 8]])
    np.testing.assert_array_equal(data.y, [3, 6, 9])


def test_first_row_is_data_when_any_cell_is_a_number(tmp_path: Path) -> None:
    """The rule: a header is a first row in which no cell is a number. A row mixing text and
    numbers is data, so its text cell is reported at line 1."""
    path = write(tmp_path, "data.csv", "x,2\n1,2\n3,4\n")
    data = load_dataset(path)
    assert data.samples == 3  # the first row is data: its column 1 is categorical
    assert data.feature_names == ("x1=3", "x1=x")  # reference level: '1' (ties: sorted)
    np.testing.assert_array_equal(data.X, [[0, 1], [0, 0], [1, 0]])


def test_tsv_with_a_header_and_target_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "data.tsv", "a\tb\tc\n1\t2\t3\n4\t5\t6\n")
    data = load_dataset(path, "b")
    assert data.feature_names == ("a", "c")
    assert data.target_name == "b"
    np.testing.assert_array_equal(data.X, [[1, 3], [4, 6]])
    np.testing.assert_array_equal(data.y, [2, 5])


def test_a_comma_in_a_tsv_is_not_a_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "data.tsv", "a,1\ty\n1\t2\n3\t4\n")
    assert read_table(path).names == ("a,1", "y")


@pytest.mark.parametrize(
    ("name", "text", "names"),
    [
        ("q.csv", '"a, one","b"\n"1.5","2"\n3,"4"\n', ("a, one", "b")),
        ("q.tsv", '"a\tone"\t"b"\n"1.5"\t"2"\n3\t"4"\n', ("a\tone", "b")),
        ("q.csv", '"say ""hi""",b\n1.5,2\n3,4\n', ('say "hi"', "b")),
    ],
)
def test_quoted_fields(tmp_path: Path, name: str, text: str, names: tuple[str, ...]) -> None:
    table = read_table(write(tmp_path, name, text))
    assert table.names == names
    np.testing.assert_array_equal(table.values, [[1.5, 2], [3, 4]])


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "\n\na,b\n\n1,2\n   \n,\n3,4\n\n\n")
    table = read_table(path)
    assert table.names == ("a", "b")
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4]])


def test_errors_after_blank_lines_give_the_line_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b\n\n1,2\n\n3,x\n")
    assert refusal(path) == f"{path} line 5, column 2 (b): 'x' is not a number"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("trailing", [True, False])
def test_line_endings_and_the_trailing_newline(
    tmp_path: Path, newline: str, trailing: bool
) -> None:
    text = newline.join(["a,b", "1,2", "3,4"]) + (newline if trailing else "")
    table = read_table(write(tmp_path, "data.csv", text))
    assert table.names == ("a", "b")
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("text", "names", "values"),
    [
        ("\ufeffa,b\n1,2\n3,4\n", ("a", "b"), [[1, 2], [3, 4]]),
        ("\ufeff1,2\n3,4\n", None, [[1, 2], [3, 4]]),
    ],
)
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_cell(
    tmp_path: Path, text: str, names: tuple[str, ...] | None, values: list[list[float]]
) -> None:
    path = write(tmp_path, "data.csv", text)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    table = read_table(path)
    assert table.names == names
    np.testing.assert_array_equal(table.values, values)


def test_spaces_around_cells_and_names_are_ignored(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "data.csv", " a , b \n 1 , 2 \n3,\t4\n"))
    assert table.names == ("a", "b")
    np.testing.assert_array_equal(table.values, [[1, 2], [3, 4]])


def test_non_ascii_names(tmp_path: Path) -> None:
    table = read_table(write(tmp_path, "data.csv", "température,débit\n1,2\n3,4\n"))
    assert table.names == ("température", "débit")


# -- CSV and TSV: every refusal names the file (and the line and column) ----------------------


@pytest.mark.parametrize("name", ["missing.csv", "missing.npy", "missing.npz", "missing.parquet"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert refusal(path) == f"{path}: no such file"


def test_a_directory_is_not_a_data_file(tmp_path: Path) -> None:
    path = tmp_path / "folder.csv"
    path.mkdir()
    assert refusal(path).startswith(f"{path}: is a directory, not a regular file; name a data")


@pytest.mark.skipif(
    getattr(os, "geteuid", lambda: 1)() == 0, reason="root reads files whatever their permissions"
)
def test_a_file_without_read_permission(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b\n1,2\n3,4\n")
    path.chmod(0)
    try:
        message = refusal(path)
    finally:
        path.chmod(0o644)
    assert message.startswith(f"{path}: cannot read:")


def test_a_file_that_is_not_utf8_text(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", b"a,b\n1,2\n\xff\xfe\x00\x01\n")
    assert refusal(path).startswith(f"{path}: not a text file (")


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_an_unsupported_suffix_lists_the_formats(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "a,b\n1,2\n3,4\n")
    suffix = repr(path.suffix) if path.suffix else "'(none)'"
    assert refusal(path) == (
        f"{path}: unsupported data format {suffix}; use .csv, .tsv, .npy, .npz, .parquet, "
        ".csv.gz, .tsv.gz, .csv.bz2, .tsv.bz2, .csv.zst, .tsv.zst, or - for CSV on stdin "
        "(--format csv|tsv where the name cannot tell)"
    )


@pytest.mark.parametrize("text", ["", "\n", "\n  \n\t\n", ",,\n"])
def test_an_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert refusal(path) == f"{path}: the file is empty"


@pytest.mark.parametrize("text", ["a,b", "a,b\n", "a,b\n\n\n"])
def test_a_header_without_data_rows(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert refusal(path) == f"{path}: has a header but no data rows"


@pytest.mark.parametrize(
    ("text", "where", "cell"),
    [
        ("a,b\n1,2\n3,abc\n", "line 3, column 2 (b)", "'abc'"),
        ("a,b\n1,2\n3,1.2.3\n", "line 3, column 2 (b)", "'1.2.3'"),
        ("a,b\n1,2\n3,$4\n", "line 3, column 2 (b)", "'$4'"),
        ("1,2\n3,abc\n", "line 2, column 2", "'abc'"),
    ],
)
def test_a_cell_that_is_not_a_number(tmp_path: Path, text: str, where: str, cell: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert refusal(path) == f"{path} {where}: {cell} is not a number"


def test_an_empty_cell(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b\n1,\n3,4\n")
    assert refusal(path) == (
        f"{path} line 2, column 2 (b): empty cell; use --missing drop (drop the row) or "
        "--missing mean (fill with the mean), or --na-values to say which cells are missing"
    )


@pytest.mark.parametrize("cell", ["nan", "NaN"])
def test_nan_cells_are_missing_values(tmp_path: Path, cell: str) -> None:
    path = write(tmp_path, "data.tsv", f"a\tb\n1\t2\n{cell}\t4\n")
    assert refusal(path).startswith(f"{path} line 3, column 1 (a): missing value {cell!r}; use")


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "-Infinity"])
def test_inf_cells_give_line_and_column(tmp_path: Path, cell: str) -> None:
    path = write(tmp_path, "data.tsv", f"a\tb\n1\t2\n{cell}\t4\n")
    assert refusal(path) == (
        f"{path} line 3, column 1 (a): {cell} is not a finite number (NaN and inf cannot be fitted)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3,4,5\n", "line 3: 3 fields, expected 2 (ragged rows)"),
        ("a,b,c\n1,2,3\n4,5\n", "line 3: 2 fields, expected 3 (ragged rows)"),
        ("1,2\n3\n", "line 2: 1 fields, expected 2 (ragged rows)"),
    ],
)
def test_ragged_rows(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert refusal(path) == f"{path} {message}"


@pytest.mark.parametrize("text", ["a,b\n1,2\n", "1,2\n", "\n1,2\n\n"])
def test_fewer_than_two_rows(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "data.csv", text)
    assert refusal(path) == f"{path}: has 1 data row(s); at least 2 are needed"


def test_a_name_twice_in_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b,a\n1,2,3\n4,5,6\n")
    assert refusal(path) == f"{path}: column name 'a' appears twice in the header"


def test_an_empty_name_in_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,,y\n1,2,3\n4,5,6\n")
    assert refusal(path) == f"{path} line 1, column 2: empty column name in the header"


# -- .npy -------------------------------------------------------------------------------------


def test_npy_is_opened_memory_mapped(tmp_path: Path) -> None:
    array = np.random.default_rng(0).random((6, 3)).astype(np.float32)
    path = tmp_path / "data.npy"
    np.save(path, array)
    table = read_table(path)
    assert isinstance(table.values, np.memmap)
    assert table.names is None
    assert table.values.dtype == np.float32
    np.testing.assert_array_equal(table.values, array)
    data = select_target(table, None)
    # with the target last, the features are a view of the mapped file, not a copy in memory
    assert isinstance(data.X, np.memmap)
    assert np.shares_memory(data.X, table.values)
    assert data.feature_names == ("x1", "x2")
    assert data.target_name == "y"
    np.testing.assert_array_equal(data.X, array[:, :2])
    np.testing.assert_array_equal(data.y, array[:, 2])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.float64, np.dtype(">f8")])
def test_npy_of_any_real_numeric_dtype(tmp_path: Path, dtype: np.dtype) -> None:
    array = np.arange(12).reshape(4, 3).astype(dtype)
    path = tmp_path / "data.npy"
    np.save(path, array)
    data = load_dataset(path, "0")
    np.testing.assert_array_equal(data.X, array[:, 1:])
    np.testing.assert_array_equal(data.y, array[:, 0])


@pytest.mark.parametrize(
    ("shape", "dims"), [((5,), "1 dimension(s), shape (5,)"), ((2, 2, 2), "3 dimension(s)")]
)
def test_npy_of_the_wrong_rank(tmp_path: Path, shape: tuple[int, ...], dims: str) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.zeros(shape))
    message = refusal(path)
    assert message.startswith(f"{path}: the array has {dims}")
    assert message.endswith("a 2-D array (rows x columns) is needed")
    assert str(shape) in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npy_nan_or_inf_gives_row_and_column(tmp_path: Path, bad: float) -> None:
    array = np.ones((5, 3))
    array[2, 1] = bad
    path = tmp_path / "data.npy"
    np.save(path, array)
    assert refusal(path) == f"{path}: row 3, column 2 is {bad}; NaN and inf cannot be fitted"


def test_npy_nan_far_down_is_found_with_its_row_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan goes a chunk at a time (the file is never loaded whole); the reported row is
    the row in the file, not in the chunk."""
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", 4)
    array = np.ones((11, 2), dtype=np.float32)
    array[9, 0] = np.nan
    path = tmp_path / "data.npy"
    np.save(path, array)
    assert refusal(path) == f"{path}: row 10, column 1 is nan; NaN and inf cannot be fitted"


@pytest.mark.parametrize(
    ("array", "what"),
    [
        (np.array([["1", "2"], ["3", "4"]]), "dtype <U1"),
        (np.ones((3, 2), dtype=complex), "dtype complex128"),
    ],
)
def test_npy_that_is_not_real_numbers(tmp_path: Path, array: np.ndarray, what: str) -> None:
    path = tmp_path / "data.npy"
    np.save(path, array)
    assert refusal(path) == f"{path}: the array has {what}; a numeric array is needed"


def test_npy_of_python_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    assert refusal(path).startswith(f"{path}: not a numeric .npy array (")


def test_npy_with_the_wrong_signature(tmp_path: Path) -> None:
    path = write(tmp_path, "data.npy", "a,b\n1,2\n3,4\n")
    assert refusal(path) == f"{path}: not a .npy file (wrong file signature)"


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.ones((100, 3)))
    path.write_bytes(path.read_bytes()[:100])
    assert refusal(path).startswith(f"{path}: not a numeric .npy array (")


@pytest.mark.parametrize(("shape", "rows"), [((1, 3), 1), ((0, 3), 0)])
def test_npy_with_fewer_than_two_rows(tmp_path: Path, shape: tuple[int, int], rows: int) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.ones(shape))
    assert refusal(path) == f"{path}: has {rows} data row(s); at least 2 are needed"


# -- .npz -------------------------------------------------------------------------------------


@pytest.mark.parametrize("y_shape", ["flat", "column"])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_with_arrays_x_and_y(tmp_path: Path, y_shape: str, save: object) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.random((5, 2)), rng.random(5)
    path = tmp_path / "data.npz"
    save(path, X=X, y=y if y_shape == "flat" else y.reshape(-1, 1))  # type: ignore[operator]
    for target in (None, "y", "2", "-1"):
        data = load_dataset(path, target)
        assert data.feature_names == ("x1", "x2")
        assert data.target_name == "y"
        np.testing.assert_array_equal(data.X, X)
        np.testing.assert_array_equal(data.y, y)


def test_npz_with_x_and_y_has_y_as_its_only_target(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.ones((4, 2)), y=np.arange(4.0))
    assert refusal(path, "0") == f"--target 0: {path} holds arrays X and y, so the target is y"


def test_npz_with_one_2d_array_of_any_name(tmp_path: Path) -> None:
    array = np.arange(12.0).reshape(4, 3)
    path = tmp_path / "data.npz"
    np.savez(path, table=array)
    data = load_dataset(path)
    assert data.feature_names == ("x1", "x2")
    np.testing.assert_array_equal(data.X, array[:, :2])
    np.testing.assert_array_equal(data.y, array[:, 2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"X": np.ones((5, 2)), "y": np.ones(4)},
            "array y has shape (4,); expected (5,) to match X",
        ),
        (
            {"X": np.ones((5, 2)), "y": np.ones((5, 2))},
            "array y has shape (5, 2); expected (5,) to match X",
        ),
        (
            {"X": np.ones(5), "y": np.ones(5)},
            "array X has 1 dimension(s), shape (5,); a 2-D array (rows x columns) is needed",
        ),
        (
            {"X": np.ones((5, 2)), "y": np.array(["a"] * 5)},
            "array y has dtype <U1; a numeric array is needed",
        ),
        (
            {"data": np.ones(5)},
            "array data has 1 dimension(s), shape (5,); a 2-D array (rows x columns) is needed",
        ),
        (
            {"a": np.ones((5, 2)), "b": np.ones(5)},
            "expected arrays 'X' and 'y', or a single 2-D array; found ['a', 'b']",
        ),
        ({}, "expected arrays 'X' and 'y', or a single 2-D array; found none"),
    ],
)
def test_npz_of_the_wrong_shape(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    assert refusal(path) == f"{path}: {message}"


def test_npz_nan_in_x_and_inf_in_y_give_row_and_column(tmp_path: Path) -> None:
    X, y = np.ones((5, 2)), np.ones(5)
    X[3, 1] = np.nan
    path = tmp_path / "x.npz"
    np.savez(path, X=X, y=y)
    assert refusal(path) == f"{path}: row 4, column 2 is nan; NaN and inf cannot be fitted"
    X[3, 1], y[2] = 0, np.inf
    path = tmp_path / "y.npz"
    np.savez(path, X=X, y=y)
    assert refusal(path) == f"{path}: row 3, column 1 (y) is inf; NaN and inf cannot be fitted"


def test_npz_with_the_wrong_signature(tmp_path: Path) -> None:
    path = write(tmp_path, "data.npz", "X,y\n1,2\n3,4\n")
    assert refusal(path) == f"{path}: not an .npz archive (wrong file signature)"


def test_npz_that_is_a_damaged_zip(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, X=np.ones((50, 2)), y=np.ones(50))
    path.write_bytes(path.read_bytes()[:200])
    assert refusal(path).startswith(f"{path}: not a readable .npz archive (")


# -- .parquet ---------------------------------------------------------------------------------


@pytest.fixture
def parquet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a parquet file from columns (pyarrow is in the test extra)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def make(columns: dict[str, list[object]], name: str = "data.parquet") -> Path:
        path = tmp_path / name
        pq.write_table(pa.table(columns), path)
        return path

    return make


def test_parquet_columns_by_name(parquet) -> None:  # type: ignore[no-untyped-def]
    path = parquet({"u": [1.5, 2.0, 3.0], "n": [1, 2, 3], "w": [0.5, 0.25, 0.125]})
    table = read_table(path)
    assert table.names == ("u", "n", "w")
    assert table.values.dtype == np.float64
    np.testing.assert_array_equal(table.values, [[1.5, 1, 0.5], [2, 2, 0.25], [3, 3, 0.125]])
    data = select_target(table, "u")
    assert data.feature_names == ("n", "w")
    assert data.target_name == "u"
    np.testing.assert_array_equal(data.y, [1.5, 2, 3])


def test_parquet_text_column_is_categorical(parquet) -> None:  # type: ignore[no-untyped-def]
    path = parquet({"s": ["a", "b", "b"], "u": [1.0, 2.0, 3.0]})
    data = load_dataset(path)
    assert data.feature_names == ("s=a",)  # b, the most frequent, is the reference
    np.testing.assert_array_equal(data.X, [[1], [0], [0]])


@pytest.mark.parametrize(
    ("column", "shown"),
    [([1.0, None, 3.0], "nan"), ([1, None, 3], "nan"), ([1.0, 2.0, np.inf], "inf")],
)
def test_parquet_missing_or_infinite_value(parquet, column: list[object], shown: str) -> None:  # type: ignore[no-untyped-def]
    path = parquet({"u": column, "v": [1.0, 2.0, 3.0]})
    if shown == "inf":
        assert refusal(path) == (
            f"{path} data row 3, column 1 (u): inf is not a finite number (NaN and inf cannot "
            "be fitted)"
        )
    else:
        assert refusal(path).startswith(f"{path} data row 2, column 1 (u): missing value; use")


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = write(tmp_path, "data.parquet", "a,b\n1,2\n3,4\n")
    assert refusal(path).startswith(f"{path}: not a readable parquet file (")


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    """pyarrow blocked in a fresh interpreter (``sys.modules['pyarrow'] = None`` makes every
    import of it fail, as when the extra is not installed)."""
    path = write(tmp_path, "data.parquet", "PAR1 not needed: the import fails first")
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from pathlib import Path\n"
        "from regression.datafile import load_dataset\n"
        "from regression.errors import DataError\n"
        "try:\n"
        "    load_dataset(Path(sys.argv[1]))\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('loaded')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{path}: reading .parquet needs the optional extra 'parquet' "
        "(pip install 'linreg-torch-cli[parquet]')"
    )


# -- the target column ------------------------------------------------------------------------


@pytest.fixture
def abc(tmp_path: Path) -> Path:
    return write(tmp_path, "abc.csv", "a,b,c\n1,2,3\n4,5,6\n")


@pytest.mark.parametrize(
    ("target", "features", "name", "y"),
    [
        (None, ("a", "b"), "c", [3, 6]),
        ("c", ("a", "b"), "c", [3, 6]),
        ("a", ("b", "c"), "a", [1, 4]),
        ("0", ("b", "c"), "a", [1, 4]),
        ("1", ("a", "c"), "b", [2, 5]),
        ("2", ("a", "b"), "c", [3, 6]),
        ("-1", ("a", "b"), "c", [3, 6]),
        ("-3", ("b", "c"), "a", [1, 4]),
    ],
)
def test_target_by_name_or_index(
    abc: Path, target: str | None, features: tuple[str, ...], name: str, y: list[float]
) -> None:
    data = load_dataset(abc, target)
    assert data.feature_names == features
    assert data.target_name == name
    np.testing.assert_array_equal(data.y, y)
    table = np.array([[1, 2, 3], [4, 5, 6]], dtype=float)
    columns = ["abc".index(f) for f in features]
    np.testing.assert_array_equal(data.X, table[:, columns])


def test_headerless_target_by_index_renames_features_by_position(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "1,2,3\n4,5,6\n")
    data = load_dataset(path, "0")
    assert data.feature_names == ("x1", "x2")
    assert data.target_name == "y"
    np.testing.assert_array_equal(data.X, [[2, 3], [5, 6]])
    np.testing.assert_array_equal(data.y, [1, 4])


@pytest.mark.parametrize("target", ["d", "A", "1.5", ""])
def test_an_unknown_target_is_named_and_the_columns_listed(abc: Path, target: str) -> None:
    assert refusal(abc, target) == (
        f"--target {target!r} is not a column of {abc}; columns: a, b, c"
    )


@pytest.mark.parametrize("target", ["3", "-4", "100"])
def test_a_target_index_out_of_range(abc: Path, target: str) -> None:
    assert refusal(abc, target) == (
        f"--target {int(target)} is out of range: {abc} has 3 columns (0 to 2)"
    )


@pytest.mark.parametrize("target", [None, "a", "0"])
def test_one_column_leaves_no_features(tmp_path: Path, target: str | None) -> None:
    path = write(tmp_path, "data.csv", "a\n1\n2\n")
    assert refusal(path, target) == (f"{path}: only one column (a); no feature columns are left")


def test_a_named_target_in_a_headerless_file_asks_for_an_index(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "1,2,3\n4,5,6\n")
    assert refusal(path, "z") == (
        f"--target 'z': {path} has no header row, so columns are chosen by 0-based index, 0 to 2"
    )
    assert load_dataset(path, "0").target_name == "y"


# -- write_table ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".npy", ".npz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_write_table_round_trips_exactly(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(2)
    X = (rng.standard_normal((7, 3)) * 10.0 ** rng.integers(-20, 20, (7, 3))).astype(dtype)
    y = rng.standard_normal(7).astype(dtype)
    names = ("x1", "x2", "x3", "y")
    path = tmp_path / f"data{suffix}"
    path.write_bytes(write_table(path, X, y, names))
    data = load_dataset(path)
    assert data.feature_names == ("x1", "x2", "x3")
    assert data.target_name == "y"
    # every value comes back exactly (text files hold the shortest repr of each number)
    np.testing.assert_array_equal(data.X, X)
    np.testing.assert_array_equal(data.y, y)
    if suffix in (".npy", ".npz"):
        assert data.X.dtype == dtype and data.y.dtype == dtype
    assert write_table(path, X, y, names) == path.read_bytes()  # the same bytes every time


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_write_table_text_has_a_header_row_of_names(
    tmp_path: Path, suffix: str, delimiter: str
) -> None:
    text = write_table(
        tmp_path / f"d{suffix}", np.array([[0.5, 2.0]]), np.array([-1.0]), ("p", "q", "t")
    ).decode()
    assert (
        text
        == delimiter.join(["p", "q", "t"]) + "\n" + delimiter.join(["0.5", "2.0", "-1.0"]) + "\n"
    )


def test_write_table_npz_holds_x_and_y(tmp_path: Path) -> None:
    X, y = np.arange(6.0).reshape(3, 2), np.array([7.0, 8.0, 9.0])
    path = tmp_path / "d.npz"
    path.write_bytes(write_table(path, X, y, ("x1", "x2", "y")))
    with np.load(path) as archive:
        assert sorted(archive.keys()) == ["X", "y"]
        np.testing.assert_array_equal(archive["X"], X)
        np.testing.assert_array_equal(archive["y"], y)


@pytest.mark.parametrize("name", ["d.parquet", "d.txt", "d"])
def test_write_table_refuses_other_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(DataError) as info:
        write_table(path, np.ones((2, 1)), np.ones(2), ("x1", "y"))
    assert str(info.value).startswith(f"{path}: unsupported output format ")
    assert ".csv, .tsv, .npy or .npz" in str(info.value)


# -- the hold-out split -----------------------------------------------------------------------


def numbered(n: int) -> Dataset:
    """Row i holds i in every column, so a row's origin can be read off its values."""
    X = np.repeat(np.arange(n, dtype=np.float64)[:, None], 2, axis=1)
    return Dataset(X=X, y=X[:, 0].copy(), feature_names=("a", "b"), target_name="y", source="t")


def test_fraction_zero_holds_nothing_out() -> None:
    data = numbered(10)
    train, val = split(data, fraction=0, seed=0)
    assert train is data
    assert val is None


@pytest.mark.parametrize(
    ("n", "fraction", "held"), [(20, 0.3, 6), (10, 0.01, 1), (100, 0.2, 20), (7, 0.7, 5)]
)
def test_split_sizes_and_rows(n: int, fraction: float, held: int) -> None:
    train, val = split(numbered(n), fraction=fraction, seed=5)
    assert val is not None
    assert (train.samples, val.samples) == (n - held, held)
    train_rows, val_rows = train.y.astype(int), val.y.astype(int)
    # disjoint, together every row once, each part in the file's order
    assert sorted([*train_rows, *val_rows]) == list(range(n))
    assert list(train_rows) == sorted(train_rows) and list(val_rows) == sorted(val_rows)
    np.testing.assert_array_equal(train.X[:, 1], train.y)
    np.testing.assert_array_equal(val.X[:, 1], val.y)
    assert val.feature_names == ("a", "b") and val.target_name == "y"


def test_same_seed_same_split_and_another_seed_another() -> None:
    rows = {
        seed: tuple(split(numbered(100), fraction=0.25, seed=seed)[1].y)  # type: ignore[union-attr]
        for seed in (0, 1)
    }
    again = tuple(split(numbered(100), fraction=0.25, seed=0)[1].y)  # type: ignore[union-attr]
    assert rows[0] == again
    assert rows[0] != rows[1]


def test_split_of_a_memory_mapped_file(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, np.arange(40.0).reshape(20, 2))
    data = load_dataset(path)
    train, val = split(data, fraction=0.25, seed=0)
    assert val is not None
    assert (train.samples, val.samples) == (15, 5)
    np.testing.assert_array_equal(np.sort(np.concatenate([train.y, val.y])), data.y)


def test_split_that_leaves_fewer_than_two_training_rows() -> None:
    with pytest.raises(DataError) as info:
        split(numbered(3), fraction=0.5, seed=0)
    assert str(info.value) == (
        "--val-fraction 0.5 leaves 1 of 3 rows for training; at least 2 are needed"
    )


# -- predict_file -----------------------------------------------------------------------------

W = np.array([2.0, -1.0, 0.5])
B = 0.25


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A real model file (safetensors) of y = 2a - b + 0.5c + 0.25."""
    path = tmp_path / "model.safetensors"
    save_model(
        path,
        ModelFile(
            weight=W,
            bias=B,
            feature_names=("a", "b", "c"),
            target_name="y",
            scaling_mean=np.zeros(3),
            scaling_scale=np.ones(3),
            linear_weight=W,
            linear_bias=B,
            standardize=False,
            dtype="float64",
        ),
    )
    return path


def csv_text(names: list[str] | None, rows: np.ndarray) -> str:
    lines = [",".join(names)] if names else []
    lines += [",".join(repr(float(v)) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def features(n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3))


def assert_fit(fit: object, y: np.ndarray, predicted: np.ndarray) -> None:
    """mse, rmse, mae and r2 against their textbook formulas."""
    residual = y - predicted
    mse = float(np.mean(residual**2))
    r2 = 1 - float(np.sum(residual**2)) / float(np.sum((y - y.mean()) ** 2))
    expected = {"mse": mse, "rmse": mse**0.5, "mae": float(np.mean(np.abs(residual))), "r2": r2}
    assert fit.to_dict() == pytest.approx(expected, rel=1e-12)  # type: ignore[attr-defined]


def test_columns_are_matched_by_name_in_any_order(tmp_path: Path, model: Path) -> None:
    X = features()
    y = X @ W + B + np.linspace(-0.1, 0.1, len(X))
    extra = np.full(len(X), 99.0)
    # columns c, extra, y, a, b: reordered, with the target and a column the model does not use
    table = np.column_stack([X[:, 2], extra, y, X[:, 0], X[:, 1]])
    path = write(tmp_path, "rows.csv", csv_text(["c", "extra", "y", "a", "b"], table))
    result = predict_file(model, path)
    np.testing.assert_allclose(result.predictions, X @ W + B, rtol=1e-14, atol=1e-14)
    assert result.predictions.dtype == np.float64
    assert result.ignored == ("extra",)
    assert result.model.feature_names == ("a", "b", "c")
    assert_fit(result.fit, y, X @ W + B)


def test_without_the_target_column_there_are_no_metrics(tmp_path: Path, model: Path) -> None:
    X = features()
    path = write(tmp_path, "rows.csv", csv_text(["b", "a", "c"], X[:, [1, 0, 2]]))
    result = predict_file(model, path)
    np.testing.assert_allclose(result.predictions, X @ W + B, rtol=1e-14, atol=1e-14)
    assert result.fit is None
    assert result.ignored == ()


def test_target_option_names_the_target_column(tmp_path: Path, model: Path) -> None:
    X = features()
    truth = X @ W + B + 1.0
    path = write(
        tmp_path, "rows.csv", csv_text(["a", "b", "c", "label"], np.column_stack([X, truth]))
    )
    assert predict_file(model, path).ignored == ("label",)
    result = predict_file(model, path, "label")
    assert result.ignored == ()
    assert_fit(result.fit, truth, X @ W + B)
    assert result.fit.mse == pytest.approx(1.0, rel=1e-12)  # type: ignore[union-attr]


def test_missing_feature_columns_are_named(tmp_path: Path, model: Path) -> None:
    path = write(tmp_path, "rows.csv", "a,c,y\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError) as info:
        predict_file(model, path)
    assert str(info.value) == (
        f"{path} does not match the model: expected feature columns a, b, c; "
        "found a, c, y (missing b)"
    )


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_headerless_files_are_matched_by_position(tmp_path: Path, model: Path, suffix: str) -> None:
    X = features()
    y = X @ W + B + 0.5
    for name, table, target, expect_y in [
        ("features", X, None, None),
        ("with_target", np.column_stack([X, y]), None, y),
        ("target_first", np.column_stack([y, X]), "0", y),
    ]:
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".npy":
            np.save(path, table)
        else:
            path.write_text(csv_text(None, table))
        result = predict_file(model, path, target)
        np.testing.assert_allclose(result.predictions, X @ W + B, rtol=1e-14, atol=1e-14)
        if expect_y is None:
            assert result.fit is None
        else:
            assert_fit(result.fit, expect_y, X @ W + B)


@pytest.mark.parametrize("columns", [2, 5])
def test_headerless_file_with_the_wrong_number_of_columns(
    tmp_path: Path, model: Path, columns: int
) -> None:
    path = tmp_path / "rows.npy"
    np.save(path, np.ones((4, columns)))
    with pytest.raises(DataError) as info:
        predict_file(model, path)
    assert str(info.value) == (
        f"{path}: {columns} columns; the model expects 3 feature columns (a, b, c), "
        "or 4 with the target"
    )


def test_npz_with_x_and_y(tmp_path: Path, model: Path) -> None:
    X = features()
    y = X @ W + B - 0.2
    path = tmp_path / "rows.npz"
    np.savez(path, X=X, y=y)
    result = predict_file(model, path)
    np.testing.assert_allclose(result.predictions, X @ W + B, rtol=1e-14, atol=1e-14)
    assert_fit(result.fit, y, X @ W + B)
    np.savez(path, X=X[:, :2], y=y)
    with pytest.raises(DataError) as info:
        predict_file(model, path)
    assert str(info.value) == (
        f"{path}: array X has 2 columns; the model expects 3 features (a, b, c)"
    )


def test_data_errors_come_before_any_prediction(tmp_path: Path, model: Path) -> None:
    path = write(tmp_path, "rows.csv", "a,b,c\n1,2,3\n4,x,6\n")
    with pytest.raises(DataError) as info:
        predict_file(model, path)
    assert str(info.value) == f"{path} line 3, column 2 (b): 'x' is not a number"


def test_one_row_can_be_predicted(tmp_path: Path, model: Path) -> None:
    path = write(tmp_path, "one.csv", "a,b,c\n1,2,4\n")
    result = predict_file(model, path)
    np.testing.assert_allclose(result.predictions, [2 - 2 + 2 + B], rtol=1e-15)


def payload_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when it is unpickled."""

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    return pickle.dumps({"weight": [1.0], "bias": Payload()})


def test_a_pickle_is_refused_without_running_its_payload(tmp_path: Path) -> None:
    # the payload is live: unpickling one (here, on purpose) creates its file
    probe = tmp_path / "probe"
    pickle.loads(payload_pickle(probe))
    assert probe.exists()
    marker = tmp_path / "payload-ran"
    path = write(tmp_path, "model.pkl", payload_pickle(marker))
    with pytest.raises(ModelFileError) as info:
        predict_file(path, write(tmp_path, "rows.csv", "a,b,c\n1,2,3\n4,5,6\n"))
    assert str(info.value).startswith(f"{path} is not a linreg model file (not safetensors")
    assert not marker.exists()


def test_other_safetensors_files_are_not_models(tmp_path: Path) -> None:
    from safetensors.numpy import save

    path = write(tmp_path, "other.safetensors", save({"weight": np.ones(3)}))
    with pytest.raises(ModelFileError) as info:
        predict_file(path, write(tmp_path, "rows.csv", "a,b,c\n1,2,3\n4,5,6\n"))
    assert str(info.value) == f"{path} is not a linreg model file (no 'linreg-model' marker)"


def test_truncated_and_tampered_models_are_refused(tmp_path: Path, model: Path) -> None:
    rows = write(tmp_path, "rows.csv", "a,b,c\n1,2,3\n4,5,6\n")
    raw = model.read_bytes()
    truncated = write(tmp_path, "truncated.safetensors", raw[:-8])
    with pytest.raises(ModelFileError) as info:
        predict_file(truncated, rows)
    assert str(info.value).startswith(f"{truncated} is not a linreg model file (not safetensors:")
    tampered = bytearray(raw)
    tampered[-1] ^= 0x01  # the last byte of the last float64
    path = write(tmp_path, "tampered.safetensors", bytes(tampered))
    with pytest.raises(ModelFileError) as info:
        predict_file(path, rows)
    assert str(info.value) == f"{path}: damaged or modified model file (checksum mismatch)"


def test_the_fixture_model_is_a_complete_linreg_model(model: Path) -> None:
    """load_model accepts what save_model wrote, and gives back the same bytes."""
    loaded = load_model(model)
    np.testing.assert_array_equal(loaded.weight, W)
    assert loaded.bias == B
    assert (loaded.feature_names, loaded.target_name) == (("a", "b", "c"), "y")
    assert model_bytes(loaded) == model.read_bytes()
