"""Folding new rows of a table into a model's least-squares state when the encoding moves.

An update reads the new rows with the model's columns and policies, and encodes them on
their own (their levels, their reference, their fill values). The encoding of all the rows
together is then fitted from the counts both sides carry: a categorical column's level
counts are its indicator columns' means times the rows (the reference's count is the rest),
a filled column's observed sum and count follow from its mean, its fill value and its
missing indicator. That is the encoding ``linreg train`` would choose on all the rows: every
level seen, the reference the most frequent one (ties: first in sorted order), the fill
value the mean of every observed cell.

Each side's design is an affine function of the new encoding's (x' = A x + c): a level
column is a one-hot of the old coding (the old reference's indicator is 1 minus the
others), a filled cell moves by the change of its fill value. So each side's state maps
exactly: the means by the same map, the centered factor by A (F' = F A', factored again).
The merged state is then that of all the rows in the new encoding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from .artifacts import ModelFile
from .config import MAX_LEVELS
from .data import Dataset
from .errors import DataError
from .metrics import FitState
from .tables import Coding, Encoding, TableOptions


def moves(encoding: Encoding | None) -> bool:
    """Whether new rows can move the encoding: a categorical column (a new level, another
    reference) or a filled one (its fill value is the mean of every observed cell)."""
    return encoding is not None and any(
        c.categorical or c.fill is not None for c in encoding.columns
    )


def read_options(encoding: Encoding, target: str | None) -> TableOptions:
    """How to read new rows as the model's columns: the same columns (by name, or by
    position in a file without a header), categorical where the model's were, and the
    model's missing-value policy; each side is encoded on its own, then ``fold`` joins them."""

    def label(coding: Coding) -> str:
        return coding.name if encoding.headed else str(coding.index)

    default_target = encoding.target if encoding.headed else str(encoding.target_index)
    return TableOptions(
        target=target if target is not None else default_target,
        features=tuple(label(c) for c in encoding.columns),
        categorical=tuple(label(c) for c in encoding.columns if c.categorical),
        missing=encoding.missing,
        na_values=encoding.na_values,
        max_levels=MAX_LEVELS,
    )


def fold(model: ModelFile, new: Dataset, label: str) -> tuple[ModelFile, Dataset]:
    """The model (its parameters and least-squares state) and the new rows, both in the
    encoding of all their rows together (see ``union``): the model file's other fields are
    those of its own encoding, and are not used by an update."""
    assert model.encoding is not None and model.state is not None and new.encoding is not None
    old = Encoding.from_json(model.encoding)
    for mine, theirs in zip(old.columns, new.encoding.columns, strict=True):
        if not mine.categorical and theirs.categorical:
            raise DataError(
                f"{label}: column {mine.name!r} has text values; it is a number column in "
                "the model (train a new model on all the rows to make it categorical)"
            )
    state = model.state
    features = np.asarray(np.mean(new.X, axis=0, dtype=np.float64))
    joined = union(
        [(old, state.samples, state.mean[: old.features]), (new.encoding, new.samples, features)],
        label,
    )
    for coding in joined.columns:
        if coding.levels is not None and len(coding.levels) + 1 > MAX_LEVELS:
            raise DataError(
                f"{label}: column {coding.name!r} has {len(coding.levels) + 1} distinct values "
                f"with the model's, more than {MAX_LEVELS}"
            )
    to_joined, shift = affine_map(old, joined)
    back, offset = affine_map(joined, old)  # the model's features from the joined ones
    weight, bias = mapped_params(model.weight, model.bias, back, offset)
    folded = replace(
        model,
        weight=weight,
        bias=bias,
        feature_names=joined.feature_names,
        encoding=joined.to_json(),
        state=mapped_state(state, to_joined, shift),
    )
    A, c = affine_map(new.encoding, joined)
    X = np.ascontiguousarray(np.asarray(new.X, dtype=np.float64) @ A.T + c)
    return folded, replace(new, X=X, feature_names=joined.feature_names, encoding=joined)


def _offsets(encoding: Encoding) -> list[int]:
    """The first feature of each column."""
    offsets, at = [], 0
    for coding in encoding.columns:
        offsets.append(at)
        at += len(coding.feature_names)
    return offsets


def _missing_column(coding: Coding, offset: int) -> int | None:
    return offset + len(coding.feature_names) - 1 if coding.indicator else None


def _cells(coding: Coding, offset: int, samples: int, mean: np.ndarray) -> tuple[Counter[str], int]:
    """A categorical column's level counts and its missing cells, from the features' means."""
    missing_at = _missing_column(coding, offset)
    missing = round(samples * float(mean[missing_at])) if missing_at is not None else 0
    assert coding.levels is not None and coding.reference is not None
    counts = Counter(
        {level: round(samples * float(mean[offset + k])) for k, level in enumerate(coding.levels)}
    )
    counts[coding.reference] = samples - missing - sum(counts.values())
    return +counts, missing


def _observed(coding: Coding, offset: int, samples: int, mean: np.ndarray) -> tuple[float, int]:
    """A numeric column's sum and count of observed cells (filled ones taken out)."""
    missing_at = _missing_column(coding, offset)
    total = samples * float(mean[offset])
    if missing_at is None or coding.fill is None:
        return total, samples
    missing = round(samples * float(mean[missing_at]))
    return total - coding.fill * missing, samples - missing


def union(parts: list[tuple[Encoding, int, np.ndarray]], label: str) -> Encoding:
    """The encoding of all the rows of ``parts`` (each: its encoding, rows and feature
    means), columns as in the first."""
    first = parts[0][0]
    codings = []
    for j, coding in enumerate(first.columns):
        sides = [(e.columns[j], _offsets(e)[j], n, mean) for e, n, mean in parts]
        if coding.categorical:
            counts: Counter[str] = Counter()
            missing = 0
            for side, offset, n, mean in sides:
                found, absent = _cells(side, offset, n, mean)
                counts += found
                missing += absent
            ranked = sorted(counts, key=lambda level: (-counts[level], level))
            codings.append(
                replace(
                    coding,
                    reference=ranked[0],
                    levels=tuple(sorted(ranked[1:])),
                    indicator=first.missing == "mean" and missing > 0,
                )
            )
            continue
        fill = None
        filled = False
        if first.missing == "mean":
            total, count = 0.0, 0
            for side, offset, n, mean in sides:
                part_total, part_count = _observed(side, offset, n, mean)
                total, count = total + part_total, count + part_count
                filled = filled or side.indicator
            if count == 0:
                raise DataError(
                    f"{label}: column {coding.name!r} has no values to take the mean of"
                )
            fill = total / count
        codings.append(replace(coding, fill=fill, indicator=filled))
    return replace(first, columns=tuple(codings))


def affine_map(source: Encoding, target: Encoding) -> tuple[np.ndarray, np.ndarray]:
    """A and c with target features = A @ source features + c, for rows of the same cells
    (columns paired by position, as ``union`` keeps them). A level the source does not
    have is 0; a level the target does not have is read as its reference."""
    A = np.zeros((target.features, source.features))
    c = np.zeros(target.features)
    for s, t, s_at, t_at in zip(
        source.columns, target.columns, _offsets(source), _offsets(target), strict=True
    ):
        s_missing, t_missing = _missing_column(s, s_at), _missing_column(t, t_at)
        if t.categorical:
            assert t.levels is not None and s.levels is not None
            for k, level in enumerate(t.levels):
                row = t_at + k
                if level == s.reference:  # 1 - the source's other levels - its missing cells
                    c[row] = 1.0
                    A[row, s_at : s_at + len(s.levels)] = -1.0
                    if s_missing is not None:
                        A[row, s_missing] = -1.0
                elif level in s.levels:
                    A[row, s_at + s.levels.index(level)] = 1.0
        else:
            A[t_at, s_at] = 1.0
            if s_missing is not None and s.fill is not None and t.fill is not None:
                A[t_at, s_missing] += t.fill - s.fill  # the filled cells move to the new fill
        if t_missing is not None and s_missing is not None:
            A[t_missing, s_missing] = 1.0
    return A, c


def mapped_state(state: FitState, A: np.ndarray, c: np.ndarray) -> FitState:
    """The state of the same rows with features A x + c (the target kept)."""
    d, d_new = A.shape[1], A.shape[0]
    mean = np.concatenate([A @ state.mean[:d] + c, state.mean[d:]])
    moved = np.column_stack([state.factor[:, :d] @ A.T, state.factor[:, d]])
    rows = max(moved.shape[0], d_new + 1)
    padded = np.vstack([moved, np.zeros((rows - moved.shape[0], d_new + 1))])
    factor = np.asarray(np.linalg.qr(padded, mode="r"))[: d_new + 1]
    return FitState(samples=state.samples, mean=mean, factor=factor)


def mapped_params(
    weight: np.ndarray, bias: float, A: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, float]:
    """Parameters on features x' that predict as ``weight`` and ``bias`` do on x, where
    x = A x' + c (the map from the new features back to those of ``weight``)."""
    return A.T @ weight, float(bias + weight @ c)
