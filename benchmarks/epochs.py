"""The cost of one full-batch epoch, as a multiple of one pass over X (``X.sum()``), through
the library's ``regression.train.train`` and through the plain tutorial loop; and the GPU
measurements (the same on CUDA, plus the demo-size epoch time)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import torch
from harness import (
    Goal,
    Row,
    Sample,
    Section,
    Settings,
    log,
    median,
    median_seconds,
    ratio_row,
    reps_text,
    seconds_text,
    shape,
    side_by_side,
    verdict,
)

import regression.epochs
import regression.fused
import regression.train
from regression.config import TrainConfig
from regression.pipeline import run_training
from regression.train import Progress, train

EPOCHS = 5  # epochs per timed call; the figure is the call's time / EPOCHS
LR = 0.1  # stable for the standard-normal features used here (the curvature is about 2)
DEMO_EPOCHS = 2000  # epochs per timed demo-size run on the GPU
# the widths section: 640 MB of float32 X each
WIDTHS = [(80_000_000, 2), (40_000_000, 4), (20_000_000, 8), (16_000_000, 10), (4_000_000, 40)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(n: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard-normal float32 features (what standardized data looks like) and
    y = X @ 2 + 1 + 0.1 * noise as an (n, 1) column, built on ``device``."""
    generator = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(n, d, generator=generator, device=device)
    y = X.sum(dim=1, keepdim=True).mul_(2).add_(1)
    y.add_(torch.randn(n, 1, generator=generator, device=device), alpha=0.1)
    return X, y


def tutorial_loop(
    X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = LR
) -> Callable[[], None]:
    """The tutorial's loop, plus the ``loss.item()`` that any loop reporting its loss needs:
    forward, MSELoss, zero_grad, backward, step."""
    model = torch.nn.Linear(X.shape[1], 1, device=X.device)
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def run() -> None:
        for _ in range(epochs):
            loss = criterion(model(X), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    return run


def device_timed(call: Callable[[], object], device: torch.device) -> Sample:
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return Sample(time.perf_counter() - start)


def one_pass(X: torch.Tensor) -> Sample:
    """One pass over X: the median of three ``X.sum()`` calls (each is only milliseconds)."""
    return Sample(median([device_timed(X.sum, X.device).seconds for _ in range(3)]))


def without_fused(call: Callable[[], Sample]) -> Callable[[], Sample]:
    """``call`` with the C epoch loop turned off: torch computes the same sums."""

    def run() -> Sample:
        regression.epochs.FUSED = False
        try:
            return call()
        finally:
            regression.epochs.FUSED = True

    return run


def epoch_samples(
    X: torch.Tensor, y: torch.Tensor, reps: int, *, loop: bool = True
) -> dict[str, list[Sample]]:
    """X.sum(), train() for EPOCHS epochs and (``loop``) the tutorial loop for as many, side
    by side; on the CPU also train() with its epochs through torch instead of the C loop."""
    device = X.device
    config = TrainConfig(epochs=EPOCHS, tol=0.0, device=device.type)

    def linreg() -> Sample:
        return device_timed(lambda: train(X, y, config=config, lr=LR), device)

    tasks = {"sum": lambda: one_pass(X), "train": linreg}
    if device.type == "cpu":
        tasks["torch"] = without_fused(linreg)
    if loop:
        tutorial = tutorial_loop(X, y, EPOCHS)
        tasks["loop"] = lambda: device_timed(tutorial, device)
    return side_by_side(tasks, reps)


def measured_samples(
    n: int, d: int, device: torch.device, reps: int, *, loop: bool = True
) -> dict[str, list[Sample]]:
    """epoch_samples on fresh data of n x d, freed before returning."""
    X, y = make_data(n, d, device)
    samples = epoch_samples(X, y, reps, loop=loop)
    del X, y  # about 1 GB: gone before the next size is made
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return samples


def per_epoch(samples: dict[str, list[Sample]], key: str) -> float:
    return median_seconds(samples[key]) / EPOCHS


def pass_row(
    samples: dict[str, list[Sample]], key: str, what: str, goal: Goal | None = None
) -> Row:
    """``what`` (the row's measurement) for samples[key], per epoch, over one X.sum()."""
    one_pass = median_seconds(samples["sum"])
    seconds = per_epoch(samples, key)
    return ratio_row(
        what,
        f"{seconds_text(seconds)} / epoch",
        f"`X.sum()`: {seconds_text(one_pass)}",
        seconds / one_pass,
        goal,
        reps=reps_text(samples[key], samples["sum"]),
    )


def linreg_rows(samples: dict[str, list[Sample]], size: str, goal: Goal | None) -> list[Row]:
    """train()'s epoch and, on the CPU, the same through torch's sums, over one X.sum()."""
    rows = [pass_row(samples, "train", f"epoch, {size}: linreg `train()`", goal)]
    if "torch" in samples:
        what = f"epoch, {size}: linreg `train()`, sums through torch (`FUSED = False`)"
        rows.append(pass_row(samples, "torch", what))
    return rows


def epoch_rows(n: int, d: int, device: torch.device, reps: int, goal: Goal) -> list[Row]:
    """Per-epoch time of train() and of the tutorial loop, against X.sum(), side by side."""
    samples = measured_samples(n, d, device, reps)
    train_s, loop_s = per_epoch(samples, "train"), per_epoch(samples, "loop")
    size = f"{shape(n, d)} float32"
    return [
        *linreg_rows(samples, size, goal),
        pass_row(samples, "loop", f"epoch, {size}: tutorial loop"),
        ratio_row(
            f"epoch, {size}: linreg `train()` / tutorial loop",
            f"{seconds_text(train_s)} / epoch",
            f"tutorial loop: {seconds_text(loop_s)} / epoch",
            train_s / loop_s,
            reps=reps_text(samples["train"], samples["loop"]),
        ),
    ]


def epoch_commands(device: str) -> list[str]:
    return [
        f"X, y = torch.randn(N, D, device={device!r}), (2 * X.sum(1, keepdim=True) + 1 "
        "+ 0.1 * noise)  # float32",
        f"regression.train.train(X, y, config=TrainConfig(epochs={EPOCHS}, tol=0, "
        f"device={device!r}), lr={LR})  # time / {EPOCHS}",
        f"tutorial loop: {EPOCHS} x (loss = MSELoss()(model(X), y); optimizer.zero_grad(); "
        f"loss.backward(); optimizer.step(); loss.item()), nn.Linear(D, 1), SGD(lr={LR})",
        "one pass: X.sum(), the median of 3 calls per repetition"
        + ("  (between torch.cuda.synchronize() calls)" if device == "cuda" else ""),
    ]


def epoch_cost(settings: Settings) -> Section:
    """Full-batch epoch time on the CPU, as a multiple of one pass over X."""
    cpu = torch.device("cpu")
    sizes = [(10**6, 16), (10**7, 1)] if settings.quick else [(10**7, 16), (10**8, 1)]
    goals = {16: Goal("<=", 2.5, "<= 2.5x"), 1: Goal("<=", 4.0, "<= 4x")}
    section = Section(
        key="epoch",
        title="Epoch cost (CPU)",
        sizes=", ".join(shape(n, d) for n, d in sizes),
        commands=epoch_commands("cpu"),
        notes=[
            "Figure: median time of one call divided by its epochs, over the median of X.sum(); "
            "nothing is subtracted. The four measurements alternate.",
            "linreg's float32 CPU epoch is the C loop of regression/_fused.c "
            f"(built here: {regression.fused.available()}), which reads each row once; the "
            "row with `FUSED = False` is the same train() with the sums computed by torch in "
            "4 MB slices (what runs where the loop was not built). For one feature the epoch "
            "reads y as well as X, twice the bytes of X.sum().",
            "On the 2-core VM these figures were measured on, the memory bandwidth swings "
            "between runs: X.sum() of 1e7 x 16 float32 took 14-16 ms in some runs and 8.5 ms in "
            "others (the issue's reference machine: 18 ms).",
        ],
    )
    for n, d in sizes:
        log(f"  {shape(n, d)}")
        section.rows += epoch_rows(n, d, cpu, settings.reps, goals[d])
    return section


def epoch_widths(settings: Settings) -> Section:
    """The C epoch loop against torch's sums at other widths (information: no goal), as
    multiples of one pass over X. Each array is 640 MB of X (64 MB with --quick)."""
    cpu = torch.device("cpu")
    scale = 10 if settings.quick else 1
    sizes = [(n // scale, d) for n, d in WIDTHS]
    section = Section(
        key="widths",
        title="Epoch cost at other widths (CPU)",
        sizes=", ".join(shape(n, d) for n, d in sizes),
        commands=[
            *epoch_commands("cpu")[:2],
            "the same with regression.epochs.FUSED = False (torch's sums in 4 MB slices)",
            epoch_commands("cpu")[-1],
        ],
        notes=[
            "Figure: median time of one call divided by its epochs, over the median of X.sum(); "
            "the three measurements alternate. The epoch also reads y (one float a row), so "
            "the fewer the features the more it reads beside X: 1.5x X's bytes for two.",
        ],
    )
    for n, d in sizes:
        log(f"  {shape(n, d)}")
        samples = measured_samples(n, d, cpu, settings.reps, loop=False)
        section.rows += linreg_rows(samples, f"{shape(n, d)} float32", None)
    return section


# --- GPU ------------------------------------------------------------------------------


def demo_epoch_rows(device: torch.device, reps: int) -> list[Row]:
    """us per epoch at the demo size (100 x 1): linreg's run_training on the device, against
    the tutorial loop there. linreg's figure is the training loop's own clock (the progress
    callback's elapsed seconds at the last epoch) over the epochs run."""
    config = TrainConfig(device=str(device), tol=0.0, epochs=DEMO_EPOCHS)

    def linreg() -> Sample:
        last: list[Progress] = []
        run_training(config, progress=last.append)
        return Sample(last[-1].elapsed / len(last), {"epochs": len(last)})

    X = torch.rand(100, 1, device=device)
    y = 2 * X + 1 + 0.1 * torch.randn(100, 1, device=device)
    loop = tutorial_loop(X, y, DEMO_EPOCHS, lr=0.01)

    def tutorial() -> Sample:
        return Sample(device_timed(loop, device).seconds / DEMO_EPOCHS)

    samples = side_by_side({"linreg": linreg, "tutorial": tutorial}, reps)
    linreg_s, tutorial_s = median_seconds(samples["linreg"]), median_seconds(samples["tutorial"])
    goal = Goal("<=", 30e-6, "<= 30 us / epoch")
    return [
        Row(
            f"demo-size epoch (100 x 1) on {device}, `linreg train --device {device.type}`",
            f"{linreg_s * 1e6:.3g} us / epoch",
            f"tutorial loop: {tutorial_s * 1e6:.3g} us / epoch",
            f"{linreg_s / tutorial_s:.3g}x",
            goal.text,
            verdict(goal, linreg_s),
            reps_text(samples["linreg"], samples["tutorial"]),
        )
    ]


def gpu(settings: Settings, device_name: str = "cuda") -> Section:
    """The demo-size epoch and the large-array epoch cost on CUDA."""
    section = Section(key="gpu", title="GPU")
    if device_name == "cuda" and not torch.cuda.is_available():
        section.skipped = "torch.cuda.is_available() is False: no CUDA device, GPU section skipped."
        return section
    device = torch.device(device_name)
    sizes = [(10**7, 16), (10**7, 1)] if settings.quick else [(10**8, 16), (10**8, 1)]
    section.sizes = "demo 100 x 1; " + ", ".join(shape(n, d) for n, d in sizes)
    section.commands = [
        f"regression.pipeline.run_training(TrainConfig(device={device.type!r}, tol=0, "
        f"epochs={DEMO_EPOCHS}), progress=cb)  # last Progress.elapsed / epochs",
        f"tutorial loop on the demo data (torch.rand(100, 1)), lr=0.01, {DEMO_EPOCHS} epochs, "
        "with loss.item()",
        *epoch_commands(device.type),
    ]
    section.notes.append(
        "The demo-size figure is run_training's training loop on the default demo data with "
        "--tol 0 (the default run stops after a few epochs, too few to time); the command adds "
        "only the process and the files around it."
    )
    log("  demo size")
    section.rows += demo_epoch_rows(device, settings.reps)
    goals = {16: Goal("<=", 3.0, "<= 3x"), 1: Goal("<=", 5.0, "<= 5x")}
    for n, d in sizes:
        log(f"  {shape(n, d)}")
        section.rows += epoch_rows(n, d, device, settings.reps, goals[d])
    if device.type == "cuda":
        section.notes.append(f"Device: {torch.cuda.get_device_name(device)}.")
    return section
