"""The training loop, read top to bottom: `fit` runs optimizer steps until the schedule ends or
early stopping says so; each step is `train_step` on its micro-batches, then the bookkeeping of
`after_step` (log, evaluate, checkpoint, stop on a signal)."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from budgetlora.config import RunConfig, TrainConfig
from budgetlora.core.distributed import Processes
from budgetlora.core.signals import stop_signals_handled
from budgetlora.errors import TrainingDiverged, TrainingInterrupted, UserError
from budgetlora.inference.runner import accuracy_and_loss, predict_logits
from budgetlora.modeling import save_adapter
from budgetlora.training import checkpoint as ckpt
from budgetlora.training import distill
from budgetlora.training.faults import apply_loss_fault
from budgetlora.training.outputs import JsonlLog
from budgetlora.training.setup import Engine, PreparedData, PreparedModel
from budgetlora.training.state import LogWindow, TrainState

OnEval = Callable[[int, float], None]


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step, so the run stops
    at a step boundary with a checkpoint instead of dying mid-update."""

    def __init__(self) -> None:
        self.signum = 0  # the signal received, 0 while none

    @property
    def requested(self) -> Optional[str]:
        return signal.Signals(self.signum).name if self.signum else None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # a second signal: the user really wants out now
            raise KeyboardInterrupt
        self.signum = signum


@dataclass
class Run:
    """One training run's objects, built by `setup` and advanced by `fit`."""

    cfg: RunConfig
    out: Path
    label_names: list[str]
    tokenizer: Any
    data: PreparedData
    model: PreparedModel
    engine: Engine
    state: TrainState
    window: LogWindow
    log: JsonlLog
    procs: Processes = field(default_factory=Processes)
    stop: StopRequest = field(default_factory=StopRequest)
    tick: float = 0.0  # when the current optimizer step's time started counting
    last_eval_accuracy: float = float("nan")


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, t: TrainConfig,
                 teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    if teacher_logits is not None:  # --teacher: knowledge distillation (training.distill)
        return distill.distill_loss(logits, labels, teacher_logits, t.distill_alpha, t.distill_temperature, t.label_smoothing)
    return torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=t.label_smoothing)


def fit(run: Run, on_eval: Optional[OnEval] = None) -> None:
    """Optimizer steps until the schedule's end or early stopping, from wherever `run.state` is."""
    from tqdm.auto import tqdm

    e, state = run.engine, run.state
    if state.best_eval_accuracy >= 0:
        run.last_eval_accuracy = state.best_eval_accuracy
    bar = tqdm(total=e.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not run.procs.is_main)
    try:
        with stop_signals_handled(run.stop.handle):
            while state.step < e.total_steps and not state.stopped_early:
                for batch in epoch_batches(run):
                    train_step(run, batch)
                    if e.accelerator.sync_gradients and after_step(run, bar, on_eval):
                        break
                else:  # the loader is exhausted: the epoch is over, whatever the count says
                    state.batch_in_epoch = max(state.batch_in_epoch, e.batches_per_epoch)
                if state.batch_in_epoch >= e.batches_per_epoch:
                    state.epoch += 1
                    state.batch_in_epoch = 0
    except RuntimeError as err:
        if not run.procs.several:
            raise
        # A collective step failed: another process of the run died (killed, out of memory) and
        # the launcher is tearing the run down. Say so in one line instead of gloo's traceback.
        raise UserError(f"another process of this run stopped ({str(err).splitlines()[0][:160]}); the last "
                        f"complete checkpoint is kept: run the same launch command with --resume {run.out}") from None
    finally:
        bar.close()  # ends the progress line, so an error message starts a line of its own


def epoch_batches(run: Run) -> Any:
    """This epoch's micro-batches; a resumed run skips those of the epoch it already trained on."""
    e, state = run.engine, run.state
    e.sampler.set_epoch(state.epoch)
    if hasattr(e.loader, "set_epoch"):  # Accelerate re-sets the sampler's epoch from its own counter
        e.loader.set_epoch(state.epoch)
    e.model.train()
    run.tick = time.perf_counter()
    if state.batch_in_epoch:
        return e.accelerator.skip_first_batches(e.loader, state.batch_in_epoch)
    return e.loader


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> None:
    """Forward and backward on one micro-batch; the optimizer steps when Accelerate says the
    accumulation is complete (its `sync_gradients`)."""
    e, t, state = run.engine, run.cfg.train, run.state
    if run.procs.several:  # an unprepared loader (training.setup): batches come on the CPU
        batch = {k: v.to(e.device, non_blocking=True) for k, v in batch.items()}
    labels = batch.pop("labels")
    teacher_logits = batch.pop("teacher_logits", None)
    with e.accelerator.accumulate(e.model):
        with e.accelerator.autocast():
            logits = e.model(**batch).logits
        loss = apply_loss_fault(compute_loss(logits, labels, t, teacher_logits))
        loss_sum, correct, rows, tokens = _step_totals(run, loss, logits, labels, batch["attention_mask"])
        if not math.isfinite(loss_sum):  # on any process: every one stops here, before the update
            what = f"the loss is {loss.item() if not run.procs.several else loss_sum / rows}"
            raise TrainingDiverged(ckpt.diverged_message(run.out, state.step + 1, what, t.lr))
        if run.procs.several:
            # DDP averages the processes' gradients; weighting each piece's mean loss by its share
            # of the batch's rows makes that average the whole batch's mean, as in one process,
            # also when the pieces differ in size.
            loss = loss * (labels.numel() * run.procs.world_size / rows)
        e.accelerator.backward(loss)
        if e.accelerator.sync_gradients and t.max_grad_norm > 0:
            e.accelerator.clip_grad_norm_(e.model.parameters(), t.max_grad_norm)
        e.optimizer.step()  # a no-op on accumulation micro-batches (Accelerate)
        if e.accelerator.sync_gradients:
            e.scheduler.step()
        e.optimizer.zero_grad(set_to_none=True)
    state.samples_seen += rows
    state.tokens_seen += tokens
    run.window.add_sums(loss_sum, correct, rows)
    state.batch_in_epoch += 1


def _step_totals(run: Run, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 mask: torch.Tensor) -> tuple[float, int, int, int]:
    """(loss summed over rows, correct, rows, tokens) of this micro-batch over every process, so
    that counts, the log window and the NaN check are the same on all of them."""
    rows = labels.numel()
    totals = (loss.item() * rows, int((logits.argmax(-1) == labels).sum()), rows, int(mask.sum()))
    if not run.procs.several:
        return totals
    loss_sum, correct, rows, tokens = run.procs.sum(totals)
    return loss_sum, int(correct), int(rows), int(tokens)


def after_step(run: Run, bar: Any, on_eval: Optional[OnEval]) -> bool:
    """An optimizer step's bookkeeping; True when the run should stop."""
    e, t, state = run.engine, run.cfg.train, run.state
    state.step += 1
    state.train_seconds += time.perf_counter() - run.tick
    bar.update(1)
    if state.step % t.log_every == 0 or state.step == e.total_steps:
        log_training(run, bar)
    end_of_epoch = state.batch_in_epoch >= e.batches_per_epoch
    if (t.eval_every and state.step % t.eval_every == 0) or end_of_epoch or state.step >= e.total_steps:
        accuracy = evaluate(run)
        if on_eval is not None:
            on_eval(state.step, accuracy)  # may raise, e.g. optuna.TrialPruned
        e.model.train()
        if t.patience and state.evals_without_improvement >= t.patience:
            state.stopped_early = True
    run.stop.signum = run.procs.max(run.stop.signum)  # a signal to any process stops them all
    ckpt.maybe_save(run.out, state, e.unwrapped(), e.optimizer, e.scheduler, run.cfg, end_of_epoch=end_of_epoch,
                    force=bool(run.stop.signum), window=run.window, procs=run.procs)
    if run.stop.requested:
        raise TrainingInterrupted(f"stopped by {run.stop.requested} at step {state.step}; a checkpoint is saved: "
                                  f"budgetlora train --resume {run.out}")
    run.tick = time.perf_counter()
    return state.step >= e.total_steps or state.stopped_early


def log_training(run: Run, bar: Any) -> None:
    state = run.state
    loss, accuracy = run.window.take()
    record = {
        "step": state.step,
        "epoch": round(state.step / run.engine.steps_per_epoch, 4),
        "loss": loss,
        "train_accuracy": accuracy,
        "lr": run.engine.scheduler.get_last_lr()[0],
        "samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
    }
    run.log.write(record)
    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}", val=f"{run.last_eval_accuracy:.3f}",
                    sps=f"{record['samples_per_second']:.1f}")


def evaluate(run: Run) -> float:
    """Validation accuracy and loss now; the adapter is saved when it is the best so far."""
    e, state = run.engine, run.state
    if run.procs.several:
        accuracy, loss = _sharded_accuracy_and_loss(run)
    else:
        accuracy, loss = accuracy_and_loss(e.unwrapped(), run.data.eval, run.cfg.train.eval_batch_size,
                                           e.collate, e.device, e.precision)
    record = {"step": state.step, "epoch": round(state.step / e.steps_per_epoch, 4),
              "eval_accuracy": accuracy, "eval_loss": loss}
    state.history.append(record)
    run.log.write(record)
    if state.record_eval(accuracy) and run.procs.is_main:
        save_adapter(e.unwrapped(), run.tokenizer, run.cfg, run.label_names, run.out / "adapter")
    run.last_eval_accuracy = accuracy
    return accuracy


def _sharded_accuracy_and_loss(run: Run) -> tuple[float, float]:
    """Each process scores rows rank, rank + N, ...; the sums over all of them count every
    validation row exactly once, whatever the remainder."""
    e, procs, enc = run.engine, run.procs, run.data.eval
    ids = enc.input_ids[procs.rank::procs.world_size]
    loss_sum, correct = 0.0, 0
    if ids:
        logits = predict_logits(e.unwrapped(), ids, run.cfg.train.eval_batch_size, e.collate, e.device, e.precision)
        labels = torch.as_tensor(enc.labels[procs.rank::procs.world_size])
        loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct = int((logits.argmax(-1) == labels).sum())
    loss_sum, correct, rows = procs.sum([loss_sum, correct, len(ids)])
    return correct / rows, loss_sum / rows
