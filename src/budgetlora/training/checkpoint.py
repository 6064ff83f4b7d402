"""Resumable, atomic checkpoints.

A checkpoint is a folder `checkpoints/step-<N>/` holding the trainable weights (adapter + head,
safetensors), the optimizer and scheduler states, the RNG states and the loop's `TrainState`
(which includes the position in the epoch's batch order). It is written under a temporary name and
renamed into place, so a kill at any moment leaves only complete checkpoints behind; `latest`
is whichever complete folder has the highest step.

Data order needs no saved RNG: the batch sampler draws each epoch's order from seed + epoch, so
(epoch, batches consumed) says exactly where to continue.

Every file here is read back without unpickling arbitrary objects: weights are safetensors, the
optimizer/scheduler/RNG states are loaded with `torch.load(weights_only=True)` (the RNG states are
stored as plain ints, lists and tensors for that reason), the loop state is JSON.

Test hook: `BUDGETLORA_TEST_SLOW_CHECKPOINT=<seconds>` makes `save` sleep that long twice, once
before it starts (all earlier checkpoints complete) and once half-way through the write (weights
written, state not yet), so the reliability tests can SIGKILL a run at those moments
(tests/test_reliability.py). Unset, it costs nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from budgetlora.core.distributed import Processes
from budgetlora.core.files import atomic_path
from budgetlora.errors import RunDirError, TrainingDiverged, UserError
from budgetlora.training.state import LogWindow, TrainState

CKPT_DIR = "checkpoints"
PREFIX = "step-"
SLOW_ENV = "BUDGETLORA_TEST_SLOW_CHECKPOINT"


def _test_delay() -> None:
    """See the module docstring: a pause for kill tests, only when the variable is set."""
    seconds = os.environ.get(SLOW_ENV)
    if seconds:
        time.sleep(float(seconds))


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out: Path, state: TrainState, model: torch.nn.Module, optimizer, scheduler, keep: int,
         window: Optional[LogWindow] = None, rng_states: Optional[list[dict[str, Any]]] = None) -> Path:
    """Write `checkpoints/step-<N>/`. `rng_states` holds every process's RNG states in rank order
    (default: this process's alone); rank 0's go to rng.pt as in a one-process run."""
    rng_states = rng_states or [rng_state()]
    root = Path(out) / CKPT_DIR
    root.mkdir(exist_ok=True)
    final = root / f"{PREFIX}{state.step}"
    _test_delay()
    # The rename at the end of the block is the commit point: before it the old checkpoints stand,
    # after it the new one (a step saved twice, e.g. a signal right after a scheduled save, replaces
    # the earlier folder the same way).
    with atomic_path(final, directory=True) as tmp:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        _test_delay()
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rng_states):
            torch.save(rng, tmp / _rng_file(rank))
        flat = {**state.state_dict(), **(window or LogWindow()).state_dict(), "world_size": len(rng_states)}
        (tmp / "state.json").write_text(json.dumps(flat), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, as types `torch.load(weights_only=True)` accepts."""
    version, key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [version, key.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(rng["numpy"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _remove(d: Path) -> None:
    """Delete a checkpoint folder: first renamed out of the `step-*` names, so a kill half-way
    through the deletion never leaves a partial folder that looks like a checkpoint."""
    trash = d.parent / f".del-{d.name}-{os.getpid()}"
    try:
        os.replace(d, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(PREFIX) and (d / "state.json").is_file():
            try:
                found.append((int(d.name[len(PREFIX):]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(found)]


def _prune(root: Path, keep: int) -> None:
    for d in _complete(root)[:-keep]:
        _remove(d)
    # Left by a run killed mid-write; the run lock means no other writer is using them.
    for pattern in (f".tmp-{PREFIX}*", f".old-{PREFIX}*", f".del-{PREFIX}*"):
        for d in root.glob(pattern):
            shutil.rmtree(d, ignore_errors=True)


def check_fresh_start(out: Path, overwrite: bool) -> None:
    """A new run into a folder holding an interrupted one would bury its checkpoints (and a later
    --resume would pick theirs up): refuse, unless --overwrite."""
    last = latest(out)
    if last is not None and not overwrite:
        raise RunDirError(
            f"{out}: holds an interrupted run ({CKPT_DIR}/{last.name}); continue it with "
            f"`budgetlora train --resume {out}`, or pass --overwrite to start again"
        )


def clear_previous_run(out: Path) -> None:
    """Before a new run writes anything: drop the checkpoints and the finished mark (metrics.json)
    of the run it replaces (reached only with --overwrite, or when there are none)."""
    root = Path(out) / CKPT_DIR
    if root.is_dir():
        for d in _complete(root):
            _remove(d)
        shutil.rmtree(root, ignore_errors=True)
    (Path(out) / "metrics.json").unlink(missing_ok=True)


def latest(out: Path) -> Optional[Path]:
    found = _complete(Path(out) / CKPT_DIR)
    return found[-1] if found else None


def load_latest(out: Path, model: torch.nn.Module, optimizer, scheduler,
                rank: int = 0) -> tuple[TrainState, LogWindow, int]:
    """Restore everything from the newest complete checkpoint; returns the loop's progress and the
    number of processes that wrote it. A process whose rank the checkpoint has no RNG states for
    (more processes than before) takes rank 0's."""
    ckpt = latest(out)
    if ckpt is None:
        raise UserError(f"{out}: no checkpoint to resume from (checkpoints/ is empty); start the run again")
    try:  # read everything before changing anything
        weights = load_file(str(ckpt / "trainable.safetensors"))
        optimizer_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        scheduler_state = torch.load(ckpt / "scheduler.pt", weights_only=True)
        own = ckpt / _rng_file(rank)
        rng = torch.load(own if own.is_file() else ckpt / "rng.pt", weights_only=True)
        flat = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        state, window = TrainState.from_state_dict(flat), LogWindow.from_state_dict(flat)
    except Exception as e:  # damaged on disk, or written by another budgetlora version
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{ckpt}: cannot read this checkpoint ({type(e).__name__}: {text}); delete "
                        "that folder to resume from the checkpoint before it") from None
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise UserError(f"{ckpt}: checkpoint does not match this model ({len(missing)} trainable tensors missing)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    # The learning rates come from the configuration of THIS run, not from the saved states, so
    # that `--resume DIR --lr X` (the advice after a divergence) really lowers them. Unchanged,
    # they are the same numbers the saved states hold.
    base_lrs = list(scheduler.base_lrs)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    if base_lrs != list(scheduler.base_lrs) and hasattr(scheduler, "lr_lambdas"):
        scheduler.base_lrs = base_lrs
        for group, base, fn in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    _set_rng_state(rng)
    return state, window, int(flat.get("world_size", 1))


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def maybe_save(out: Path, state: TrainState, model, optimizer, scheduler, cfg, *, end_of_epoch: bool,
               force: bool = False, window: Optional[LogWindow] = None, procs: Processes = Processes()) -> None:
    """Save when the schedule says so. Every process calls it (their RNG states are gathered);
    the main process alone writes."""
    every = cfg.train.save_every
    if force or end_of_epoch or (every and state.step % every == 0):
        if not all_finite(model):
            # Never let NaN/inf weights become the "latest" checkpoint: the last good one must stay
            # the one a resume starts from. The replicas are identical, so every process stops here.
            raise TrainingDiverged(diverged_message(out, state.step, "the weights became NaN or infinite", cfg.train.lr))
        rngs = procs.gather(rng_state())
        if procs.is_main:
            save(out, state, model, optimizer, scheduler, cfg.train.keep_checkpoints, window, rngs)


def diverged_message(out: Path, step: int, what: str, lr: float) -> str:
    """Says what went wrong, that the last good checkpoint is kept, and how to go on."""
    last = latest(out)
    kept = (f"the last good checkpoint ({last.name}) is kept" if last is not None
            else "there is no checkpoint yet, so a resume starts from step 0")
    return (f"training diverged: {what} at step {step}; {kept}; resume with a lower learning rate: "
            f"budgetlora train --resume {out} --lr {lr / 10:.2g}")
