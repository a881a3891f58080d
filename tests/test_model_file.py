"""regression.artifacts: the safetensors model file, atomic writes and the run directory."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from regression import __version__
from regression.artifacts import (
    METRICS_FILE,
    ModelFile,
    atomic_writer,
    load_model,
    model_bytes,
    prepare_run_dir,
    save_model,
    write_bytes,
    write_text,
)
from regression.errors import ModelFileError, OutputError, OutputExistsError


def make_model(**changes: object) -> ModelFile:
    values: dict[str, object] = {
        "weight": np.array([1.5, -2.25, 1e-300]),
        "bias": 0.1,  # not exactly representable: the round trip must keep every bit
        "feature_names": ("height", "wéight", "x 3"),
        "target_name": "price",
        "scaling_mean": np.array([0.5, 1.0, -3.0]),
        "scaling_scale": np.array([2.0, 3.0, 1.0]),
        "linear_weight": np.array([3.0, -6.75, 1e-300]),
        "linear_bias": -7.123456789012345,
        "standardize": True,
        "dtype": "float32",
    }
    values.update(changes)
    return ModelFile(**values)  # type: ignore[arg-type]


def assert_same_model(loaded: ModelFile, model: ModelFile) -> None:
    for name in ("weight", "scaling_mean", "scaling_scale", "linear_weight"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name), strict=True)
    assert loaded.bias == model.bias and loaded.linear_bias == model.linear_bias
    assert loaded.feature_names == model.feature_names
    assert loaded.target_name == model.target_name
    assert loaded.standardize is model.standardize
    assert loaded.dtype == model.dtype
    assert loaded.version == model.version


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_model(path, make_model())
    return path


def refused(path: Path, data: bytes) -> ModelFileError:
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    return info.value


# -- round trip ----------------------------------------------------------------------------


def test_save_and_load_round_trip_is_exact(saved: Path) -> None:
    loaded = load_model(saved)
    assert_same_model(loaded, make_model())
    assert loaded.version == __version__
    assert loaded.features == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"standardize": False, "dtype": "float64"},
        {
            "weight": np.array([4.0]),
            "feature_names": ("x1",),
            "scaling_mean": np.zeros(1),
            "scaling_scale": np.ones(1),
            "linear_weight": np.array([4.0]),
            "bias": -0.0,
        },
    ],
)
def test_round_trip_of_other_models(tmp_path: Path, changes: dict[str, object]) -> None:
    model = make_model(**changes)
    save_model(tmp_path / "m.safetensors", model)
    assert_same_model(load_model(tmp_path / "m.safetensors"), model)


def test_loaded_model_predicts_like_the_saved_one(saved: Path) -> None:
    X = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_array_equal(load_model(saved).predict(X), make_model().predict(X))
    np.testing.assert_allclose(
        make_model().predict(X), X @ np.array([1.5, -2.25, 1e-300]) + 0.1, rtol=1e-15
    )


def split_file(raw: bytes) -> tuple[dict[str, object], bytes]:
    """A safetensors file as its parsed JSON header and its data bytes."""
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def test_model_bytes_hold_the_same_content_every_time() -> None:
    first, second = split_file(model_bytes(make_model())), split_file(model_bytes(make_model()))
    assert first == second
    assert split_file(model_bytes(make_model(bias=0.2))) != first


def test_model_bytes_are_deterministic() -> None:
    outputs = {model_bytes(make_model()) for _ in range(8)}
    assert len(outputs) == 1


def test_saved_file_holds_the_model_bytes(saved: Path) -> None:
    assert split_file(saved.read_bytes()) == split_file(model_bytes(make_model()))
    assert not [p for p in saved.parent.iterdir() if p != saved]  # no temporary file left


def test_file_carries_the_linreg_marker(saved: Path) -> None:
    header, _ = split_file(saved.read_bytes())
    metadata = header["__metadata__"]
    assert metadata["format"] == "linreg-model"
    assert json.loads(metadata["feature_names"]) == ["height", "wéight", "x 3"]
    assert {name for name in header if name != "__metadata__"} == {
        "weight",
        "bias",
        "scaling.mean",
        "scaling.scale",
        "linear.weight",
        "linear.bias",
    }


# -- refusals ----------------------------------------------------------------------------


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(300)
    assert "not a linreg model file" in str(refused(tmp_path / "m.safetensors", data))


def test_empty_file_is_refused(tmp_path: Path) -> None:
    refused(tmp_path / "m.safetensors", b"")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read model"):
        load_model(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("keep", [0.5, -1, 7, 9])
def test_truncated_file_is_refused(saved: Path, keep: float) -> None:
    raw = saved.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else keep
    refused(saved, raw[:cut])


def test_flipped_byte_in_the_data_fails_the_checksum(saved: Path) -> None:
    raw = bytearray(saved.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")
    raw[data_start] ^= 0x01  # lowest mantissa bit of the first stored number: still finite
    error = refused(saved, bytes(raw))
    assert "checksum" in str(error)


@pytest.mark.parametrize("offset", [-1, -8, -17])
def test_any_flipped_data_byte_is_refused(saved: Path, offset: int) -> None:
    raw = bytearray(saved.read_bytes())
    raw[offset] ^= 0x10
    refused(saved, bytes(raw))


def test_edited_feature_names_are_refused(saved: Path) -> None:
    raw = saved.read_bytes()
    before = json.dumps(json.dumps(["height", "wéight", "x 3"]))[1:-1].encode()
    after = json.dumps(json.dumps(["wéight", "height", "x 3"]))[1:-1].encode()
    assert raw.count(before) == 1 and len(before) == len(after)
    refused(saved, raw.replace(before, after))


def test_safetensors_without_the_linreg_marker_is_refused(saved: Path) -> None:
    tensors = {"weight": np.zeros(3), "bias": np.zeros(1)}
    error = refused(saved, save(tensors, metadata={"format": "pt"}))
    assert "linreg-model" in str(error)
    refused(saved, save(tensors))


def test_safetensors_with_a_wrong_layout_is_refused(saved: Path) -> None:
    metadata = split_file(saved.read_bytes())[0]["__metadata__"]
    tensors = {
        "weight": np.zeros(2),
        "bias": np.zeros(1),
        "scaling.mean": np.zeros(2),
        "scaling.scale": np.ones(2),
        "linear.weight": np.zeros(2),
        "linear.bias": np.zeros(1),
    }
    error = refused(saved, save(tensors, metadata=metadata))  # says 3 features, holds 2
    assert "damaged" in str(error)


class _CreatesFile:
    """A pickle payload that creates ``target`` when it is unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def test_pickle_is_refused_without_running_its_payload(tmp_path: Path) -> None:
    # the payload works: unpickling it creates its file
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(control))).close()
    assert control.exists()
    target = tmp_path / "pwned"
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        refused(tmp_path / "model.safetensors", pickle.dumps(_CreatesFile(target), protocol))
        assert not target.exists()


def test_torch_save_of_a_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(3, dtype=torch.float64), "bias": torch.zeros(1)}, path)
    refused(path, path.read_bytes())


# -- atomic writes -------------------------------------------------------------------------


def test_atomic_writer_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_text(path, "old\n")
    with atomic_writer(path, "w") as handle:
        handle.write("new ")
        handle.write("content\n")
    assert path.read_text() == "new content\n"
    assert sorted(tmp_path.iterdir()) == [path]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, error: type[BaseException]
) -> None:
    path = tmp_path / "metrics.json"
    write_bytes(path, b"old content")
    with pytest.raises(error), atomic_writer(path) as handle:
        handle.write(b"half of the new")
        handle.flush()
        assert len(list(tmp_path.iterdir())) == 2  # the temporary file exists meanwhile
        raise error("stop")
    assert path.read_bytes() == b"old content"
    assert sorted(tmp_path.iterdir()) == [path]


def test_exception_mid_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.bin"
    with pytest.raises(RuntimeError), atomic_writer(path) as handle:
        handle.write(b"partial")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_raises_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write"):
        write_bytes(tmp_path / "no" / "such" / "dir" / "f.bin", b"x")


def test_read_only_folder_raises_output_error(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    write_bytes(folder / "keep.txt", b"old")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write to a read-only folder (root)")
        with pytest.raises(OutputError, match="cannot write"):
            write_bytes(folder / "keep.txt", b"new")
        assert (folder / "keep.txt").read_bytes() == b"old"
        assert sorted(folder.iterdir()) == [folder / "keep.txt"]
    finally:
        folder.chmod(0o755)


# -- the run directory ---------------------------------------------------------------------


def test_default_run_dirs_are_new_and_unique(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    made = [prepare_run_dir(None, overwrite=False, root=root).path for _ in range(5)]
    assert len(set(made)) == 5
    for run_dir in made:
        assert run_dir.parent == root and run_dir.is_dir()
        assert list(run_dir.iterdir()) == []
        assert run_dir.name[:8].isdigit() and "T" in run_dir.name and "Z" in run_dir.name


def test_new_out_dir_is_created_with_parents(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    assert prepare_run_dir(out, overwrite=False).path == out
    assert out.is_dir()


def test_existing_empty_dir_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    assert prepare_run_dir(out, overwrite=False).path == out


def test_non_empty_dir_is_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS_FILE).write_text("{}")
    with pytest.raises(OutputExistsError) as info:
        prepare_run_dir(out, overwrite=False)
    assert str(out) in str(info.value) and "--overwrite" in str(info.value)
    assert (out / METRICS_FILE).read_text() == "{}"  # nothing removed


def test_overwrite_removes_the_stale_metrics(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS_FILE).write_text('{"old": true}')
    (out / "plot.png").write_bytes(b"png")
    assert prepare_run_dir(out, overwrite=True).path == out
    assert not (out / METRICS_FILE).exists()
    assert (out / "plot.png").exists()


def test_overwrite_without_metrics_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    assert prepare_run_dir(out, overwrite=True).path == out


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_in_place_of_the_dir_is_refused(tmp_path: Path, overwrite: bool) -> None:
    out = tmp_path / "run"
    out.write_text("I am a file")
    with pytest.raises(OutputExistsError, match="not a directory"):
        prepare_run_dir(out, overwrite=overwrite)
    assert out.read_text() == "I am a file"


def test_a_locked_run_dir_is_refused_until_released(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = prepare_run_dir(out, overwrite=False)
    assert first.created
    with pytest.raises(OutputExistsError, match="in use by another linreg run"):
        prepare_run_dir(out, overwrite=True)
    first.release()
    second = prepare_run_dir(out, overwrite=True)
    assert second.path == out and not second.created
    second.release()


def test_resume_accepts_a_non_empty_dir_and_keeps_its_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS_FILE).write_text("{}")
    (out / "config.toml").write_text("epochs = 3\n")
    run = prepare_run_dir(out, overwrite=False, resume=True)
    # a resume that is then refused (or fails) must not cost the finished run its results
    assert (out / METRICS_FILE).read_text() == "{}" and (out / "config.toml").exists()
    run.release()
