"""Whatever a path names, linreg reads it within bounded memory (issue 17, item 1).

A path given as a model, a checkpoint, a config, a data file or a run's metrics.json can be a
link to ``/dev/zero`` or ``/dev/urandom`` (endless bytes), a FIFO (an open that waits for a
writer forever), a directory, or a sparse file of 2 GiB: each is refused with exit 2 and one
``error:`` line before it is read. Every case runs the real command in a subprocess whose
address space is limited (``RLIMIT_AS``), so a read that would take the file whole fails
with MemoryError (a traceback, exit 1) instead of passing; a watchdog kills a command that
blocks, which fails the test.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TIMEOUT_S,
    assert_one_error,
    clean_env,
    describe,
    expect_exit,
    linreg_command,
    run_concurrently,
    run_linreg,
)

from regression import safeio
from regression.errors import DataError

# torch's import maps about 2.5 GiB of address space on 2 cores, and more threads map more;
# far below what reading /dev/zero whole would take (all of memory)
ADDRESS_SPACE = (4 << 30) + (256 << 20) * (os.cpu_count() or 1)
SPARSE_BYTES = 2 << 30
KINDS = ("zero", "urandom", "fifo", "directory", "sparse")


@dataclass(frozen=True)
class Bounded:
    """A command run under the address-space limit: its result and its peak RSS."""

    result: subprocess.CompletedProcess[str]
    peak_mib: float


def run_bounded(args: list[str], cwd: Path) -> Bounded:
    """Run ``linreg ARGS`` with stdin closed, under ADDRESS_SPACE, killed after TIMEOUT_S."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    # glibc's per-thread arenas are address space, and so is a CUDA context: the refusals
    # come before any device is used, and the limit is for what reading takes
    env = clean_env({"MALLOC_ARENA_MAX": "2", "CUDA_VISIBLE_DEVICES": ""})
    stdout, stderr = cwd / f".out-{threading.get_ident()}", cwd / f".err-{threading.get_ident()}"
    with stdout.open("w+") as out, stderr.open("w+") as err:
        process = subprocess.Popen(
            linreg_command(*args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            preexec_fn=limit,
        )
        watchdog = threading.Timer(TIMEOUT_S, process.kill)  # a FIFO that blocks: killed
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(
            process.args, process.returncode, out.read(), err.read()
        )
    stdout.unlink()
    stderr.unlink()
    return Bounded(result, usage.ru_maxrss / 1024)


def make_hostile(path: Path, kind: str) -> Path:
    """Put at ``path`` what ``kind`` names; the path is returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("zero", "urandom"):
        path.symlink_to(f"/dev/{kind}")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "sparse":
        with path.open("wb") as handle:
            handle.truncate(SPARSE_BYTES)  # a hole: no disk space, but 2 GiB to read
    else:
        raise ValueError(kind)
    return path


def make_workspace(root: Path) -> Path:
    """``root`` with data (d.csv) and a finished run with a checkpoint (run/)."""
    rng = np.random.default_rng(17)
    x = rng.normal(size=(200, 2))
    y = x @ [2.0, -1.0] + 0.5 + rng.normal(scale=0.1, size=200)
    np.savetxt(root / "d.csv", np.column_stack([x, y]), delimiter=",", header="a,b,y", comments="")
    expect_exit(
        run_linreg(
            "train", "--data", "d.csv", "--out", "run", "--no-plot", "-q",
            "--epochs", "5", "--checkpoint-every", "1", "--dtype", "float64",
            cwd=root,
        ),
        0,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("hostile"))


def resume_dir(root: Path, case: str, replaced: str, kind: str) -> Path:
    """A copy of the run's config.toml and checkpoint with ``replaced`` made hostile."""
    folder = root / case
    folder.mkdir()
    for name in ("config.toml", "checkpoint.safetensors"):
        if name == replaced:
            make_hostile(folder / name, kind)
        else:
            shutil.copy(root / "run" / name, folder / name)
    return folder


# a target puts the hostile thing in place (root, case folder name, kind) and gives the command
Target = Callable[[Path, str, str], list[str]]


def _predict(root: Path, case: str, kind: str) -> list[str]:
    model = make_hostile(root / case / "model.safetensors", kind)
    return ["predict", str(model), "--data", "d.csv"]


def _update(root: Path, case: str, kind: str) -> list[str]:
    model = make_hostile(root / case / "model.safetensors", kind)
    return ["update", str(model), "--data", "d.csv", "--out", f"{case}-out", "--no-plot"]


def _init_model(root: Path, case: str, kind: str) -> list[str]:
    model = make_hostile(root / case / "model.safetensors", kind)
    return ["train", "--init-model", str(model), "--data", "d.csv", "--out", f"{case}-out"]


def _checkpoint(root: Path, case: str, kind: str) -> list[str]:
    return ["train", "--resume", str(resume_dir(root, case, "checkpoint.safetensors", kind))]


def _config(root: Path, case: str, kind: str) -> list[str]:
    config = make_hostile(root / case / "options.toml", kind)
    return ["train", "--config", str(config), "--out", f"{case}-out", "--no-plot"]


def _resume_config(root: Path, case: str, kind: str) -> list[str]:
    return ["train", "--resume", str(resume_dir(root, case, "config.toml", kind))]


def _metrics(root: Path, case: str, kind: str) -> list[str]:
    make_hostile(root / case / "metrics.json", kind)
    return ["compare", case, "run"]


TARGETS: dict[str, tuple[Target, str]] = {
    "predict MODEL": (_predict, "1 GiB"),
    "update MODEL": (_update, "1 GiB"),
    "train --init-model MODEL": (_init_model, "1 GiB"),
    "train --resume (checkpoint)": (_checkpoint, "1 GiB"),
    "train --config FILE": (_config, "16 MiB"),
    "train --resume (config.toml)": (_resume_config, "16 MiB"),
    "compare RUN (metrics.json)": (_metrics, "64 MiB"),
}
# a data file is streamed, so size is no reason to refuse one; 2 GiB of zero bytes is refused
# for what it holds: text without a line end (read a line at a time, within a bound), or the
# wrong signature
SPARSE_DATA = {
    ".csv": "line 1: longer than 16,777,216 characters",
    ".tsv": "line 1: longer than 16,777,216 characters",
    ".csv.gz": "Not a gzipped file",
    ".npy": "not a .npy file (wrong file signature)",
    ".npz": "not an .npz archive (wrong file signature)",
    ".parquet": "not a readable parquet file",
}
DATA_SUFFIXES = tuple(SPARSE_DATA)


def expected(kind: str, limit: str) -> str:
    return f"is larger than {limit}" if kind == "sparse" else "not a regular file"


@pytest.fixture(scope="module")
def outcomes(workspace: Path) -> dict[str, tuple[Bounded, str, Path]]:
    return run_cases(workspace)


def run_cases(workspace: Path) -> dict[str, tuple[Bounded, str, Path]]:
    """Every case run once, side by side: its outcome, what its error line must say and
    the folder of its hostile path."""
    jobs: dict[str, Callable[[], tuple[Bounded, str, Path]]] = {}
    for target, (build, limit) in TARGETS.items():
        for kind in KINDS:
            name = f"{target} is {kind}"
            case = f"case{len(jobs)}"
            args = build(workspace, case, kind)
            jobs[name] = _job(args, workspace, expected(kind, limit), workspace / case)
    for suffix in DATA_SUFFIXES:
        for kind in KINDS:
            case = f"case{len(jobs)}"
            data = make_hostile(workspace / case / f"data{suffix}", kind)
            args = ["train", "--data", str(data), "--out", f"{case}-out", "--no-plot"]
            needle = SPARSE_DATA[suffix] if kind == "sparse" else "not a regular file"
            jobs[f"train --data {suffix} is {kind}"] = _job(
                args, workspace, needle, workspace / case
            )
        case = f"case{len(jobs)}"
        data = make_hostile(workspace / case / f"data{suffix}", "zero")
        args = ["predict", str(workspace / "run" / "model.safetensors"), "--data", str(data)]
        jobs[f"predict --data {suffix} is zero"] = _job(
            args, workspace, "not a regular file", workspace / case
        )
    return run_concurrently(jobs)  # type: ignore[return-value]


def _job(args: list[str], cwd: Path, needle: str, folder: Path) -> Callable[[], object]:
    return lambda: (run_bounded(args, cwd), needle, folder)


CASE_NAMES = [
    *(f"{target} is {kind}" for target in TARGETS for kind in KINDS),
    *(f"train --data {suffix} is {kind}" for suffix in DATA_SUFFIXES for kind in KINDS),
    *(f"predict --data {suffix} is zero" for suffix in DATA_SUFFIXES),
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_refused_before_it_is_read(
    name: str, outcomes: dict[str, tuple[Bounded, str, Path]], workspace: Path
) -> None:
    bounded, needle, folder = outcomes[name]
    result = expect_exit(bounded.result, 2)
    assert_one_error(result, needle)
    assert bounded.peak_mib < 1024, f"peak RSS {bounded.peak_mib:.0f} MiB\n{describe(result)}"
    out = workspace / f"{folder.name}-out"
    assert not out.exists(), f"{out} was left behind\n{describe(result)}"


def test_the_listing_of_runs_names_hostile_metrics_and_goes_on(tmp_path: Path) -> None:
    """``linreg runs`` lists a run whose metrics.json is not a regular file (or is too
    large) as foreign, without reading it, and goes on with the others."""
    runs = tmp_path / "runs"
    for kind in KINDS:
        make_hostile(runs / f"2026-12-0{KINDS.index(kind) + 1}" / "metrics.json", kind)
    bounded = run_bounded(["runs", str(runs), "--json"], tmp_path)
    result = expect_exit(bounded.result, 0)
    listed = [entry["status"] for entry in json.loads(result.stdout)["runs"]]
    assert listed == ["foreign"] * len(KINDS), describe(result)
    assert bounded.peak_mib < 1024


def test_a_line_without_an_end_after_good_rows_is_refused(tmp_path: Path) -> None:
    """A header and a row, then 2 GiB of zero bytes without a line end: the rows are read a
    line at a time within a bound, by the reader that names the line of a bad cell too."""
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b,y\n1,2,3\n")
    with data.open("r+b") as handle:
        handle.truncate(SPARSE_BYTES)
    bounded = run_bounded(["train", "--data", str(data), "--out", "out", "--no-plot"], tmp_path)
    assert_one_error(expect_exit(bounded.result, 2), f"{data} line 3: longer than 16,777,216")
    assert bounded.peak_mib < 1024
    assert not (tmp_path / "out").exists()


# -- the bounded read itself ------------------------------------------------------------------


class Growing:
    """A real file that another writer appends to at the moment it is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("rb")

    def fileno(self) -> int:
        return self.handle.fileno()

    def seek(self, offset: int) -> int:
        return self.handle.seek(offset)

    def read(self, size: int) -> bytes:
        with self.path.open("ab") as writer:
            writer.write(b"more bytes")
        return self.handle.read(size)


def test_a_file_that_grows_while_it_is_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"epochs = 5\n")
    growing = Growing(path)
    try:
        with pytest.raises(DataError, match="changed while it was read"):
            safeio.read_all(growing, path, limit=1 << 20, refuse=DataError)  # type: ignore[arg-type]
    finally:
        growing.handle.close()


def test_a_file_within_its_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"x" * 100)
    assert safeio.read_bounded(path, limit=100, refuse=DataError) == b"x" * 100
    with pytest.raises(DataError, match=r"is larger than 99 bytes \(100 bytes\)"):
        safeio.read_bounded(path, limit=99, refuse=DataError)


if __name__ == "__main__":  # the table of the closing note: python tests/test_hostile_inputs.py
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        results = run_cases(make_workspace(Path(folder)))
    print(f"{'case':44} {'exit':>4} {'peak RSS':>9}  error line")
    for name, (bounded, _, _) in results.items():
        line = bounded.result.stderr.strip().replace(folder, "...")
        print(f"{name:44} {bounded.result.returncode:4} {bounded.peak_mib:6.0f} MiB  {line[:90]}")
