"""The synthetic generator (property tests) and the column statistics used to standardize."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import regression.data
import regression.threads
from regression.config import TrainConfig
from regression.data import Dataset, column_stats, fingerprint, synthetic

PATCHED = [HealthCheck.function_scoped_fixture]


@st.composite
def configs(draw: st.DrawFn, noise: st.SearchStrategy[float] | None = None) -> TrainConfig:
    features = draw(st.integers(1, 5))
    weight = draw(
        st.lists(st.floats(-100, 100), min_size=1, max_size=1)
        | st.lists(st.floats(-100, 100), min_size=features, max_size=features)
    )
    return TrainConfig(
        samples=draw(st.integers(1, 300)),
        features=features,
        weight=tuple(weight),
        bias=draw(st.floats(-100, 100)),
        noise=draw(noise if noise is not None else st.floats(0, 10)),
        seed=draw(st.integers(0, 2**63 - 1)),
        dtype=draw(st.sampled_from(["float32", "float64"])),
    )


@settings(max_examples=50, deadline=None)
@given(config=configs())
def test_shapes_dtype_names_and_finiteness(config: TrainConfig) -> None:
    data = synthetic(config)
    assert data.X.shape == (config.samples, config.features)
    assert data.y.shape == (config.samples,)
    assert data.X.dtype == np.dtype(config.dtype)
    assert data.y.dtype == np.dtype(config.dtype)
    assert data.samples == config.samples and data.features == config.features
    assert data.feature_names == tuple(f"x{j}" for j in range(1, config.features + 1))
    assert data.target_name == "y"
    assert data.source == "synthetic"
    assert np.all(np.isfinite(data.X)) and np.all(np.isfinite(data.y))
    # X ~ U[0, 1): rounding to float32 may reach 1.0, never beyond
    assert data.X.min() >= 0.0
    assert data.X.max() < 1.0 if config.dtype == "float64" else data.X.max() <= 1.0


@settings(max_examples=30, deadline=None)
@given(config=configs())
def test_same_seed_gives_identical_arrays(config: TrainConfig) -> None:
    first, second = synthetic(config), synthetic(config)
    np.testing.assert_array_equal(first.X, second.X, strict=True)
    np.testing.assert_array_equal(first.y, second.y, strict=True)


@settings(max_examples=30, deadline=None)
@given(config=configs(), other=st.integers(0, 2**63 - 1))
def test_different_seed_gives_different_arrays(config: TrainConfig, other: int) -> None:
    if other == config.seed:
        other = other - 1 if other else 1
    first = synthetic(config)
    second = synthetic(dataclasses.replace(config, seed=other))
    assert not np.array_equal(first.X, second.X)


@settings(max_examples=30, deadline=None)
@given(config=configs(noise=st.floats(0.1, 10)))
def test_noise_is_drawn_independently_of_x(config: TrainConfig) -> None:
    """Changing only the noise level leaves X as it was (two streams of one seed)."""
    quiet = dataclasses.replace(config, noise=0.0)
    np.testing.assert_array_equal(synthetic(config).X, synthetic(quiet).X)


@settings(max_examples=50, deadline=None)
@given(config=configs(noise=st.just(0.0)))
def test_noise_zero_gives_exactly_linear_y(config: TrainConfig) -> None:
    data = synthetic(config)
    w = np.asarray(config.weights)
    X64 = data.X.astype(np.float64)
    expected = X64 @ w + config.bias
    # X and y are each rounded once to the dtype from the same float64 draw
    eps = np.finfo(data.X.dtype).eps
    magnitude = np.abs(X64) @ np.abs(w) + abs(config.bias)
    tiny = np.finfo(data.X.dtype).tiny  # a product below it underflows in float32
    np.testing.assert_array_less(np.abs(data.y - expected), 4 * eps * magnitude + 4 * tiny)


def test_noise_zero_float64_is_linear_to_the_last_bits() -> None:
    config = TrainConfig(
        samples=1000, features=3, weight=(1.5, -2.0, 0.25), bias=0.5, noise=0.0, dtype="float64"
    )
    data = synthetic(config)
    np.testing.assert_allclose(data.y, data.X @ np.array(config.weights) + 0.5, rtol=0, atol=1e-14)


def test_noise_has_the_requested_standard_deviation() -> None:
    config = TrainConfig(samples=20000, features=2, noise=0.5, dtype="float64")
    data = synthetic(config)
    residual = data.y - (data.X @ np.array(config.weights) + config.bias)
    # std of 20000 N(0, 0.25) draws: relative standard error about 0.5 %
    assert residual.std() == pytest.approx(0.5, rel=0.03)
    assert residual.mean() == pytest.approx(0.0, abs=0.02)


@settings(max_examples=40, deadline=None, suppress_health_check=PATCHED)
@given(config=configs(), chunk=st.integers(1, 64))
def test_result_does_not_depend_on_chunk_rows(
    config: TrainConfig, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = synthetic(config)
    with monkeypatch.context() as patch:
        patch.setattr(regression.data, "CHUNK_ROWS", chunk)
        chunked = synthetic(config)
    np.testing.assert_array_equal(chunked.X, whole.X, strict=True)
    np.testing.assert_array_equal(chunked.y, whole.y, strict=True)


@pytest.mark.parametrize("chunk", [7, 64, 333])
def test_chunk_rows_give_bit_identical_float64_data(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(
        samples=1000, features=5, weight=(1.5, -2.0, 0.3, 4.0, -1.1), dtype="float64"
    )
    whole = synthetic(config)
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", chunk)
    chunked = synthetic(config)
    np.testing.assert_array_equal(chunked.X, whole.X, strict=True)
    np.testing.assert_array_equal(chunked.y, whole.y, strict=True)


def test_one_row_chunks_give_bit_identical_float64_data(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(
        samples=1000, features=5, weight=(1.5, -2.0, 0.3, 4.0, -1.1), dtype="float64"
    )
    whole = synthetic(config)
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", 1)
    chunked = synthetic(config)
    np.testing.assert_array_equal(chunked.X, whole.X, strict=True)
    np.testing.assert_array_equal(chunked.y, whole.y, strict=True)


# -- column statistics ---------------------------------------------------------------------

matrices = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
    # magnitudes below 1e-100 are left out: their squares underflow to subnormals, a limit of
    # float64 rather than of the method
    elements=st.floats(-1e6, -1e-100) | st.just(0.0) | st.floats(1e-100, 1e6),
)


@settings(max_examples=80, deadline=None)
@given(X=matrices, offset=st.floats(-1e6, 1e6))
def test_column_stats_match_numpy(X: np.ndarray, offset: float) -> None:
    X = X + offset
    stats = column_stats(X)
    value_range = X.max(axis=0) - X.min(axis=0)
    np.testing.assert_allclose(stats.mean, X.mean(axis=0), rtol=1e-12, atol=1e-9)
    # the one-pass shifted update loses a few eps of the value range against numpy's two-pass
    # std; a spread under 1e-12 of the column's magnitude is declared constant (std 0)
    bound = 1e-12 * value_range + 1e-12 * np.abs(X.mean(axis=0)) + 1e-300
    np.testing.assert_array_less(np.abs(stats.std - X.std(axis=0)), bound)
    assert np.all(stats.std >= 0)
    np.testing.assert_array_equal(stats.scale, np.where(stats.std > 0, stats.std, 1.0))


def test_column_stats_of_normal_data_to_many_digits() -> None:
    X = np.random.default_rng(3).normal(
        loc=[0.0, 1e4, -5.0], scale=[1.0, 0.01, 100.0], size=(5000, 3)
    )
    stats = column_stats(X)
    scale = np.abs(X).max(axis=0)
    np.testing.assert_array_less(np.abs(stats.mean - X.mean(axis=0)), 1e-13 * scale)
    np.testing.assert_allclose(stats.std, X.std(axis=0), rtol=1e-9)


@pytest.mark.parametrize("value", [0.0, 0.1, 3.7, -12345.678, 1e300, 5e-324])
def test_constant_column_has_std_zero_and_scale_one(value: float) -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.random(257), np.full(257, value), rng.random(257)])
    stats = column_stats(X)
    assert stats.mean[1] == value
    assert stats.std[1] == 0.0
    assert stats.scale[1] == 1.0
    assert np.all(stats.std[[0, 2]] > 0)
    np.testing.assert_array_equal(stats.scale[[0, 2]], stats.std[[0, 2]])


def test_column_stats_does_not_depend_on_chunk_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    X = np.random.default_rng(1).normal(100.0, 3.0, size=(1001, 4))
    whole = column_stats(X)
    monkeypatch.setattr(regression.data, "CHUNK_ROWS", 7)
    chunked = column_stats(X)
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-14)
    np.testing.assert_allclose(chunked.std, whole.std, rtol=1e-12)


def test_column_stats_accepts_float32_and_returns_float64() -> None:
    X = np.random.default_rng(2).random((300, 2)).astype(np.float32)
    stats = column_stats(X)
    assert stats.mean.dtype == np.float64 and stats.std.dtype == np.float64
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(stats.mean, X64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.std, X64.std(axis=0), rtol=1e-10)


def test_fingerprint_does_not_depend_on_the_memory_layout() -> None:
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(300, 3)), rng.normal(size=300)
    c_order = Dataset(X=X, y=y, feature_names=("a", "b", "c"), target_name="y", source="m")
    fortran = dataclasses.replace(c_order, X=np.asfortranarray(X))
    strided = dataclasses.replace(c_order, y=np.column_stack([y, y])[:, 0])
    assert fingerprint(c_order) == fingerprint(fortran) == fingerprint(strided)


# -- moments: one pass for the column statistics and the least squares -----------------------


@pytest.mark.parametrize("shape", [(1, 3), (5, 1), (40_000, 6)])
def test_moments_match_numpy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(11)
    X = rng.normal(1e3, 2.0, size=shape)
    y = rng.normal(size=shape[0])
    sums = regression.data.moments(X, y)
    both = np.column_stack([X, y])
    centered = both - both.mean(axis=0)
    assert sums.samples == shape[0]
    np.testing.assert_allclose(sums.mean, both.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sums.gram, centered.T @ centered, rtol=1e-9, atol=1e-9)


def test_moments_of_parts_merge_to_the_moments_of_the_whole() -> None:
    """What torchrun ranks do: the parts' moments, sent as arrays, merged in order."""
    rng = np.random.default_rng(12)
    X, y = rng.normal(5.0, 3.0, size=(3001, 4)), rng.normal(size=3001)
    whole = regression.data.moments(X, y)
    merged = regression.data.Moments.empty(5)
    for a, b in [(0, 1000), (1000, 1000), (1000, 2500), (2500, 3001)]:
        part = regression.data.moments(X[a:b], y[a:b])
        merged = merged.merge(regression.data.Moments.from_array(part.as_array()))
    assert merged.samples == whole.samples
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(merged.gram, whole.gram, rtol=1e-12)


@pytest.mark.parametrize("value", [0.1, -3.7, 1e6 + 0.3])
def test_moments_of_a_constant_column_are_exact(value: float) -> None:
    X = np.column_stack([np.full(200_000, value), np.arange(200_000.0)])
    sums = regression.data.moments(X)
    assert sums.mean[0] == value
    assert sums.gram[0, 0] == 0.0 and sums.gram[0, 1] == 0.0
    assert sums.column_stats(2).std[0] == 0.0


def test_fingerprint_is_the_sha256_of_the_float64_rows() -> None:
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(150_000, 2)).astype(np.float32), rng.normal(size=150_000)
    data = Dataset(X=X, y=y, feature_names=("a", "b"), target_name="y", source="m")
    oracle = hashlib.sha256(b"150000x2;")
    oracle.update(X.astype("<f8").tobytes())
    oracle.update(y.astype("<f8").tobytes())
    assert fingerprint(data) == oracle.hexdigest()


@pytest.mark.parametrize(
    ("make", "view"),
    [
        (lambda a: a, True),
        (lambda a: a.astype(np.float32), False),
        (np.asfortranarray, False),
        (lambda a: np.repeat(a, 2, axis=0)[::2], False),
        (lambda a: np.require(a, requirements="C").copy().view(), True),
    ],
)
def test_float64_rows_are_views_where_they_can_be_else_scratch(make: object, view: bool) -> None:
    X = np.random.default_rng(6).normal(size=(1000, 3))
    data = make(X)  # type: ignore[operator]
    rows = regression.data.float64_rows(data, 100, 300, "test")
    assert rows.dtype == np.float64 and rows.flags.c_contiguous and rows.shape == (200, 3)
    np.testing.assert_array_equal(rows, np.asarray(data[100:300], dtype=np.float64))
    assert np.shares_memory(rows, data) is view
    if not view:
        assert np.shares_memory(rows, regression.threads.scratch(600, slot="test"))


def test_float64_rows_of_a_read_only_file_are_copies(tmp_path: Path) -> None:
    X = np.random.default_rng(7).normal(size=(1000, 3))
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    rows = regression.data.float64_rows(mapped, 0, 500, "test")
    assert rows.flags.writeable and not np.shares_memory(rows, mapped)
    np.testing.assert_array_equal(rows, X[:500])


def test_background_digest_is_the_digest_and_reraises() -> None:
    X = np.random.default_rng(13).normal(size=(70_000, 3)).astype(np.float32)
    data = Dataset(X=X, y=X.sum(axis=1), feature_names=("a", "b", "c"), target_name="y", source="s")
    assert regression.data.BackgroundDigest(data).result() == fingerprint(data)
    broken = dataclasses.replace(data, y=None)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):  # raised in the thread, re-raised by result()
        regression.data.BackgroundDigest(broken).result()


def test_chunks_of_wide_data_stay_a_few_megabytes() -> None:
    """Chunks hold at most CHUNK_ROWS rows and CHUNK_BYTES of float64, so a pass over wide
    data (and the two that may run at once) holds a few MB, not CHUNK_ROWS wide rows."""
    wide = np.zeros((5000, 2000), dtype=np.float32)
    sizes = [len(block) for _, block in regression.data.chunks(wide)]
    assert sum(sizes) == 5000
    assert max(sizes) * 2000 * 8 <= regression.data.CHUNK_BYTES
    narrow = np.zeros((200_000, 3))
    assert max(len(b) for _, b in regression.data.chunks(narrow)) == regression.data.CHUNK_ROWS


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_moments_do_not_depend_on_the_thread_count(threads: int) -> None:
    """The chunks' moments are merged in row order whichever thread made them: the same bits
    with 1, 2 or 3 threads, and torch's thread count is put back."""
    import torch

    rng = np.random.default_rng(14)
    X, y = rng.normal(3.0, 2.0, size=(300_000, 5)), rng.normal(size=300_000)
    assert X.shape[0] * 6 * 8 >= regression.threads.MIN_PIECES * (2 << 20)  # threads share it
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = regression.data.moments(X, y)
        torch.set_num_threads(threads)
        many = regression.data.moments(X, y)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert many.samples == one.samples
    np.testing.assert_array_equal(many.mean, one.mean)
    np.testing.assert_array_equal(many.gram, one.gram)


def test_a_core_pool_needs_a_few_pieces_and_puts_the_thread_count_back() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert regression.threads.CorePool.start(regression.threads.MIN_PIECES - 1) is None
        pool = regression.threads.CorePool.start(regression.threads.MIN_PIECES)
        assert pool is not None and pool.workers == 2 and torch.get_num_threads() == 1
        pool.close()
        assert torch.get_num_threads() == 2
        with regression.threads.single_threaded():
            assert torch.get_num_threads() == 1
        with regression.threads.single_threaded(False):
            assert torch.get_num_threads() == 2
        with pytest.raises(ValueError), regression.threads.single_threaded():
            raise ValueError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_scratch_is_the_same_memory_for_each_thread() -> None:
    first = regression.threads.scratch(1000)
    again = regression.threads.scratch(500, np.float32)
    assert first.dtype == np.float64 and first.shape == (1000,)
    assert again.dtype == np.float32 and again.shape == (500,)
    assert np.shares_memory(first, again)
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(regression.threads.scratch(1000)))
    thread.start()
    thread.join()
    assert not np.shares_memory(first, other[0])
    named = regression.threads.scratch(1000, slot="other")
    assert not np.shares_memory(first, named)
    assert np.shares_memory(named, regression.threads.scratch(10, slot="other"))
