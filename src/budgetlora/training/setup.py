"""Everything the loop needs, built once before the first step. Each `setup_*` function takes only
the settings it uses and returns a typed record:

- `check_budget_first`: the model config alone: settings left unset chosen for the budget
  (budget.defaults), the budget counted before any weights load;
- `setup_data`: the splits, tokenized once (cached), the teacher's logits for distillation;
- `setup_model`: the pretrained encoder with its head and adapters, counted again, measured;
- `setup_engine`: Accelerate, precision, loader, optimizer and schedule.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from budgetlora import budget as budget_mod
from budgetlora.budget.defaults import Choice, Unset, choose_defaults
from budgetlora.config import RunConfig, TrainConfig, resolved_method
from budgetlora.core.device import resolve_precision
from budgetlora.core.distributed import Processes
from budgetlora.core.hub import load_hf_config, load_tokenizer
from budgetlora.data import Collator, Encoded, EncodedDataset, ShardedBatchSampler, encode, length_filter_indices, prepare_splits, train_batch_sampler
from budgetlora.modeling import (
    TrainingHooks, add_lora, build_classifier, check_tokenizer_matches, head_module_names, training_hooks,
)
from budgetlora.training.distill import training_targets

log = logging.getLogger(__name__)


@dataclass
class BudgetCheck:
    """The model config and the trainable parameters counted from it, before any weights load;
    `cfg` is the run's settings with those left unset chosen (`choice`, None when none were)."""

    cfg: RunConfig
    choice: Optional[Choice]
    label_names: list[str]
    tokenizer: Any
    hf_config: Any
    estimated: budget_mod.Breakdown
    splits: Any  # data.Splits, kept for setup_data


def check_budget_first(cfg: RunConfig, unset: Unset = Unset()) -> BudgetCheck:
    """Read the data and the model config; choose the settings left `unset` for this model, its
    labels and the budget; refuse an over-budget configuration before anything expensive
    (tokenizing, loading weights) happens."""
    splits = prepare_splits(cfg.data, cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model.model, cfg.model.trust_remote_code)
    hf_config = load_hf_config(cfg.model, len(splits.label_names), splits.label_names)
    check_tokenizer_matches(tokenizer, hf_config, cfg.model.model)
    cfg, choice = choose_defaults(cfg, hf_config, len(splits.label_names), unset)
    estimated = budget_mod.estimate(cfg, hf_config, len(splits.label_names))
    budget_mod.check_budget(estimated, cfg.budget, resolved_method(cfg))
    return BudgetCheck(cfg, choice, splits.label_names, tokenizer, hf_config, estimated, splits)


@dataclass
class PreparedData:
    train: Encoded
    eval: Encoded
    teacher: Optional[torch.Tensor]  # the teacher's logits per training row (distillation)
    pad_id: int


def setup_data(cfg: RunConfig, checked: BudgetCheck, cache_dir: Path, procs: Processes = Processes()) -> PreparedData:
    """The main process tokenizes first and fills the cache; the others then read it and never
    write into the run folder."""
    return procs.main_first(lambda: _prepare_data(cfg, checked, cache_dir, write_cache=True),
                            lambda: _prepare_data(cfg, checked, cache_dir, write_cache=False))


def _prepare_data(cfg: RunConfig, checked: BudgetCheck, cache_dir: Path, write_cache: bool) -> PreparedData:
    tok, splits, max_length = checked.tokenizer, checked.splits, cfg.data.max_length
    enc_train = encode(splits.train.texts, tok, max_length, labels=splits.train.labels, cache_dir=cache_dir,
                       write_cache=write_cache)
    enc_eval = encode(splits.eval.texts, tok, max_length, labels=splits.eval.labels, cache_dir=cache_dir,
                      write_cache=write_cache)
    teacher = None
    if cfg.train.teacher:  # distillation: the teacher's logits on every training row, computed once
        teacher = training_targets(cfg, splits.train.texts, enc_train, tok, checked.label_names, cache_dir)
    if cfg.data.length_filter:
        keep = length_filter_indices(enc_train.lengths, *cfg.data.length_filter)
        if write_cache:  # said once, by the main process
            log.info("length filter kept %d of %d training rows", len(keep), len(enc_train.input_ids))
        enc_train = type(enc_train)([enc_train.input_ids[i] for i in keep], [enc_train.labels[i] for i in keep])
        teacher = teacher[keep] if teacher is not None else None
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    return PreparedData(enc_train, enc_eval, teacher, pad_id)


@dataclass
class PreparedModel:
    model: torch.nn.Module
    measured: budget_mod.Breakdown
    total_params: int


def setup_model(cfg: RunConfig, checked: BudgetCheck) -> PreparedModel:
    """Encoder + head + adapters; the budget counted again on the real model, which wins."""
    base = build_classifier(cfg.model, len(checked.label_names), checked.label_names, hf_config=checked.hf_config)
    model = add_lora(base, cfg)
    measured = budget_mod.count_trainable(model)
    budget_mod.check_budget(measured, cfg.budget, resolved_method(cfg))
    if measured.total != checked.estimated.total:
        log.warning("planned %d trainable parameters, measured %d; the measured count is used",
                    checked.estimated.total, measured.total)
    return PreparedModel(model, measured, sum(p.numel() for p in model.parameters()))


@dataclass
class Engine:
    """The prepared training objects and the schedule's sizes."""

    accelerator: Any
    precision: str
    model: torch.nn.Module  # wrapped by Accelerate (DDP where several processes train)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    sampler: Any
    collate: Collator
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)


def setup_engine(t: TrainConfig, model: torch.nn.Module, data: PreparedData,
                 procs: Processes = Processes()) -> Engine:
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()  # as Processes.start: the same process-wide state
    precision = resolve_precision(t.precision, PartialState(cpu=cpu).device)
    # Accelerate keeps its settings in a process-wide singleton; train() is a library function
    # that may run several times in one process with different precisions, so start afresh.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=cpu,
                              gradient_accumulation_steps=t.grad_accum, **_parallel_options(t, procs))
    collate = Collator(data.pad_id)
    sampler = train_batch_sampler(data.train.lengths, t.batch_size, seed=t.seed, group_by_length=t.group_by_length)
    extra = {"teacher_logits": data.teacher} if data.teacher is not None else None
    # Several processes: each takes its piece of every batch (ShardedBatchSampler), so the steps
    # are the ones a single process would take; the loader is then left unprepared, since
    # Accelerate's own sharding deals whole batches out (or drops a short one when it splits).
    batch_sampler = ShardedBatchSampler(sampler, procs.rank, procs.world_size) if procs.several else sampler
    loader = torch.utils.data.DataLoader(
        EncodedDataset(data.train, extra), batch_sampler=batch_sampler, collate_fn=collate,
        num_workers=t.num_workers,
        generator=torch.Generator().manual_seed(t.seed),  # a loader draws a seed from it, not from the global RNG
    )
    optimizer = make_optimizer(model, t, accelerator.device)
    if t.compile:
        model = torch.compile(model)
    if procs.several:
        model, optimizer = accelerator.prepare(model, optimizer)
    else:  # the loader too: Accelerate then moves its batches to the device
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches_per_epoch = len(loader)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / t.grad_accum))
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    # Not prepared: Accelerate would step it once per process; we step it once per optimizer step.
    scheduler = make_scheduler(optimizer, t, total_steps)
    return Engine(accelerator, precision, model, optimizer, scheduler, loader, sampler, collate,
                  batches_per_epoch, steps_per_epoch, total_steps)


def setup_hooks(cfg: RunConfig, model: torch.nn.Module, total_steps: int) -> TrainingHooks:
    """The per-step work of the run's method (AdaLoRA's rank schedule follows the run's steps)."""
    return training_hooks(model, cfg, total_steps)


def _parallel_options(t: TrainConfig, procs: Processes) -> dict[str, Any]:
    """DDP is told that some trainable parameters may get no gradient in a step (a head module
    peft keeps but the forward skips); without it such a model stops with a reduction error in
    its second step. The price is one walk of the autograd graph per step."""
    if not procs.several:
        return {}
    from accelerate.utils import DistributedDataParallelKwargs

    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]}


def param_groups(model: torch.nn.Module, t: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the head at head_lr, everything else that trains (any method's adapter,
    biases, modules_to_train) at lr; LoRA+ gives B its own learning rate; no weight decay on
    biases, norms, DoRA magnitudes or IA3 scales."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    heads = set(head_module_names(base))
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # base_model.model.X in a peft tuner model, base_model.X with prompt learning
        in_head = name.removeprefix("base_model.model.").removeprefix("base_model.").split(".")[0] in heads
        if "lora_B" in name:
            lr = t.lr * t.lora_plus_ratio
        elif in_head:
            lr = t.head_lr if t.head_lr is not None else t.lr
        else:
            lr = t.lr
        # IA3's scales start at 1 and are (n, 1) matrices: decay would pull them towards switching
        # the activations off.
        no_decay = p.ndim < 2 or "norm" in name.lower() or "magnitude" in name or "ia3_l" in name
        groups.setdefault((lr, 0.0 if no_decay else t.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def make_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, t)
    # fused AdamW runs the whole update in one kernel; it exists for CUDA and, in recent torch, CPU.
    for fused in (True, False):
        try:
            return torch.optim.AdamW(groups, lr=t.lr, fused=fused if device.type in ("cuda", "cpu") else None)
        except (RuntimeError, TypeError, ValueError):
            continue
    return torch.optim.AdamW(groups, lr=t.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(t.schedule, t.schedule)
    warmup = int(round(t.warmup_fraction * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
