"""A seam for tests that inject faults into the training step (a NaN loss, an out-of-memory
error) without patching private functions: `with inject_loss_fault(fn): ...` makes every loss the
loop computes inside the block pass through `fn(loss)` first. Outside such a block nothing runs."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

import torch

LossFault = Callable[[torch.Tensor], torch.Tensor]

_loss_fault: contextvars.ContextVar[Optional[LossFault]] = contextvars.ContextVar("budgetlora_loss_fault", default=None)


@contextlib.contextmanager
def inject_loss_fault(fault: LossFault) -> Iterator[None]:
    token = _loss_fault.set(fault)
    try:
        yield
    finally:
        _loss_fault.reset(token)


def apply_loss_fault(loss: torch.Tensor) -> torch.Tensor:
    fault = _loss_fault.get()
    return loss if fault is None else fault(loss)
