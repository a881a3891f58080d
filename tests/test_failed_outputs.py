"""A run whose outputs cannot be written takes back what it wrote (issue 17, item 2).

Through the real command: the disk is full while one output file is written, and the run
exits 1 with one error line naming that file, leaving no model, history, figure or metrics
anywhere and no temporary file; the run directory goes too when the run made it. A run with
--checkpoint-every keeps its checkpoint and config.toml, says how to continue, and that
command finishes the run.

1. Injected: a launcher runs ``python -m cli`` with ``tempfile.mkstemp`` and ``os.fdopen``
   patched, so that the temporary file of one output refuses every write with ENOSPC (works
   on every machine).
2. Real: linreg writes its run directory on a tmpfs of a few pages, filled to leave 0, 1, 2 ...
   pages free (needs a mount: ``unshare --user --map-root-user --mount``, or root).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
    hidden_files,
    linreg_command,
    run_command,
    run_concurrently,
    run_linreg,
)

Run = subprocess.CompletedProcess[str]

# small and quick, and every epoch runs (--tol 0), so that a checkpoint is written 5 times
SMALL = ("--samples", "200", "--epochs", "5", "--tol", "0", "--device", "cpu", "-q")

# -- 1. an os.write failure injected into the real command --------------------------------------

LAUNCHER = '''\
"""python -m cli with a full disk for one output: `launcher.py SPEC ARGS...` runs
`linreg ARGS...` where every write to the temporary file of an output fails with ENOSPC.
SPEC is NAME[@N][=stall], comma separated: the N-th temporary file of NAME (default the
first), and with =stall its writes hang instead, until the process is ended (a failing write
waits until a stalled one has begun).
artifacts.atomic_writer looks up tempfile.mkstemp and os.fdopen when called, and the
plotting process is forked, so both see the patch."""

import errno
import os
import runpy
import sys
import tempfile
import time

plan = {}  # (file name, N) -> "full" or "stall"
for item in sys.argv[1].split(","):
    target, _, action = item.partition("=")
    name, _, nth = target.partition("@")
    plan[(name, int(nth or "1"))] = action or "full"
stalls = "stall" in plan.values()
marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"stalled.{os.getpid()}")
names = {}  # temporary file descriptor -> the name of the file it becomes
seen = {}  # file name -> temporary files opened
real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen


class Full:
    """The file object of a file on a full disk: it opens, and no write succeeds."""

    def __init__(self, handle, stall):
        self.handle = handle
        self.stall = stall

    def write(self, data):
        if self.stall:
            open(marker, "w").close()
            while True:
                time.sleep(1)
        deadline = time.monotonic() + 60
        while stalls and not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        self.handle.flush()

    def fileno(self):
        return self.handle.fileno()

    def close(self):
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def mkstemp(*args, **kwargs):
    fd, path = real_mkstemp(*args, **kwargs)
    prefix = kwargs.get("prefix") or ""
    if prefix.startswith(".") and prefix.endswith("."):  # atomic_writer's: f".{name}."
        names[fd] = prefix[1:-1]
    return fd, path


def fdopen(fd, *args, **kwargs):
    handle = real_fdopen(fd, *args, **kwargs)
    name = names.pop(fd, None)
    if name is not None:
        seen[name] = seen.get(name, 0) + 1
        action = plan.get((name, seen[name]))
        if action is not None:
            return Full(handle, stall=action == "stall")
    return handle


tempfile.mkstemp, os.fdopen = mkstemp, fdopen
sys.argv = ["linreg", *sys.argv[2:]]
runpy.run_module("cli", run_name="__main__", alter_sys=True)
'''


def run_full(
    launcher: Path, target: str, *args: str | os.PathLike[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``linreg ARGS`` with the disk full while ``target`` is written (the launcher's SPEC:
    a file name, ``@N`` for its N-th temporary file)."""
    return run_command([sys.executable, str(launcher), target, *map(str, args)], cwd=cwd)


def files_under(root: Path) -> set[str]:
    """Every file under ``root``, as a path relative to it."""
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


@dataclass(frozen=True)
class Case:
    target: str  # the launcher's SPEC: the output's file name, @N for its N-th write
    failing: str  # the file the error names, relative to the case's folder
    checkpoint: bool  # --checkpoint-every 1
    plot: str | None = None  # --plot, relative to the case's folder (default: run/plot.png)

    @property
    def resumable(self) -> bool:
        """A checkpoint was written before the failure."""
        return self.checkpoint and self.target not in ("config.toml", "checkpoint.safetensors")

    @property
    def id(self) -> str:
        where = "" if self.plot is None else "-elsewhere"
        return f"{self.target}{where}{'-checkpointed' if self.checkpoint else ''}"


def outputs_cases() -> list[Case]:
    cases = []
    for checkpoint in (False, True):
        cases += [
            Case("config.toml", "run/config.toml", checkpoint),
            Case("model.safetensors", "run/model.safetensors", checkpoint),
            Case("history.csv", "run/history.csv", checkpoint),
            Case("plot.png", "run/plot.png", checkpoint),
            Case("p.png", "figs/p.png", checkpoint, plot="figs/p.png"),
            Case("metrics.json", "run/metrics.json", checkpoint),
        ]
    # the first checkpoint: nothing to resume yet; the third: the second is kept
    cases.append(Case("checkpoint.safetensors", "run/checkpoint.safetensors", True))
    cases.append(Case("checkpoint.safetensors@3", "run/checkpoint.safetensors", True))
    return cases


CASES = outputs_cases()


@dataclass(frozen=True)
class Outcome:
    root: Path  # the case's folder: run/ and figs/ are under it
    failed: Run
    left: set[str]  # the files under root after the failed run
    hidden: list[Path]
    run_dir_exists: bool
    resumed: Run | None  # linreg train --resume run, for a resumable case
    after_resume: set[str]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("launcher") / "launcher.py"
    path.write_text(LAUNCHER)
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, launcher: Path) -> dict[str, Outcome]:
    """Every case, side by side: the failed run, what it left, and the resumed run."""
    base = tmp_path_factory.mktemp("full")

    def job(case: Case) -> Callable[[], Outcome]:
        def go() -> Outcome:
            root = base / case.id
            (root / "figs").mkdir(parents=True)  # the user's folder for --plot
            args = ["train", *SMALL, "--out", root / "run"]
            args += ["--checkpoint-every", "1"] if case.checkpoint else []
            args += ["--plot", root / case.plot] if case.plot is not None else []
            failed = run_full(launcher, case.target, *args, cwd=root)
            left, hidden = files_under(root), hidden_files(root)
            exists = (root / "run").exists()
            resumed = None
            if case.resumable:
                resumed = run_linreg("train", "--resume", root / "run", "-q", cwd=root)
            return Outcome(root, failed, left, hidden, exists, resumed, files_under(root))

        return go

    done = run_concurrently({case.id: job(case) for case in CASES})
    return {name: outcome for name, outcome in done.items() if isinstance(outcome, Outcome)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_disk_full_during_an_output_leaves_no_result(
    case: Case, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[case.id]
    failed = expect_exit(outcome.failed, 1)
    line = assert_one_error(failed, str(outcome.root / case.failing), "No space left on device")
    assert failed.stdout == "", describe(failed)
    assert outcome.hidden == [], f"temporary files left: {outcome.hidden}"
    if case.resumable:
        assert outcome.left == {"run/checkpoint.safetensors", "run/config.toml"}, outcome.left
        assert line.endswith(f"; continue with: linreg train --resume {outcome.root / 'run'}")
    else:
        assert outcome.left == set(), f"left behind: {outcome.left}\n{describe(failed)}"
        assert not outcome.run_dir_exists, "the run directory it made is still there"
        assert "--resume" not in line
    assert (outcome.root / "figs").is_dir()  # the user's folder stays


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.resumable], ids=[c.id for c in CASES if c.resumable]
)
def test_the_command_it_gives_finishes_the_run(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    assert outcome.resumed is not None
    expect_exit(outcome.resumed, 0)
    assert outcome.resumed.stderr == "", describe(outcome.resumed)
    names = ("config.toml", "checkpoint.safetensors", "model.safetensors", "history.csv")
    names += ("plot.png", "metrics.json")
    assert {f"run/{name}" for name in names} <= outcome.after_resume, outcome.after_resume


def write_rows(path: Path, seed: int, n: int = 100) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 2 * x + 1 + 0.1 * rng.normal(size=n)
    path.write_text("x,y\n" + "".join(f"{a:.17g},{b:.17g}\n" for a, b in zip(x, y, strict=True)))
    return path


def test_update_failing_on_its_model_leaves_nothing(tmp_path: Path, launcher: Path) -> None:
    old = tmp_path / "old"
    trained = run_linreg(
        "train", "--data", write_rows(tmp_path / "a.csv", 1), "--out", old, "-q", cwd=tmp_path
    )
    expect_exit(trained, 0)
    model = old / "model.safetensors"
    new = write_rows(tmp_path / "b.csv", 2)
    before = files_under(tmp_path), model.read_bytes()
    failed = run_full(
        launcher,
        "model.safetensors",
        "update",
        model,
        "--data",
        new,
        "--out",
        tmp_path / "upd",
        "-q",
        cwd=tmp_path,
    )
    expect_exit(failed, 1)
    assert_one_error(failed, str(tmp_path / "upd" / "model.safetensors"), "No space left")
    assert not (tmp_path / "upd").exists()
    assert hidden_files(tmp_path) == []
    assert (files_under(tmp_path), model.read_bytes()) == before  # the old run untouched


def test_folders_it_found_stay_and_folders_it_made_go(tmp_path: Path, launcher: Path) -> None:
    """--out of the user's (with a file of theirs, or empty) is left as it was found; a new
    --out a/b/run goes with the folders made for it, and so does the default runs/<time>."""
    mine, empty, here = tmp_path / "mine", tmp_path / "empty", tmp_path / "here"
    for folder in (mine, empty, here):
        folder.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    cases = {  # name: (--out and more options, the file that fails, the folder it runs in)
        "mine": (["--out", mine, "--overwrite"], mine / "metrics.json", tmp_path),
        "empty": (["--out", empty], empty / "model.safetensors", tmp_path),
        "new": (["--out", tmp_path / "new/deeper/run"], Path("run/history.csv"), tmp_path),
        "default": ([], Path("model.safetensors"), here),  # runs/<time>/model.safetensors
    }

    def job(args: list[str | Path], target: Path, cwd: Path) -> Callable[[], Run]:
        return lambda: run_full(launcher, target.name, "train", *SMALL, *args, cwd=cwd)

    results = run_concurrently({name: job(*case) for name, case in cases.items()})
    for name, (_, target, _) in cases.items():
        result = results[name]
        assert isinstance(result, subprocess.CompletedProcess)
        assert_one_error(expect_exit(result, 1), str(target), "No space left")
    assert (mine / "notes.txt").read_text() == "mine\n"
    assert files_under(tmp_path) == {"mine/notes.txt"}
    assert empty.is_dir() and not any(empty.iterdir())
    assert not (tmp_path / "new").exists()
    assert list(here.iterdir()) == []  # no runs/ left
    assert hidden_files(tmp_path) == []


def test_a_figure_being_written_is_taken_away_with_the_run(tmp_path: Path, launcher: Path) -> None:
    """history.csv fails while the plotting process is in the middle of writing the figure:
    the process is ended, and its temporary file goes with it."""
    figs = tmp_path / "figs"
    figs.mkdir()
    args = ["train", *SMALL, "--out", tmp_path / "run", "--plot", figs / "p.png"]
    failed = run_full(launcher, "p.png=stall,history.csv", *args, cwd=tmp_path)
    assert_one_error(expect_exit(failed, 1), str(tmp_path / "run" / "history.csv"))
    assert list(figs.iterdir()) == []
    assert not (tmp_path / "run").exists()


def test_a_complete_run_stays_when_its_summary_cannot_be_printed(tmp_path: Path) -> None:
    """metrics.json is written last: a failure after it (stdout's reader gone before the
    summary is printed) is not a failed run, and takes nothing back."""
    command = linreg_command("train", *SMALL[:-1], "--out", str(tmp_path / "run"))
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    process.stdout.close()  # long before the summary: linreg is still importing torch
    assert process.wait(timeout=TIMEOUT_S) == 141  # 128 + SIGPIPE, as a shell reports it
    names = ("config.toml", "model.safetensors", "history.csv", "plot.png", "metrics.json")
    assert files_under(tmp_path) == {f"run/{name}" for name in names}


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for whoever adopted it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
def test_a_killed_run_leaves_no_plotting_process(tmp_path: Path) -> None:
    """The forked plotting process waits for a figure on a pipe; when the run is killed
    outright (SIGKILL, the OOM killer), it sees the pipe closed and ends, instead of waiting
    forever as an orphan (it holds no copy of the parent's end)."""
    args = ["train", "--samples", "200000", "--epochs", "100000", "--tol", "0", "-q"]
    process = subprocess.Popen(
        linreg_command(*args, "--out", str(tmp_path / "run")),
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not children(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = children(process.pid)
        assert workers, "linreg train started no plotting process"
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + TIMEOUT_S  # a hang, not a speed, is what fails this
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), f"plotting process {workers} left running"


# -- 2. a real full disk: a tmpfs of a few pages --------------------------------------------------

PAGE = 4096
TMPFS_PAGES = 64

# in the mount namespace: `sh -c ON_TMPFS sh MOUNT_POINT RECORD SIZE FREE LINREG...` mounts a
# tmpfs of SIZE bytes, fills it to leave FREE bytes, runs linreg, and records its exit code and
# what is on the tmpfs besides the filler (in the folder RECORD, outside it)
ON_TMPFS = """
mount -t tmpfs -o "size=$3" tmpfs "$1" || exit 99
head -c $(($3 - $4)) /dev/zero > "$1/filler" || exit 99
mount_point=$1
record=$2
shift 4
code=0
"$@" || code=$?
echo "$code" > "$record/code"
find "$mount_point" -mindepth 1 ! -name filler > "$record/left" 2>/dev/null
exit "$code"
"""


def tmpfs_runner(probe: Path) -> Callable[[Sequence[str]], list[str]] | None:
    """How to run a command that mounts: inside a new user and mount namespace (where
    allowed), or as it is when this is root; None when neither can mount a tmpfs."""
    probe.mkdir()
    mount_test = ["mount", "-t", "tmpfs", "-o", f"size={PAGE}", "tmpfs", str(probe)]
    unshare = shutil.which("unshare")
    if unshare is not None:
        command = [unshare, "--user", "--map-root-user", "--mount"]
        if subprocess.run([*command, *mount_test], capture_output=True).returncode == 0:
            return lambda argv: [*command, *argv]
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if root and subprocess.run(mount_test, capture_output=True).returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
        return lambda argv: list(argv)
    return None


def pages(path: Path) -> int:
    return math.ceil(path.stat().st_size / PAGE)


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs and mount namespaces are Linux's")
def test_a_real_full_disk(tmp_path: Path) -> None:
    runner = tmpfs_runner(tmp_path / "probe")
    if runner is None:
        pytest.skip("cannot mount a tmpfs: no unprivileged user namespaces and not root")
    # what each output takes, from a run on the ordinary disk
    reference = tmp_path / "reference"
    done = run_linreg("train", *SMALL, "--checkpoint-every", "1", "--out", reference, cwd=tmp_path)
    expect_exit(done, 0)
    size = {path.name: pages(path) for path in reference.iterdir()}
    results = size["model.safetensors"] + size["history.csv"] + size["plot.png"]
    everything = size["config.toml"] + results + size["metrics.json"]
    assert everything + 2 * size["checkpoint.safetensors"] <= TMPFS_PAGES, size
    # (pages left free, --checkpoint-every 1, the file that must fail or None: one of them)
    scenarios = [
        (0, False, "config.toml"),
        (size["config.toml"], False, None),  # the model or the figure
        (size["config.toml"] + size["model.safetensors"], False, None),
        (size["config.toml"] + size["model.safetensors"] + size["history.csv"], False, None),
        (everything - size["metrics.json"], False, "metrics.json"),
        # the second checkpoint is written while the first is still there
        (size["config.toml"] + 2 * size["checkpoint.safetensors"] - 1, True, "checkpoint"),
    ]

    def folder(free: int, checkpoint: bool) -> Path:
        return tmp_path / f"free-{free}{'-checkpointed' if checkpoint else ''}"

    def job(free: int, checkpoint: bool) -> Callable[[], Run]:
        def go() -> Run:
            mount_point, record = folder(free, checkpoint) / "tmpfs", folder(free, checkpoint)
            mount_point.mkdir(parents=True)
            args = ["train", *SMALL, "--out", f"{mount_point}/run"]
            args += ["--checkpoint-every", "1"] if checkpoint else []
            argv = ["sh", "-c", ON_TMPFS, "sh", str(mount_point), str(record)]
            argv += [str(TMPFS_PAGES * PAGE), str(free * PAGE)]
            try:
                return run_command(runner([*argv, *linreg_command(*args)]), cwd=record)
            finally:  # as root without a namespace, the mount is this machine's
                if os.path.ismount(mount_point):
                    subprocess.run(["umount", str(mount_point)], check=False)

        return go

    runs = run_concurrently({folder(f, c).name: job(f, c) for f, c, _ in scenarios})
    for free, checkpoint, failing in scenarios:
        case = folder(free, checkpoint)
        result = runs[case.name]
        assert isinstance(result, subprocess.CompletedProcess)
        mount_point = case / "tmpfs"
        assert (case / "code").exists(), f"the tmpfs was not mounted\n{describe(result)}"
        expect_exit(result, 1)
        line = assert_one_error(result, "No space left on device")
        if failing is not None:
            assert f"cannot write {mount_point}/run/{failing}" in line
        left = {
            Path(name).relative_to(mount_point).as_posix()
            for name in (case / "left").read_text().splitlines()
        }
        if checkpoint:  # the first checkpoint is kept, with the options to resume it
            assert left == {"run", "run/checkpoint.safetensors", "run/config.toml"}, left
            assert line.endswith(f"; continue with: linreg train --resume {mount_point}/run")
        else:
            assert left == set(), f"left on the full disk: {left}\n{describe(result)}"
