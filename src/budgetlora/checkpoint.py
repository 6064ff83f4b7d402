"""Resumable, atomic checkpoints.

A checkpoint is a folder `checkpoints/step-<N>/` holding the trainable weights (adapter + head,
safetensors), the optimizer and scheduler states, the RNG states and the loop's `TrainState`
(which includes the position in the epoch's batch order). It is written under a temporary name and
renamed into place, so a kill at any moment leaves only complete checkpoints behind; `latest`
is whichever complete folder has the highest step.

Data order needs no saved RNG: the batch sampler draws each epoch's order from seed + epoch, so
(epoch, batches consumed) says exactly where to continue.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from budgetlora.errors import UserError

CKPT_DIR = "checkpoints"
PREFIX = "step-"


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


def save(out: Path, state, model: torch.nn.Module, optimizer, scheduler, keep: int) -> Path:
    root = Path(out) / CKPT_DIR
    root.mkdir(exist_ok=True)
    final = root / f"{PREFIX}{state.step}"
    tmp = root / f".tmp-{PREFIX}{state.step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)  # the commit point: before it the old checkpoints stand, after it the new one
    _fsync_dir(root)
    _prune(root, keep)
    return final


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
        shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(f".tmp-{PREFIX}*"):  # left by a run killed mid-write
        if not d.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(d, ignore_errors=True)


def latest(out: Path) -> Optional[Path]:
    found = _complete(Path(out) / CKPT_DIR)
    return found[-1] if found else None


def load_latest(out: Path, model: torch.nn.Module, optimizer, scheduler):
    """Restore everything from the newest complete checkpoint; returns the TrainState."""
    from budgetlora.train import TrainState

    ckpt = latest(out)
    if ckpt is None:
        raise UserError(f"{out}: no checkpoint to resume from (checkpoints/ is empty); start the run again")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise UserError(f"{ckpt}: checkpoint does not match this model ({len(missing)} trainable tensors missing)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file: python/numpy states are tuples
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**json.loads((ckpt / "state.json").read_text(encoding="utf-8")))


def maybe_save(out: Path, state, model, optimizer, scheduler, cfg, *, end_of_epoch: bool, force: bool = False) -> None:
    every = cfg.train.save_every
    if force or end_of_epoch or (every and state.step % every == 0):
        save(out, state, model, optimizer, scheduler, cfg.train.keep_checkpoints)
