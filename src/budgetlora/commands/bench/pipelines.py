"""The two pipelines `budgetlora bench` puts side by side; each runs in a worker process of its own.

(a) `reference_pipeline`: written the way the seed notebooks do it. pandas -> `datasets.Dataset`
    -> `tokenizer(..., padding="max_length", max_length=128)`, `AutoModelForSequenceClassification`
    + `peft.get_peft_model(LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
    bias="lora_only", task_type=SEQ_CLS))`, HF `Trainer` (batch 32, lr 1e-4, linear decay after a
    10% warm-up, weight decay 0.01, fp16 on GPU / fp32 on CPU, one epoch, no saving), then
    `trainer.evaluate()` on the validation rows (eval batch 32).
(b) `budgetlora_pipeline`: `budgetlora.training.trainer.train()` with budgetlora's DEFAULT settings; only the
    model, the rows (files), one epoch, the seed and the output folder are set. Its validation
    figure is the end-of-epoch evaluation; its eval speed is the WHOLE `budgetlora predict` command
    on the validation texts (`python -m budgetlora.cli predict ...`, start-up included).

What is timed. Training throughput = samples (or tokens) / seconds inside the training loop only:
model loading, tokenization, evaluation and saving are outside the clock in both pipelines
(reference: from `on_train_begin` to `on_train_end` of the Trainer, i.e. what `trainer.train()`
reports as train_runtime; budgetlora: its own `train_runtime_s`, the same span).
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from budgetlora.commands.bench.flops import model_shape, shape_flops
from budgetlora.commands.bench.processes import log_tail, parse_texts_per_s, peak_rss_mb, run_child
from budgetlora.commands.bench.rows import PathLike, ensure_files, read_rows
from budgetlora.config import DEFAULT_BUDGET
from budgetlora.errors import UserError

# The seed notebooks' settings, in one place.
REF_MAX_LENGTH = 128
REF_BATCH = 32
REF_EVAL_BATCH = 32
REF_LR = 1e-4
REF_WARMUP = 0.1  # transformers 5: `warmup_steps` < 1 is a ratio (it replaced `warmup_ratio`)
REF_WEIGHT_DECAY = 0.01
REF_LORA = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], bias="lora_only")


def _peak_gpu_mb() -> Optional[float]:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _reset_peak_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------------------------------------
# (a) the seed notebooks' pipeline
# ---------------------------------------------------------------------------------------------


@dataclass
class ReferenceSetup:
    """What the notebook pipeline builds before its training loop."""

    train_df: Any  # pandas DataFrames of the carved rows
    val_df: Any
    train_ds: Any  # the tokenized `datasets.Dataset`s
    val_ds: Any
    peft_model: Any
    trainer: Any
    clock: Any  # its LoopClock callback
    trainable: int
    total: int


@dataclass
class ReferenceRun:
    """The notebook pipeline's training and evaluation, and what they cost."""

    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]
    loop_s: float
    setup_s: float
    peak_rss_mb: float
    peak_gpu_mb: Optional[float]


def _loop_clock() -> Any:
    """A Trainer callback that times the training loop alone (on_train_begin .. on_train_end)."""
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        begin = end = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    return LoopClock()


def _accuracy(eval_pred) -> dict[str, float]:
    import numpy as np

    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _reference_args(out_dir: Path, seed: int, gpu: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir / "reference-trainer"),
        per_device_train_batch_size=REF_BATCH,
        per_device_eval_batch_size=REF_EVAL_BATCH,
        learning_rate=REF_LR,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        warmup_steps=REF_WARMUP,
        weight_decay=REF_WEIGHT_DECAY,
        fp16=gpu,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        seed=seed,
    )


def _reference_setup(model: str, train_csv: Path, val_csv: Path, samples: int, eval_rows: int, seed: int,
                     out_dir: Path, gpu: bool) -> ReferenceSetup:
    """Rows, tokenization, model and Trainer, as the notebooks build them."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, set_seed

    set_seed(seed)
    train_df = read_rows(train_csv, samples)
    val_df = read_rows(val_csv, eval_rows)
    num_labels = int(max(train_df["label"].max(), val_df["label"].max())) + 1

    tokenizer = AutoTokenizer.from_pretrained(model)

    def tokenize(batch):
        return tokenizer(batch["text"], padding="max_length", truncation=True, max_length=REF_MAX_LENGTH)

    train_ds = Dataset.from_pandas(train_df).map(tokenize, batched=True, remove_columns=["text"])
    val_ds = Dataset.from_pandas(val_df).map(tokenize, batched=True, remove_columns=["text"])

    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=num_labels)
    peft_model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, **REF_LORA))
    trainable, total = peft_model.get_nb_trainable_parameters()
    clock = _loop_clock()
    trainer = Trainer(
        model=peft_model, args=_reference_args(out_dir, seed, gpu), train_dataset=train_ds, eval_dataset=val_ds,
        compute_metrics=_accuracy, callbacks=[clock],
    )
    return ReferenceSetup(train_df, val_df, train_ds, val_ds, peft_model, trainer, clock, int(trainable), int(total))


def reference_pipeline(
    model: str, train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: PathLike,
    *, eval_file: Optional[PathLike] = None,
) -> dict[str, Any]:
    """HF Trainer + PEFT as in the seed notebooks; runs in this process. `train_file`/`eval_file`
    are carved files (class, text); without `eval_file` the rows are carved here first."""
    import torch

    from budgetlora.core.hub import quiet_transformers

    quiet_transformers()
    out_dir = Path(out_dir)
    train_csv, val_csv = ensure_files(train_file, samples, eval_rows, seed, out_dir, eval_file)
    gpu = torch.cuda.is_available()
    setup_start = time.perf_counter()
    s = _reference_setup(model, train_csv, val_csv, samples, eval_rows, seed, out_dir, gpu)
    setup_s = time.perf_counter() - setup_start
    _reset_peak_gpu()
    train_out = s.trainer.train()
    loop_s = s.clock.end - s.clock.begin
    ev = s.trainer.evaluate()
    done = time.time()  # the notebook holds its final accuracy now (time to accuracy, bench.tta)
    run = ReferenceRun(train_out.metrics, ev, loop_s, setup_s, peak_rss_mb(), _peak_gpu_mb())
    return {**_reference_result(s, run, gpu), "eval_done_wall_time": done}


def _reference_result(s: ReferenceSetup, run: ReferenceRun, gpu: bool) -> dict[str, Any]:
    import torch

    shape = model_shape(s.peft_model)
    train_len = [int(sum(m)) for m in s.train_ds["attention_mask"]]
    val_len = [int(sum(m)) for m in s.val_ds["attention_mask"]]
    n_train, loop_s = len(s.train_df), run.loop_s
    eval_s = float(run.eval_metrics["eval_runtime"])
    return {
        "pipeline": "reference",
        "what": "HF Trainer + PEFT LoRA as in the seed notebooks: padding=max_length 128, batch 32, "
                "lr 1e-4 linear with 10% warm-up, r=8 alpha=16 query/value bias=lora_only, "
                f"{'fp16' if gpu else 'fp32'}",
        "precision": "fp16" if gpu else "fp32",
        "attention": s.peft_model.config._attn_implementation,
        "encoder_dropout": getattr(s.peft_model.config, "hidden_dropout_prob", None),
        "trainable_params": s.trainable,
        "total_params": s.total,
        "under_budget": s.trainable < DEFAULT_BUDGET,
        **shape,
        "train_rows": n_train,
        "train_samples": int(round(n_train * float(run.train_metrics.get("epoch", 1.0)))),
        "train_runtime_s": loop_s,
        "trainer_train_runtime_s": float(run.train_metrics["train_runtime"]),
        "train_samples_per_second": n_train / loop_s,
        "train_real_tokens": sum(train_len),
        "train_executed_tokens": n_train * REF_MAX_LENGTH,
        "train_tokens_per_second": sum(train_len) / loop_s,
        "train_executed_tokens_per_second": n_train * REF_MAX_LENGTH / loop_s,
        "train_useful_flops": shape_flops(train_len, shape),
        "final_train_loss": float(run.train_metrics.get("train_loss", float("nan"))),
        "eval_rows": len(s.val_df),
        "eval_accuracy": float(run.eval_metrics["eval_accuracy"]),
        "eval_runtime_s": eval_s,
        "eval_samples_per_second": len(s.val_df) / eval_s,
        "eval_timed": "trainer.evaluate() loop (batch 32, rows already tokenized)",
        "eval_real_tokens": sum(val_len),
        "eval_useful_flops": shape_flops(val_len, shape, training=False),
        "setup_s": run.setup_s,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": run.peak_rss_mb,
        "peak_gpu_allocated_mb": run.peak_gpu_mb,
    }


# ---------------------------------------------------------------------------------------------
# (b) budgetlora's default pipeline
# ---------------------------------------------------------------------------------------------


@dataclass
class BudgetloraTraining:
    """budgetlora's training run: its settings, its metrics and its memory peaks."""

    cfg: Any  # the RunConfig it trained with
    metrics: dict[str, Any]
    peak_rss_mb: float
    peak_gpu_mb: Optional[float]


@dataclass
class TokenCounts:
    """Real token lengths of the rows, the padded tokens the loop ran, and the model's shape:
    what the FLOP count needs, computed outside the clock."""

    train_lengths: list[int]
    val_lengths: list[int]
    executed: Optional[int]  # None where the loop's batches cannot be replayed
    shape: dict[str, int]


@dataclass
class PredictTiming:
    """One whole `budgetlora predict` command, timed from outside."""

    labels: list[int]
    seconds: float
    accuracy: float
    peak_rss_mb: Optional[float]
    in_process_samples_per_second: Optional[float]


def _budgetlora_train(model: str, train_csv: Path, val_csv: Path, seed: int, run_dir: Path) -> BudgetloraTraining:
    from budgetlora.config import load_config
    from budgetlora.training.trainer import train

    if run_dir.exists():
        shutil.rmtree(run_dir)
    _reset_peak_gpu()
    cfg = load_config(None, {
        "model": model, "train_file": str(train_csv), "eval_file": str(val_csv),
        "epochs": 1, "seed": seed, "output_dir": str(run_dir),
    })
    metrics = train(cfg, command="budgetlora bench (budgetlora pipeline)")
    peak_gpu = _peak_gpu_mb()
    peak_rss = peak_rss_mb()  # here: the FLOP bookkeeping after training builds a second model
    return BudgetloraTraining(cfg, metrics, peak_rss, peak_gpu)


def _budgetlora_tokens(trained: BudgetloraTraining, model: str, train_df: Any, val_df: Any) -> TokenCounts:
    """The rows' token lengths as budgetlora encodes them, the padded tokens its loop ran (its
    sampler's batches are a pure function of seed and epoch) and the trained model's shape."""
    from budgetlora.data import encode, train_batch_sampler
    from budgetlora.core.hub import load_hf_config, load_tokenizer
    from budgetlora.modeling import add_lora, build_classifier_from_config

    cfg, t = trained.cfg, trained.cfg.train
    tokenizer = load_tokenizer(model)
    train_len = encode(list(train_df["text"]), tokenizer, cfg.data.max_length).lengths
    val_len = encode(list(val_df["text"]), tokenizer, cfg.data.max_length).lengths
    executed = None
    try:
        sampler = train_batch_sampler(train_len, t.batch_size, seed=t.seed, group_by_length=t.group_by_length)
        executed = sum(len(b) * max(train_len[i] for i in b) for b in sampler.batches(0))
    except Exception:  # the loop's batching changed: leave it unknown rather than guess
        pass
    names = trained.metrics.label_names
    hf_config = load_hf_config(cfg.model, len(names), names)
    shape = model_shape(add_lora(build_classifier_from_config(cfg.model, hf_config), cfg))
    return TokenCounts(train_len, val_len, executed, shape)


def _timed_predict(run_dir: Path, val_csv: Path, out_dir: Path, truth: list[int], name: str,
                   extra: list[str]) -> PredictTiming:
    """`budgetlora predict`, the whole command, in a fresh process (start-up included)."""
    preds = out_dir / f"budgetlora-predictions{name}.csv"
    cmd = [sys.executable, "-m", "budgetlora.cli", "predict", "--run", str(run_dir), "--input", str(val_csv),
           "--output", str(preds), "--overwrite", *extra]
    predict_log = out_dir / f"budgetlora-predict{name}.log"
    with open(predict_log, "w", encoding="utf-8") as log_f:
        start = time.perf_counter()
        rc, rss = run_child(cmd, log_f)
        seconds = time.perf_counter() - start
    if rc != 0:
        raise UserError(f"bench: `budgetlora predict{' ' + ' '.join(extra) if extra else ''}` failed "
                        f"(exit {rc}): {log_tail(predict_log)}")
    with open(preds, newline="", encoding="utf-8") as f:
        labels = [int(r["Label"]) for r in csv.DictReader(f)]
    acc = sum(int(p == y) for p, y in zip(labels, truth)) / max(len(truth), 1)
    return PredictTiming(labels, seconds, acc, rss, parse_texts_per_s(predict_log))


def budgetlora_pipeline(
    model: str, train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: PathLike,
    *, eval_file: Optional[PathLike] = None,
) -> dict[str, Any]:
    """`budgetlora.training.trainer.train()` with default settings, then the whole `budgetlora predict`
    command on the validation texts, timed from outside (start-up included)."""
    out_dir = Path(out_dir)
    train_csv, val_csv = ensure_files(train_file, samples, eval_rows, seed, out_dir, eval_file)
    run_dir = out_dir / "budgetlora-run"
    trained = _budgetlora_train(model, train_csv, val_csv, seed, run_dir)
    train_df = read_rows(train_csv, samples)
    val_df = read_rows(val_csv, eval_rows)
    tokens = _budgetlora_tokens(trained, model, train_df, val_df)
    # The default (bf16 where the hardware has it) and the int8 option.
    truth = list(val_df["label"])
    plain = _timed_predict(run_dir, val_csv, out_dir, truth, "", [])
    int8 = _timed_predict(run_dir, val_csv, out_dir, truth, "-int8", ["--quantize"])
    return _budgetlora_result(trained, tokens, plain, int8, run_dir)


def _budgetlora_result(trained: BudgetloraTraining, tokens: TokenCounts, plain: PredictTiming,
                       int8: PredictTiming, run_dir: Path) -> dict[str, Any]:
    import torch

    from budgetlora.modeling import resolve_attn_implementation

    m, cfg, shape = trained.metrics, trained.cfg, tokens.shape
    secs = float(m.train_runtime_s)
    executed = tokens.executed
    return {
        "pipeline": "budgetlora",
        "what": "budgetlora train with default settings (model, rows, epochs=1, seed, output dir set), "
                "then `budgetlora predict` on the validation texts",
        "precision": m.precision,
        "attention": resolve_attn_implementation(cfg.model.attn_implementation),
        "encoder_dropout": cfg.model.encoder_dropout,
        "trainable_params": int(m.trainable_params),
        "total_params": int(m.total_params),
        "under_budget": int(m.trainable_params) < DEFAULT_BUDGET,
        "budget_breakdown": m.budget_breakdown,
        **shape,
        "train_rows": int(m.train_rows),
        "train_samples": int(m.train_samples),
        "train_runtime_s": secs,
        "train_samples_per_second": float(m.train_samples_per_second),
        "train_real_tokens": sum(tokens.train_lengths),
        "train_executed_tokens": executed,
        "train_tokens_per_second": float(m.train_tokens_per_second),
        "train_executed_tokens_per_second": executed / secs if executed else None,
        "train_useful_flops": shape_flops(tokens.train_lengths, shape),
        "eval_rows": len(tokens.val_lengths),
        "eval_accuracy": float(m.final_eval_accuracy),
        "best_eval_accuracy": float(m.best_eval_accuracy),
        "eval_runtime_s": plain.seconds,
        "eval_samples_per_second": len(plain.labels) / plain.seconds,
        "eval_timed": "whole `budgetlora predict` command (python start-up, imports, model load, tokenization, "
                      "inference, CSV written)",
        "predict_accuracy": plain.accuracy,
        "predict_in_process_samples_per_second": plain.in_process_samples_per_second,
        "predict_int8_samples_per_second": len(int8.labels) / int8.seconds,
        "predict_int8_accuracy": int8.accuracy,
        "predict_int8_in_process_samples_per_second": int8.in_process_samples_per_second,
        "predict_peak_rss_mb": plain.peak_rss_mb,
        "eval_real_tokens": sum(tokens.val_lengths),
        "eval_useful_flops": shape_flops(tokens.val_lengths, shape, training=False),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": trained.peak_rss_mb,
        "peak_gpu_allocated_mb": trained.peak_gpu_mb,
        "run_dir": str(run_dir),
    }
