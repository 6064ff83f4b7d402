"""`train(cfg)`: setup -> fit -> finalize, inside a locked run folder.

1. setup: the budget is counted from the model config and an over-budget configuration refused
   before any weights load; the data is tokenized once; the model is built and counted again;
   Accelerate, the loader, optimizer and schedule are prepared; a resumed run restores its
   checkpoint (training.setup, training.checkpoint);
2. fit: the loop (training.loop): AdamW, warm-up + decay, gradient accumulation and clipping, bf16
   autocast, evaluation every N steps and at each epoch end, best adapter kept, early stopping;
3. finalize: metrics.json, curves.png and the model card next to config.yaml and log.jsonl
   (training.outputs).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from budgetlora.budget.defaults import Unset
from budgetlora.config import RunConfig, load_config
from budgetlora.core.device import machine_description
from budgetlora.core.distributed import Processes
from budgetlora.core.files import RunLock, atomic_write_text, is_finished_run, prepare_output_dir
from budgetlora.errors import UserError
from budgetlora.training import checkpoint as ckpt
from budgetlora.training.loop import OnEval, Run, fit
from budgetlora.training.outputs import JsonlLog, RunMetrics, write_outputs
from budgetlora.training.setup import check_budget_first, setup_data, setup_engine, setup_hooks, setup_model
from budgetlora.training.state import LogWindow, TrainState
from budgetlora.training.trackers import RunTrackers

log = logging.getLogger(__name__)


def oom_message(batch_size: int, grad_accum: int, eval_batch_size: int) -> str:
    """What to try after the GPU ran out of memory: the same effective batch in smaller pieces."""
    if batch_size > 1:
        advice = (f"try --batch-size {batch_size // 2} --grad-accum {grad_accum * 2} (the same "
                  f"{batch_size * grad_accum} rows per optimizer step in smaller pieces)")
    else:
        advice = "the batch is already 1 row: try a smaller --max-length, --precision bf16 or a smaller model"
    return (f"out of GPU memory with --batch-size {batch_size}: {advice}; if it ran out while "
            f"evaluating, try --eval-batch-size {max(1, eval_batch_size // 2)}")


def train(cfg: RunConfig, *, command: Optional[str] = None, resume: bool = False,
          on_eval: Optional[OnEval] = None, unset: Unset = Unset()) -> RunMetrics:
    """Train under the budget and write the run folder; returns the run's metrics.

    Under torchrun or `accelerate launch` every process calls it; the main process alone writes
    the run folder, and every process returns the same metrics or raises the same error.
    `on_eval(step, eval_accuracy)` is called after every evaluation; it may raise to stop the run
    (`budgetlora search` raises optuna.TrialPruned there). `unset` names the settings the user left
    to budgetlora (budget.defaults.unset_settings): they are chosen for the model and the budget
    before anything is written, and config.yaml records the chosen values.
    """
    cfg.validate()
    procs = Processes.start()
    if resume and is_finished_run(Path(cfg.output_dir)):
        raise UserError(f"{cfg.output_dir}: this run has already finished; nothing to resume")
    trackers = RunTrackers(cfg.train.report_to, Path(cfg.output_dir or "."))  # installed? before anything runs
    with run_folder(cfg, procs) as out:
        try:
            run = setup(cfg, out, resume, procs, trackers, unset)
            fit(run, on_eval)
            return finalize(run, command)
        except torch.cuda.OutOfMemoryError:  # the step, the evaluation or the model's move to the GPU
            t = cfg.train
            raise UserError(oom_message(t.batch_size, t.grad_accum, t.eval_batch_size)) from None
        finally:
            trackers.finish()


@contextlib.contextmanager
def run_folder(cfg: RunConfig, procs: Processes = Processes()) -> Iterator[Path]:
    """The output folder, locked by the main process for this run; a run refused before writing
    anything leaves no empty folder behind."""
    created = not Path(cfg.output_dir or "").expanduser().exists()

    def take() -> tuple[Path, Optional[RunLock]]:
        out = prepare_output_dir(cfg.output_dir, overwrite=cfg.overwrite)
        return out, RunLock(out).acquire()

    out, lock = procs.main_first(take, lambda: (Path(cfg.output_dir).expanduser(), None))
    try:
        yield out
    finally:
        if lock is not None:
            lock.release()
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()


def setup(cfg: RunConfig, out: Path, resume: bool, procs: Processes = Processes(),
          trackers: Optional[RunTrackers] = None, unset: Unset = Unset()) -> Run:
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    if not resume:
        procs.main_first(lambda: ckpt.check_fresh_start(out, cfg.overwrite), lambda: None)
    checked = check_budget_first(cfg, unset)
    cfg = checked.cfg  # with the settings left unset chosen: what trains, and what config.yaml says
    if checked.choice is not None and procs.is_main:
        log.info("%s", checked.choice.message())
    data = setup_data(cfg, checked, out / "cache", procs)
    model = setup_model(cfg, checked)
    engine = setup_engine(cfg.train, model.model, data, procs)
    hooks = setup_hooks(cfg, engine.unwrapped(), engine.total_steps)
    if not resume and procs.is_main:  # every input is known good now: only then replace anything
        ckpt.clear_previous_run(out)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
    state, window = TrainState(), LogWindow()
    if resume and ckpt.latest(out) is not None:
        state, window, written_by = ckpt.load_latest(out, engine.unwrapped(), engine.optimizer, engine.scheduler,
                                                     procs.rank)
        if written_by != procs.world_size and procs.is_main:
            log.warning("resuming a checkpoint of %d processes with %d: the same rows in the same order, "
                        "but dropout draws differ from an uninterrupted run", written_by, procs.world_size)
        logger = JsonlLog(out / "log.jsonl", keep_up_to_step=state.step, enabled=procs.is_main)
    else:  # a new run, or one killed before its first checkpoint: step 0, as a new run would
        logger = JsonlLog(out / "log.jsonl", enabled=procs.is_main)
    trackers = trackers or RunTrackers([], out)
    # The main process alone reports, as it alone writes log.jsonl; opened once the model, its
    # budget and the resume step are known.
    procs.main_first(lambda: trackers.start(cfg.to_dict(), model.measured.as_dict(),
                                            resume_step=state.step if resume else None), lambda: None)
    if procs.is_main:
        log.info("training %s: %d rows, %d steps, %s, %d trainable params (%s), %d process(es)", cfg.model.model,
                 len(data.train.input_ids), engine.total_steps, engine.precision, model.measured.total,
                 model.measured.describe(), procs.world_size)
    return Run(cfg, out, checked.label_names, checked.tokenizer, data, model, engine, state, window, logger,
               procs, trackers, hooks=hooks)


def finalize(run: Run, command: Optional[str]) -> RunMetrics:
    """metrics.json, curves and model card of the finished run."""
    cfg, state, e = run.cfg, run.state, run.engine
    # The slowest process's time: the run took as long as it did (the same figure on every process).
    state.train_seconds = run.procs.max(state.train_seconds)
    seconds = max(state.train_seconds, 1e-9)
    metrics = RunMetrics(
        model=cfg.model.model, head=cfg.model.head,
        trainable_params=run.model.measured.total, total_params=run.model.total_params,
        budget=cfg.budget, budget_breakdown=run.model.measured.as_dict(),
        best_eval_accuracy=state.best_eval_accuracy, best_step=state.best_step,
        final_eval_accuracy=state.history[-1]["eval_accuracy"] if state.history else None,
        steps=state.step, epochs_completed=round(state.step / e.steps_per_epoch, 4),
        stopped_early=state.stopped_early,
        train_rows=len(run.data.train.input_ids), eval_rows=len(run.data.eval.input_ids),
        label_names=run.label_names, train_samples=state.samples_seen,
        train_samples_per_second=state.samples_seen / seconds,
        train_tokens_per_second=state.tokens_seen / seconds, train_runtime_s=state.train_seconds,
        precision=e.precision, device=str(e.device), machine=machine_description(), seed=cfg.train.seed,
        command=command or f"budgetlora train --config {run.out / 'config.yaml'}",
        world_size=run.procs.world_size,
    )
    if run.procs.is_main:
        write_outputs(run.out, cfg, metrics)
    run.procs.barrier()  # no process returns before the run folder is complete
    return metrics


def config_for_train(recipe: Optional[str], overrides: dict[str, Any], resume: Optional[str] = None) -> RunConfig:
    """`budgetlora train`'s settings: defaults < recipe < flags; `--resume DIR` reads the run's own
    config.yaml and needs nothing else."""
    if resume:
        cfg_path = Path(resume) / "config.yaml"
        if not cfg_path.is_file():
            raise UserError(f"{resume}: nothing to resume (no config.yaml); is this a budgetlora run folder?")
        return load_config(cfg_path, {**overrides, "output_dir": resume})
    return load_config(recipe, overrides)
