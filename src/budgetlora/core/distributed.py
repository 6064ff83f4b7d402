"""Several processes training one run (torchrun / accelerate launch): who is the main process, and
the few collective steps the loop needs so that every process takes the same decisions.

Everything here is a no-op in a single process, so the one-process path stays as it was. The
process group itself is started by Accelerate (`PartialState`), gloo on a CPU and NCCL on GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

from budgetlora.errors import UserError

T = TypeVar("T")


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls) -> "Processes":
        """Join the launcher's process group (Accelerate reads its environment), if there is one."""
        from accelerate import PartialState

        # On a machine without a GPU, Accelerate joins the launcher's processes (gloo) only when
        # told that it runs on the CPU; with a GPU it picks NCCL itself.
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes)

    def barrier(self) -> None:
        if self.several:
            _dist().barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over every process (float64, so counts stay exact)."""
        if not self.several:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64)
        _dist().all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest `value` over every process (an int stays an int)."""
        if not self.several:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
        return type(value)(t.item())

    def gather(self, obj: T) -> list[T]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.several:
            return [obj]
        out: list[Any] = [None] * self.world_size
        _dist().all_gather_object(out, obj)
        return out

    def main_first(self, fn: Callable[[], T], others: Optional[Callable[[], T]] = None) -> T:
        """`fn` on the main process; then, once it succeeded, `others` (default `fn`) on the rest.

        A UserError on the main process is raised on every process, with the same message and exit
        code, so no process waits at a collective step for one that has already given up."""
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                failure = e
        failure = self._agree(failure)
        if failure is not None:
            raise failure
        return result if self.is_main else (others or fn)()

    def _agree(self, failure: Optional[UserError]) -> Optional[UserError]:
        if not self.several:
            return failure
        box: list[Any] = [(type(failure), str(failure), failure.exit_code) if failure else None]
        _dist().broadcast_object_list(box, src=0)
        if box[0] is None:
            return None
        cls, message, code = box[0]
        err = cls(message) if failure is None else failure
        err.exit_code = code
        return err
