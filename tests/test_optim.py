"""regression.optim: torch.optim.SGD stepped by its own update code, without importing
torch._dynamo (1 s and 150 MB that a run does not need)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from regression.optim import sgd, step


def _fit(
    stepper: str, *, momentum: float, weight_decay: float, cpu: bool = False
) -> list[torch.Tensor]:
    """Parameters after 25 steps of nn.Linear + MSELoss on fixed data."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(200, 4, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64) + 0.7
    model = torch.nn.Linear(4, 1, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    groups = [
        {"params": [model.weight], "weight_decay": weight_decay},
        {"params": [model.bias], "weight_decay": 0.0},
    ]
    if stepper == "torch":
        optimizer = torch.optim.SGD(groups, lr=0.05, momentum=momentum)
    else:
        optimizer = sgd(groups, lr=0.05, momentum=momentum, cpu=cpu)
    for _ in range(25):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.MSELoss()(model(X), y).backward()
        if stepper == "torch":
            optimizer.step()
        else:
            step(optimizer)
    return [model.weight.detach().clone(), model.bias.detach().clone()]


@pytest.mark.parametrize("cpu", [False, True])  # True: foreach=False said, not found out
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_step_is_bit_identical_to_optimizer_step(
    momentum: float, weight_decay: float, cpu: bool
) -> None:
    ours = _fit("ours", momentum=momentum, weight_decay=weight_decay, cpu=cpu)
    theirs = _fit("torch", momentum=momentum, weight_decay=weight_decay)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], torch.zeros_like(ours[0]))  # it did train


def test_step_leaves_gradients_off_and_the_graph_alone() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = sgd([{"params": list(model.parameters())}], lr=0.1, momentum=0.0)
    torch.nn.MSELoss()(model(torch.ones(3, 2)), torch.zeros(3, 1)).backward()
    step(optimizer)
    assert torch.is_grad_enabled()
    assert model.weight.grad_fn is None and model.weight.requires_grad


def test_training_does_not_import_dynamo() -> None:
    """A whole training run (with checkpoint state read back) in a fresh interpreter leaves
    torch._dynamo (and triton) unimported."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from regression.config import TrainConfig
        from regression.train import train
        X = torch.randn(1000, 3)
        y = X.sum(dim=1, keepdim=True)
        config = TrainConfig(epochs=20, momentum=0.5, device="cpu")
        trained = train(X, y, config=config, lr=0.1)
        assert trained.history[-1] < trained.history[0]
        print(sorted(m for m in ("torch._dynamo", "triton") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
