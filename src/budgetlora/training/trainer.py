"""Training: one explicit loop on Accelerate, readable top to bottom.

`train(cfg)` does, in order:
1. load and split the data, tokenize it once;
2. count the trainable parameters from the model config alone and refuse an over-budget
   configuration before any weights are loaded; build the model and count again, measured;
3. run the loop: AdamW, warm-up + decay, gradient accumulation and clipping, bf16 autocast,
   evaluation every N steps and at each epoch end, best adapter kept, early stopping;
4. write metrics.json, curves.png and the model card next to config.yaml and log.jsonl.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from budgetlora.config import RunConfig, TrainConfig, load_config
from budgetlora.core.device import machine_description, resolve_precision
from budgetlora.errors import ConfigError, TrainingDiverged, TrainingInterrupted, UserError
from budgetlora.training.checkpoint import diverged_message
from budgetlora.training.state import TrainState
from budgetlora.core.files import RunLock, atomic_write_json, atomic_write_text, is_finished_run, prepare_output_dir

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


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each optimizer step, so the run stops
    at a step boundary with a checkpoint instead of dying mid-update."""

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self._old: dict[int, Any] = {}

    def install(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.requested:  # a second signal: the user really wants out now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


def _param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups: LoRA+ gives B its own learning rate; no weight decay on biases, norms, DoRA."""
    t = cfg.train
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_B" in name:
            lr = t.lr * t.lora_plus_ratio
        elif "lora_" in name:
            lr = t.lr
        else:
            lr = t.head_lr if t.head_lr is not None else t.lr
        no_decay = p.ndim < 2 or "norm" in name.lower() or "magnitude" in name
        groups.setdefault((lr, 0.0 if no_decay else t.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _make_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    # fused AdamW runs the whole update in one kernel; it exists for CUDA and, in recent torch, CPU.
    for fused in (True, False):
        try:
            return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=fused if device.type in ("cuda", "cpu") else None)
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.train.schedule, cfg.train.schedule)
    warmup = int(round(cfg.train.warmup_fraction * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _loss_fn(logits: torch.Tensor, labels: torch.Tensor, t: TrainConfig,
             teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    if teacher_logits is not None:  # --teacher: knowledge distillation (budgetlora.training.distill)
        from budgetlora.training.distill import distill_loss

        return distill_loss(logits, labels, teacher_logits, t.distill_alpha, t.distill_temperature, t.label_smoothing)
    return torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=t.label_smoothing)


class JsonlLog:
    """log.jsonl: one JSON object per logged step or evaluation, flushed as written."""

    def __init__(self, path: Path, keep_up_to_step: Optional[int] = None):
        self.path = path
        if keep_up_to_step is not None and path.exists():
            # On resume, drop records written after the checkpoint so the log matches the state.
            kept = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                step = record.get("step", 0) if isinstance(record, dict) else None
                if isinstance(step, (int, float)) and step <= keep_up_to_step:
                    kept.append(line)
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif keep_up_to_step is None:
            path.write_text("", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def train(
    cfg: RunConfig, *, command: Optional[str] = None, resume: bool = False,
    on_eval: Optional[Callable[[int, float], None]] = None,
) -> dict[str, Any]:
    """Train under the budget and write the run folder. Returns the metrics dict.

    `on_eval(step, eval_accuracy)` is called after every evaluation; it may raise to stop the run
    (`budgetlora search` raises optuna.TrialPruned there).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from budgetlora import budget as budget_mod
    from budgetlora.training import checkpoint as ckpt
    from budgetlora.data import Collator, EncodedDataset, encode, train_batch_sampler, length_filter_indices, prepare_splits
    from budgetlora.inference.evaluate import accuracy_and_loss
    from budgetlora.modeling import add_lora, build_classifier, check_tokenizer_matches, load_hf_config, load_tokenizer, save_adapter

    cfg.validate()
    # --- trackers hook (issue 18; re-apply to the split loop): installed? before anything runs ---
    from budgetlora.training.trackers import RunTrackers

    trackers = RunTrackers(cfg.train.report_to, Path(cfg.output_dir or "."))
    # --- end trackers hook ---
    if resume and is_finished_run(Path(cfg.output_dir)):
        raise UserError(f"{cfg.output_dir}: this run has already finished; nothing to resume")
    created = not Path(cfg.output_dir or "").expanduser().exists()
    out = prepare_output_dir(cfg.output_dir, overwrite=cfg.overwrite)
    lock = RunLock(out).acquire()
    stop, bar = StopRequest(), None
    try:
        t = cfg.train
        set_seed(t.seed)
        if not resume:
            ckpt.check_fresh_start(out, cfg.overwrite)

        # 1. Data, tokenized once.
        splits = prepare_splits(cfg.data, t.seed)
        label_names = splits.label_names
        num_labels = len(label_names)
        tokenizer = load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)

        # 2. The budget, before any weights are loaded, then measured on the real model.
        hf_config = load_hf_config(cfg.model, num_labels, label_names)
        check_tokenizer_matches(tokenizer, hf_config, cfg.model.model)
        estimated = budget_mod.estimate(cfg, hf_config, num_labels)
        budget_mod.check_budget(estimated, cfg.budget)

        cache_dir = out / "cache"
        enc_train = encode(splits.train.texts, tokenizer, cfg.data.max_length, labels=splits.train.labels, cache_dir=cache_dir)
        enc_eval = encode(splits.eval.texts, tokenizer, cfg.data.max_length, labels=splits.eval.labels, cache_dir=cache_dir)
        teacher = None
        if t.teacher:  # distillation: the teacher's logits on every training row, computed once
            from budgetlora.training.distill import training_targets

            teacher = training_targets(cfg, splits.train.texts, enc_train, tokenizer, label_names, cache_dir)
        if cfg.data.length_filter:
            keep = length_filter_indices(enc_train.lengths, *cfg.data.length_filter)
            log.info("length filter kept %d of %d training rows", len(keep), len(enc_train.input_ids))
            enc_train = type(enc_train)([enc_train.input_ids[i] for i in keep], [enc_train.labels[i] for i in keep])
            teacher = teacher[keep] if teacher is not None else None

        base = build_classifier(cfg.model, num_labels, label_names, hf_config=hf_config)
        model = add_lora(base, cfg)
        measured = budget_mod.count_trainable(model)
        budget_mod.check_budget(measured, cfg.budget)
        if measured.total != estimated.total:
            log.warning("planned %d trainable parameters, measured %d; the measured count is used", estimated.total, measured.total)
        total_params = sum(p.numel() for p in model.parameters())
        if not resume:  # every input is known good now: only then replace anything in the folder
            ckpt.clear_previous_run(out)
            atomic_write_text(out / "config.yaml", cfg.to_yaml())

        # 3. Devices, precision, loaders, optimizer.
        precision = resolve_precision(t.precision, PartialState().device)
        # Accelerate keeps its settings in a process-wide singleton; train() is a library function
        # that may run several times in one process with different precisions, so start afresh.
        AcceleratorState._reset_state()
        accelerator = Accelerator(
            mixed_precision="no" if precision == "fp32" else precision,
            gradient_accumulation_steps=t.grad_accum,
        )
        device = accelerator.device
        collate = Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        sampler = train_batch_sampler(enc_train.lengths, t.batch_size, seed=t.seed, group_by_length=t.group_by_length)
        train_loader = torch.utils.data.DataLoader(
            EncodedDataset(enc_train, {"teacher_logits": teacher} if teacher is not None else None), batch_sampler=sampler, collate_fn=collate, num_workers=t.num_workers,
            generator=torch.Generator().manual_seed(t.seed),  # a loader draws a seed from it, not from the global RNG
        )
        optimizer = _make_optimizer(model, cfg, device)
        if t.compile:
            model = torch.compile(model)
        # The loader is prepared too: Accelerate moves batches to the device and, with several
        # processes, gives each its own share of every epoch's batches.
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        batches_per_epoch = len(train_loader)
        steps_per_epoch = max(1, math.ceil(batches_per_epoch / t.grad_accum))
        total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        # Not prepared: Accelerate would step it once per process; we step it once per optimizer step.
        scheduler = _make_scheduler(optimizer, cfg, total_steps)

        state = TrainState()
        if resume and ckpt.latest(out) is not None:
            state = ckpt.load_latest(out, accelerator.unwrap_model(model), optimizer, scheduler)
            logger = JsonlLog(out / "log.jsonl", keep_up_to_step=state.step)
        else:  # a new run, or one killed before its first checkpoint: step 0, as a new run would
            logger = JsonlLog(out / "log.jsonl")

        def run_eval() -> dict[str, Any]:
            acc, loss = accuracy_and_loss(
                accelerator.unwrap_model(model), enc_eval, t.eval_batch_size, collate, device, precision
            )
            record = {"step": state.step, "epoch": round(state.step / steps_per_epoch, 4), "eval_accuracy": acc, "eval_loss": loss}
            state.history.append(record)
            logger.write(record)
            trackers.log(record, state.step)  # trackers hook (issue 18)
            if acc > state.best_eval_accuracy:
                state.best_eval_accuracy, state.best_step = acc, state.step
                state.evals_without_improvement = 0
                save_adapter(accelerator.unwrap_model(model), tokenizer, cfg, label_names, out / "adapter")
            else:
                state.evals_without_improvement += 1
            return record

        # trackers hook (issue 18): open them once the model, its budget and the resume step are known
        trackers.start(cfg.to_dict(), measured.as_dict(), resume_step=state.step if resume else None)
        # 4. The loop.
        log.info(
            "training %s: %d rows, %d steps, %s, %d trainable params (%s)",
            cfg.model.model, len(enc_train.input_ids), total_steps, precision, measured.total, measured.describe(),
        )
        stop.install()
        bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
        eval_acc = state.best_eval_accuracy if state.best_eval_accuracy >= 0 else float("nan")
        done = state.step >= total_steps
        while not done:
            sampler.set_epoch(state.epoch)
            if hasattr(train_loader, "set_epoch"):  # Accelerate re-sets the sampler's epoch from its own counter
                train_loader.set_epoch(state.epoch)
            model.train()
            tick = time.perf_counter()
            # A resumed run skips the micro-batches of this epoch it already trained on.
            loader = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch else train_loader
            for batch in loader:
                labels = batch.pop("labels")
                teacher_logits = batch.pop("teacher_logits", None)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        logits = model(**batch).logits
                    loss = _loss_fn(logits, labels, t, teacher_logits)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(diverged_message(out, state.step + 1, f"the loss is {loss.item()}", t.lr))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()  # a no-op on accumulation micro-batches (Accelerate)
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                n = labels.numel()
                state.samples_seen += n
                state.tokens_seen += int(batch["attention_mask"].sum())
                state.window_loss_sum += loss.item() * n
                state.window_correct += int((logits.argmax(-1) == labels).sum())
                state.window_seen += n
                if not accelerator.sync_gradients:
                    continue

                state.step += 1
                state.train_seconds += time.perf_counter() - tick
                bar.update(1)
                if state.step % t.log_every == 0 or state.step == total_steps:
                    record = {
                        "step": state.step,
                        "epoch": round(state.step / steps_per_epoch, 4),
                        "loss": state.window_loss_sum / max(state.window_seen, 1),
                        "train_accuracy": state.window_correct / max(state.window_seen, 1),
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
                    }
                    logger.write(record)
                    trackers.log(record, state.step)  # trackers hook (issue 18)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['train_accuracy']:.3f}",
                                    val=f"{eval_acc:.3f}", sps=f"{record['samples_per_second']:.1f}")
                    state.window_loss_sum, state.window_correct, state.window_seen = 0.0, 0, 0
                end_of_epoch = state.batch_in_epoch >= batches_per_epoch
                if (t.eval_every and state.step % t.eval_every == 0) or end_of_epoch or state.step >= total_steps:
                    eval_acc = run_eval()["eval_accuracy"]
                    if on_eval is not None:
                        on_eval(state.step, eval_acc)  # may raise, e.g. optuna.TrialPruned
                    model.train()
                    if t.patience and state.evals_without_improvement >= t.patience:
                        state.stopped_early = True
                ckpt.maybe_save(out, state, accelerator.unwrap_model(model), optimizer, scheduler, cfg,
                                end_of_epoch=end_of_epoch, force=bool(stop.requested))
                if stop.requested:
                    raise TrainingInterrupted(
                        f"stopped by {stop.requested} at step {state.step}; a checkpoint is saved: "
                        f"budgetlora train --resume {out}"
                    )
                if state.step >= total_steps or state.stopped_early:
                    done = True
                    break
                tick = time.perf_counter()
            if state.batch_in_epoch >= batches_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
        bar.close()
        stop.uninstall()

        # 5. Results.
        metrics = {
            "finished": True,
            "model": cfg.model.model,
            "head": cfg.model.head,
            "trainable_params": measured.total,
            "total_params": total_params,
            "budget": cfg.budget,
            "budget_breakdown": measured.as_dict(),
            "best_eval_accuracy": state.best_eval_accuracy,
            "best_step": state.best_step,
            "final_eval_accuracy": state.history[-1]["eval_accuracy"] if state.history else None,
            "steps": state.step,
            "epochs_completed": round(state.step / steps_per_epoch, 4),
            "stopped_early": state.stopped_early,
            "train_rows": len(enc_train.input_ids),
            "eval_rows": len(enc_eval.input_ids),
            "label_names": label_names,
            "train_samples": state.samples_seen,
            "train_samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
            "train_tokens_per_second": state.tokens_seen / max(state.train_seconds, 1e-9),
            "train_runtime_s": state.train_seconds,
            "precision": precision,
            "device": str(device),
            "machine": machine_description(),
            "seed": t.seed,
            "command": command or f"budgetlora train --config {out / 'config.yaml'}",
        }
        _write_outputs(out, cfg, metrics, state.history)
        return metrics
    except torch.cuda.OutOfMemoryError:  # the step, the evaluation or the model's move to the GPU
        raise UserError(oom_message(t.batch_size, t.grad_accum, t.eval_batch_size)) from None
    finally:
        if bar is not None:
            bar.close()  # ends the progress line, so an error message starts a line of its own
        stop.uninstall()
        trackers.finish()  # trackers hook (issue 18)
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run refused before writing anything leaves no empty folder behind


def _write_outputs(out: Path, cfg: RunConfig, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
    from budgetlora.core.plots import plot_curves
    from budgetlora.training.card import write_model_card

    atomic_write_json(out / "metrics.json", metrics)
    try:
        plot_curves(out / "log.jsonl", out / "curves.png")
    except Exception as e:  # a plot must never cost the user a finished run
        log.warning("could not draw curves.png: %s", e)
    write_model_card(out, cfg, metrics)


def train_from_cli(
    recipe: Optional[str], overrides: dict[str, Any], resume: Optional[str] = None, argv: Sequence[str] = ()
) -> dict[str, Any]:
    """`budgetlora train`: defaults < recipe < flags; `--resume DIR` needs nothing else."""
    _setup_logging()
    command = "budgetlora " + shlex.join(["train", *argv])
    if resume:
        cfg_path = Path(resume) / "config.yaml"
        if not cfg_path.is_file():
            raise UserError(f"{resume}: nothing to resume (no config.yaml); is this a budgetlora run folder?")
        cfg = load_config(cfg_path, {**overrides, "output_dir": resume})
        return _report(train(cfg, command=command, resume=True))
    cfg = load_config(recipe, overrides)
    return _report(train(cfg, command=command))


def _report(metrics: dict[str, Any]) -> dict[str, Any]:
    print(
        f"best validation accuracy {metrics['best_eval_accuracy']:.4f} (step {metrics['best_step']}), "
        f"{metrics['trainable_params']:,} trainable params < budget {metrics['budget']:,}, "
        f"{metrics['train_samples_per_second']:.1f} samples/s"
    )
    return metrics


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Offline, the Hub client logs every retry; our own one-line error says what happened.
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
