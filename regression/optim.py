"""``torch.optim.SGD`` without the import of ``torch._dynamo`` that its first use triggers.

``torch.optim`` marks ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` with ``torch._disable_dynamo`` and wraps ``SGD.step`` in a function that
calls ``torch._dynamo.graph_break()``: both exist so that ``torch.compile`` does not trace
into the optimizer, and both import ``torch._dynamo`` (and with it triton) on the first
call. Measured here (torch 2.14, 2 cores): that import takes 1.1 s and 150 MB of memory,
more than the whole demo's training and more than the rest of a streamed run's memory.

linreg never runs the optimizer under ``torch.compile``, so it skips those wrappers:

- the ``torch._disable_dynamo`` wrappers cache their "disabled" function on the wrapped
  function (attribute ``__dynamo_disable``) after the first call; ``_skip_dynamo_wrappers``
  stores the plain function there, so the wrapper calls it directly;
- ``step`` calls ``SGD.step`` itself (the function under its wrappers, with gradients off,
  which is what the wrapper does for an optimizer that is not ``differentiable``).

The update is SGD's own code, so the parameters are bit-identical to ``optimizer.step()``
(tested). With another torch whose wrappers differ, these are no-ops and the usual path
runs.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

_WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def _skip_dynamo_wrappers() -> None:
    if "torch._dynamo" in sys.modules:  # already paid for: nothing to save
        return
    for name in _WRAPPED_METHODS:
        plain = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if plain is not None and getattr(plain, "__dynamo_disable", None) is None:
            plain.__dynamo_disable = plain


def sgd(
    groups: Iterable[dict[str, Any]], *, lr: float, momentum: float, cpu: bool = False
) -> torch.optim.SGD:
    """``torch.optim.SGD(groups, lr=lr, momentum=momentum)``; step it with ``step``.

    ``cpu``: every parameter is on the CPU, where SGD's default implementation is the
    single-tensor loop (foreach=False); saying so skips the per-step check that finds it
    out (a quarter of a small model's step)."""
    _skip_dynamo_wrappers()
    return torch.optim.SGD(list(groups), lr=lr, momentum=momentum, foreach=False if cpu else None)


def step(optimizer: torch.optim.SGD) -> None:
    """``optimizer.step()``, by SGD's own update code."""
    plain = _plain_step(type(optimizer))
    if optimizer.defaults.get("differentiable") or plain is type(optimizer).step:
        optimizer.step()
        return
    with torch.no_grad():
        plain(optimizer)


_PLAIN_STEPS: dict[type, Callable[[torch.optim.SGD], object]] = {}


def _plain_step(kind: type[torch.optim.SGD]) -> Callable[[torch.optim.SGD], object]:
    if kind not in _PLAIN_STEPS:
        _PLAIN_STEPS[kind] = inspect.unwrap(kind.step)
    return _PLAIN_STEPS[kind]
