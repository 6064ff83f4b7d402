"""`budgetlora bench`: the seed notebooks' pipeline and budgetlora's, side by side (issue #4).

Both pipelines see the same model, the same training rows, the same validation rows and a
trainable-parameter budget of the same class (< 1,000,000), on the same machine, one after the
other, each in its own Python process (so peak memory is per pipeline and no warm cache is shared):

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

Useful FLOPs (`model_flops`): per real (non-pad) token, forward 2N + backward-to-activations 2N
+ weight gradients 2N_trainable, N = non-embedding parameters of the model as trained (frozen base
+ LoRA + head); plus attention, 4*L*H*t FLOPs per token forward (QK^T and AV over the t real tokens
of its row) and twice that backward. Inference counts 2N + 4*L*H*t. Padded tokens do no useful
work: the reference's executed (padded) tokens are reported beside its real ones. The shares of
the machine's limit divide useful FLOP/s by the best of repeated large bf16 and fp32 matmuls
measured here (`measure_matmul_peak`); on a GPU this is model-FLOPs utilisation.

`--repeats N` runs the pair N times, the order alternating, and reports the medians of the paired
ratios (`combine_pairs`), for a machine whose speed drifts between one pipeline's minutes and the
next's; every pair stays in the report.

`--sweep` times budgetlora's training loop on synthetic rows of exactly T tokens for several T
and row counts and draws how time grows with tokens (bench_scaling.png + bench_scaling.md).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from budgetlora.errors import UserError

PathLike = Union[str, Path]

# The seed notebooks' settings, in one place.
REF_MAX_LENGTH = 128
REF_BATCH = 32
REF_EVAL_BATCH = 32
REF_LR = 1e-4
REF_WARMUP = 0.1  # transformers 5: `warmup_steps` < 1 is a ratio (it replaced `warmup_ratio`)
REF_WEIGHT_DECAY = 0.01
REF_LORA = dict(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"], bias="lora_only")
BUDGET = 1_000_000  # both pipelines must stay strictly under it (budgetlora's default budget)

PIPELINES = ("reference", "budgetlora")


# ---------------------------------------------------------------------------------------------
# FLOPs and the machine's limit
# ---------------------------------------------------------------------------------------------


def model_flops(
    lengths: Sequence[int],
    *,
    n_params: int,
    n_layers: int,
    hidden: int,
    n_trainable: int = 0,
    training: bool = True,
    first_token_only_params: int = 0,
    first_query_layers: int = 0,
) -> float:
    """Useful FLOPs to process rows of these real token lengths once.

    Per token: forward 2N, backward to activations 2N, weight gradients 2N_trainable (training
    only); attention 4*L*H*t forward per token of a row with t tokens (QK^T: 2tH, AV: 2tH per
    layer), 8*L*H*t backward. Summed over a row of t tokens the attention term is c*L*H*t^2.
    `first_token_only_params` run on one token per row (`first_token_last_layer`): the other
    tokens do not spend their 2 (forward) or 4 (training) FLOPs per parameter there, and in
    `first_query_layers` the attention term of a row is c*H*t (one query) instead of c*H*t^2.
    """
    tokens = sum(int(t) for t in lengths)
    squares = sum(int(t) * int(t) for t in lengths)
    if training:
        dense = 4 * n_params + 2 * n_trainable
        attn = 12 * n_layers * hidden
    else:
        dense = 2 * n_params
        attn = 4 * n_layers * hidden
    skipped = (4 if training else 2) * first_token_only_params * (tokens - len(lengths))
    skipped += attn // n_layers * first_query_layers * (squares - tokens) if n_layers else 0
    return float(dense * tokens + attn * squares - skipped)


def shape_flops(lengths: Sequence[int], shape: dict[str, int], training: bool = True) -> float:
    """`model_flops` for a model described by `model_shape`."""
    return model_flops(lengths, n_params=shape["non_embedding_params"], n_layers=shape["layers"],
                       hidden=shape["hidden"], n_trainable=shape["trainable_non_embedding_params"],
                       training=training, first_token_only_params=shape["first_token_only_params"],
                       first_query_layers=shape["first_query_layers"])


def model_shape(model: Any) -> dict[str, int]:
    """N (non-embedding parameters), trainable ones, LoRA ones, those run on the first token only,
    layers and hidden size of a model."""
    from budgetlora.modeling import first_query_layers, first_token_only_params

    n_params = n_trainable = n_lora = n_embed = 0
    for name, p in model.named_parameters():
        if ".original_module." in name:  # peft's frozen spare copy of a modules_to_save head: never run
            continue
        k = p.numel()
        if "embeddings." in name and "lora_" not in name:
            n_embed += k
            continue
        n_params += k
        if p.requires_grad:
            n_trainable += k
        if "lora_" in name:
            n_lora += k
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None) or 0
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or 0
    return {
        "non_embedding_params": n_params,
        "trainable_non_embedding_params": n_trainable,
        "lora_params": n_lora,
        "embedding_params": n_embed,
        "first_token_only_params": first_token_only_params(model),
        "first_query_layers": first_query_layers(model),
        "layers": int(layers),
        "hidden": int(hidden),
    }


def measure_matmul_peak(dtype: Any = "bfloat16", n: int = 2048, device: Any = None, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` on `device` (2n^3 FLOPs each), after warm-up."""
    import torch

    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dt)
    b = torch.randn(n, n, generator=g).to(dev, dt)
    out = torch.empty(n, n, device=dev, dtype=dt)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(2):
        torch.matmul(a, b, out=out)
    sync()
    best = float("inf")
    spent, reps = 0.0, 0
    while reps < 3 or (spent < seconds and reps < 200):
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync()
        dt_s = time.perf_counter() - t0
        best = min(best, dt_s)
        spent += dt_s
        reps += 1
    return 2.0 * n**3 / best


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    flags = []
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        flags.append("AVX512-BF16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        flags.append("AMX")
    cpu = _cpu_model() or platform.machine()
    return f"{os.cpu_count()}-core {cpu} CPU{', ' + ', '.join(flags) if flags else ''}, no GPU, torch {torch.__version__}"


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# The rows: carved once, written to files both pipelines read
# ---------------------------------------------------------------------------------------------


def carve_rows(train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: PathLike) -> tuple[Path, Path, dict[str, Any]]:
    """Split `train_file` once with budgetlora's seeded stratified split and write the first
    `samples` training rows and `eval_rows` validation rows as AG-News-style files (class, text).

    The validation share is 10% unless more rows are needed to give `eval_rows`.
    """
    from budgetlora.config import DataConfig
    from budgetlora.data import load_file, prepare_splits

    if samples < 1 or eval_rows < 1:
        raise UserError("bench: --samples and --eval-rows must be >= 1")
    n = len(load_file(train_file, DataConfig(train_file=str(train_file))))
    fraction = max(0.1, (eval_rows + 0.5) / n)
    if fraction >= 1.0 or n - round(fraction * n) < samples:
        raise UserError(
            f"{train_file}: {n} labelled rows cannot give {samples} training rows and {eval_rows} "
            "validation rows; lower --samples or --eval-rows"
        )
    dcfg = DataConfig(train_file=str(train_file), val_fraction=fraction, max_train_samples=samples, max_eval_samples=eval_rows)
    splits = prepare_splits(dcfg, seed)
    out = Path(out_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ts in (("train.csv", splits.train), ("validation.csv", splits.eval)):
        p = out / name
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for text, y in zip(ts.texts, ts.labels):
                w.writerow([int(y) + 1, text])
        paths.append(p)
    info = {
        "source_rows": n,
        "val_fraction": round(fraction, 6),
        "train_rows": len(splits.train),
        "eval_rows": len(splits.eval),
        "label_names": splits.label_names,
    }
    return paths[0], paths[1], info


def _read_rows(path: PathLike, limit: Optional[int] = None):
    """The carved file the notebook way: pandas, no header, class 1..K then text."""
    import pandas as pd

    df = pd.read_csv(path, header=None, names=["label", "text"], dtype={"label": int, "text": str}, keep_default_na=False)
    df["label"] = df["label"] - 1
    return df.iloc[:limit].reset_index(drop=True) if limit else df


def _ensure_files(train_file, samples, eval_rows, seed, out_dir, eval_file):
    if eval_file is not None:
        return Path(train_file), Path(eval_file)
    tr, va, _ = carve_rows(train_file, samples, eval_rows, seed, out_dir)
    return tr, va


# ---------------------------------------------------------------------------------------------
# (a) the seed notebooks' pipeline
# ---------------------------------------------------------------------------------------------


def reference_pipeline(
    model: str, train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: PathLike,
    *, eval_file: Optional[PathLike] = None,
) -> dict[str, Any]:
    """HF Trainer + PEFT as in the seed notebooks; runs in this process. `train_file`/`eval_file`
    are carved files (class, text); without `eval_file` the rows are carved here first."""
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out_dir = Path(out_dir)
    train_csv, val_csv = _ensure_files(train_file, samples, eval_rows, seed, out_dir, eval_file)
    gpu = torch.cuda.is_available()
    setup_start = time.perf_counter()
    set_seed(seed)

    train_df = _read_rows(train_csv, samples)
    val_df = _read_rows(val_csv, eval_rows)
    num_labels = int(max(train_df["label"].max(), val_df["label"].max())) + 1

    tokenizer = AutoTokenizer.from_pretrained(model)

    def tokenize(batch):
        return tokenizer(batch["text"], padding="max_length", truncation=True, max_length=REF_MAX_LENGTH)

    train_ds = Dataset.from_pandas(train_df).map(tokenize, batched=True, remove_columns=["text"])
    val_ds = Dataset.from_pandas(val_df).map(tokenize, batched=True, remove_columns=["text"])

    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=num_labels)
    lora_config = LoraConfig(task_type=TaskType.SEQ_CLS, **REF_LORA)
    peft_model = get_peft_model(base, lora_config)
    trainable, total = peft_model.get_nb_trainable_parameters()

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    args = TrainingArguments(
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

    class LoopClock(TrainerCallback):
        begin = end = None

        def on_train_begin(self, args, state, control, **kwargs):
            LoopClock.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            LoopClock.end = time.perf_counter()

    trainer = Trainer(
        model=peft_model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        compute_metrics=compute_metrics, callbacks=[LoopClock()],
    )
    setup_s = time.perf_counter() - setup_start
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    train_out = trainer.train()
    loop_s = LoopClock.end - LoopClock.begin
    ev = trainer.evaluate()
    peak_rss = peak_rss_mb()

    shape = model_shape(peft_model)
    train_len = [int(sum(m)) for m in train_ds["attention_mask"]]
    val_len = [int(sum(m)) for m in val_ds["attention_mask"]]
    n_train = len(train_df)
    result = {
        "pipeline": "reference",
        "what": "HF Trainer + PEFT LoRA as in the seed notebooks: padding=max_length 128, batch 32, "
                "lr 1e-4 linear with 10% warm-up, r=8 alpha=16 query/value bias=lora_only, "
                f"{'fp16' if gpu else 'fp32'}",
        "precision": "fp16" if gpu else "fp32",
        "attention": peft_model.config._attn_implementation,
        "encoder_dropout": getattr(peft_model.config, "hidden_dropout_prob", None),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "under_budget": trainable < BUDGET,
        **shape,
        "train_rows": n_train,
        "train_samples": int(round(n_train * float(train_out.metrics.get("epoch", 1.0)))),
        "train_runtime_s": loop_s,
        "trainer_train_runtime_s": float(train_out.metrics["train_runtime"]),
        "train_samples_per_second": n_train / loop_s,
        "train_real_tokens": sum(train_len),
        "train_executed_tokens": n_train * REF_MAX_LENGTH,
        "train_tokens_per_second": sum(train_len) / loop_s,
        "train_executed_tokens_per_second": n_train * REF_MAX_LENGTH / loop_s,
        "train_useful_flops": shape_flops(train_len, shape),
        "final_train_loss": float(train_out.metrics.get("train_loss", float("nan"))),
        "eval_rows": len(val_df),
        "eval_accuracy": float(ev["eval_accuracy"]),
        "eval_runtime_s": float(ev["eval_runtime"]),
        "eval_samples_per_second": len(val_df) / float(ev["eval_runtime"]),
        "eval_timed": "trainer.evaluate() loop (batch 32, rows already tokenized)",
        "eval_real_tokens": sum(val_len),
        "eval_useful_flops": shape_flops(val_len, shape, training=False),
        "setup_s": setup_s,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss,
        "peak_gpu_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
    }
    return result


# ---------------------------------------------------------------------------------------------
# (b) budgetlora's default pipeline
# ---------------------------------------------------------------------------------------------


def budgetlora_pipeline(
    model: str, train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: PathLike,
    *, eval_file: Optional[PathLike] = None,
) -> dict[str, Any]:
    """`budgetlora.training.trainer.train()` with default settings, then the whole `budgetlora predict`
    command on the validation texts, timed from outside (start-up included)."""
    import torch

    from budgetlora.config import load_config
    from budgetlora.data import LengthGroupedBatchSampler, encode
    from budgetlora.core.hub import load_hf_config, load_tokenizer
    from budgetlora.modeling import add_lora, build_classifier_from_config, resolve_attn_implementation
    from budgetlora.training.trainer import train

    out_dir = Path(out_dir)
    train_csv, val_csv = _ensure_files(train_file, samples, eval_rows, seed, out_dir, eval_file)
    run_dir = out_dir / "budgetlora-run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    cfg = load_config(None, {
        "model": model, "train_file": str(train_csv), "eval_file": str(val_csv),
        "epochs": 1, "seed": seed, "output_dir": str(run_dir),
    })
    metrics = train(cfg, command="budgetlora bench (budgetlora pipeline)")
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if gpu else None
    peak_rss = peak_rss_mb()  # before the FLOP bookkeeping below builds a second model

    # Outside the clock: token lengths and the model's shape for the FLOP count.
    train_df = _read_rows(train_csv, samples)
    val_df = _read_rows(val_csv, eval_rows)
    tokenizer = load_tokenizer(model)
    train_len = encode(list(train_df["text"]), tokenizer, cfg.data.max_length).lengths
    val_len = encode(list(val_df["text"]), tokenizer, cfg.data.max_length).lengths
    t = cfg.train
    executed = None
    try:  # the padded tokens the loop ran: its sampler's batches (a pure function of seed and epoch)
        sampler = LengthGroupedBatchSampler(train_len, t.batch_size, shuffle=True, seed=t.seed,
                                            bucket_batches=50 if t.group_by_length else 1)
        executed = sum(len(b) * max(train_len[i] for i in b) for b in sampler.batches(0))
    except Exception:  # the loop's batching changed: leave it unknown rather than guess
        pass
    hf_config = load_hf_config(cfg.model, len(metrics["label_names"]), metrics["label_names"])
    shape = model_shape(add_lora(build_classifier_from_config(cfg.model, hf_config), cfg))

    # `budgetlora predict`, the whole command, in a fresh process: the default (bf16 where the
    # hardware has it) and the int8 option.
    truth = list(val_df["label"])

    def timed_predict(name: str, extra: list[str]) -> tuple[list[int], float, float, Optional[float], Optional[float]]:
        preds = out_dir / f"budgetlora-predictions{name}.csv"
        cmd = [sys.executable, "-m", "budgetlora.cli", "predict", "--run", str(run_dir), "--input", str(val_csv),
               "--output", str(preds), "--overwrite", *extra]
        predict_log = out_dir / f"budgetlora-predict{name}.log"
        with open(predict_log, "w", encoding="utf-8") as log_f:
            start = time.perf_counter()
            rc, rss = _run_child(cmd, log_f)
            seconds = time.perf_counter() - start
        if rc != 0:
            raise UserError(f"bench: `budgetlora predict{' ' + ' '.join(extra) if extra else ''}` failed (exit {rc}): {_tail(predict_log)}")
        with open(preds, newline="", encoding="utf-8") as f:
            labels = [int(r["Label"]) for r in csv.DictReader(f)]
        acc = sum(int(p == y) for p, y in zip(labels, truth)) / max(len(truth), 1)
        return labels, seconds, acc, rss, _parse_texts_per_s(predict_log)

    pred_labels, predict_s, predict_acc, child_rss_mb, inproc = timed_predict("", [])
    q_labels, q_seconds, q_acc, _, q_inproc = timed_predict("-int8", ["--quantize"])

    n_train = int(metrics["train_rows"])
    secs = float(metrics["train_runtime_s"])
    return {
        "pipeline": "budgetlora",
        "what": "budgetlora train with default settings (model, rows, epochs=1, seed, output dir set), "
                "then `budgetlora predict` on the validation texts",
        "precision": metrics["precision"],
        "attention": resolve_attn_implementation(cfg.model.attn_implementation),
        "encoder_dropout": cfg.model.encoder_dropout,
        "trainable_params": int(metrics["trainable_params"]),
        "total_params": int(metrics["total_params"]),
        "under_budget": int(metrics["trainable_params"]) < BUDGET,
        "budget_breakdown": metrics.get("budget_breakdown"),
        **shape,
        "train_rows": n_train,
        "train_samples": int(metrics["train_samples"]),
        "train_runtime_s": secs,
        "train_samples_per_second": float(metrics["train_samples_per_second"]),
        "train_real_tokens": sum(train_len),
        "train_executed_tokens": executed,
        "train_tokens_per_second": float(metrics["train_tokens_per_second"]),
        "train_executed_tokens_per_second": executed / secs if executed else None,
        "train_useful_flops": shape_flops(train_len, shape),
        "eval_rows": len(val_df),
        "eval_accuracy": float(metrics["final_eval_accuracy"]),
        "best_eval_accuracy": float(metrics["best_eval_accuracy"]),
        "eval_runtime_s": predict_s,
        "eval_samples_per_second": len(pred_labels) / predict_s,
        "eval_timed": "whole `budgetlora predict` command (python start-up, imports, model load, tokenization, "
                      "inference, CSV written)",
        "predict_accuracy": predict_acc,
        "predict_in_process_samples_per_second": inproc,
        "predict_int8_samples_per_second": len(q_labels) / q_seconds,
        "predict_int8_accuracy": q_acc,
        "predict_int8_in_process_samples_per_second": q_inproc,
        "predict_peak_rss_mb": child_rss_mb,
        "eval_real_tokens": sum(val_len),
        "eval_useful_flops": shape_flops(val_len, shape, training=False),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss,
        "peak_gpu_allocated_mb": peak_gpu,
        "run_dir": str(run_dir),
    }


def _run_child(cmd: list[str], log_f) -> tuple[int, Optional[float]]:
    """Run a command to its end; (exit code, its own peak RSS in MiB, None where unknown).

    The peak is the child's VmHWM, polled from /proc every 20 ms (monotonic, so the last read is
    the peak up to its final 20 ms). Not getrusage: on Linux a child's ru_maxrss starts from its
    parent's RSS at fork/exec time, which would charge the worker's memory to `budgetlora predict`.
    """
    import threading

    proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, env=_child_env())
    status = Path(f"/proc/{proc.pid}/status")
    peak: list[Optional[float]] = [None]

    def poll() -> None:
        while proc.poll() is None:
            kb = _vm_hwm_kb(status)
            if kb is not None:
                peak[0] = kb / 1024
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    rc = proc.wait()
    watcher.join()
    return rc, peak[0]


def _vm_hwm_kb(status_path: Path) -> Optional[int]:
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM (since exec) where /proc has it."""
    kb = _vm_hwm_kb(Path("/proc/self/status"))
    if kb is not None:
        return kb / 1024
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, kB elsewhere


def _parse_texts_per_s(log_path: Path) -> Optional[float]:
    import re

    m = re.search(r"\(([0-9.]+) texts/s\)", log_path.read_text(encoding="utf-8", errors="replace"))
    return float(m.group(1)) if m else None


def _tail(path: Path, n: int = 600) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip() if path.exists() else ""
    return " ".join(text[-n:].split()) or "(no output)"


# The environment this process started with: `budgetlora.training.trainer.train()` sets
# TOKENIZERS_PARALLELISM=false in the worker's own environment, which a user's shell does not have.
_START_ENV = dict(os.environ)


def _child_env() -> dict[str, str]:
    # The user's environment as it was (TOKENIZERS_PARALLELISM included: the timed `budgetlora
    # predict` must tokenize as it does for them), with unbuffered output for the logs.
    env = dict(_START_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------------------------------
# The parent: one worker process per pipeline, results side by side
# ---------------------------------------------------------------------------------------------


def run_pipeline_in_subprocess(name: str, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run one pipeline in a fresh `python -m budgetlora.commands.bench _worker` process; its JSON back."""
    spec_path = out_dir / f"{name}-spec.json"
    result_path = out_dir / f"{name}-result.json"
    log_path = out_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "pipeline": name, "result": str(result_path)}), encoding="utf-8")
    env = _child_env()
    if Path(spec["model"]).expanduser().is_dir():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no Hub look-ups
    with open(log_path, "w", encoding="utf-8") as log_f:
        rc = subprocess.run([sys.executable, "-m", "budgetlora.commands.bench", "_worker", str(spec_path)],
                            stdout=log_f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0 or not result_path.is_file():
        raise UserError(f"bench: the {name} pipeline failed (exit {rc}; log {log_path}): {_tail(log_path)}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fn = {"reference": reference_pipeline, "budgetlora": budgetlora_pipeline}[spec["pipeline"]]
    result = fn(spec["model"], spec["train_file"], spec["samples"], spec["eval_rows"], spec["seed"], spec["out_dir"],
                eval_file=spec["eval_file"])
    Path(spec["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def _share(flops_per_s: Optional[float], peak: Optional[float]) -> Optional[float]:
    return flops_per_s / peak if flops_per_s and peak else None


def _ratio(b: Optional[float], a: Optional[float]) -> Optional[float]:
    return b / a if a and b is not None else None


# Each pair's own figures, kept in the report beside the medians.
PAIR_FIGURES = ("train_samples_per_second", "train_runtime_s", "eval_samples_per_second", "eval_runtime_s",
                "eval_accuracy", "peak_rss_mb")


def _add_rates(r: dict[str, Any], peaks: dict[str, Any]) -> None:
    r["train_useful_flops_per_second"] = r["train_useful_flops"] / r["train_runtime_s"]
    r["eval_useful_flops_per_second"] = r["eval_useful_flops"] / r["eval_runtime_s"]
    for what in ("train", "eval"):
        for dt in ("bf16", "fp32"):
            r[f"{what}_share_of_{dt}_peak"] = _share(r[f"{what}_useful_flops_per_second"], peaks[f"{dt}_flops_per_second"])


def pair_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Optional[float]]:
    """(b)/(a) for the figures the targets and the table use, and the accuracy difference."""
    return {
        "train_samples_per_second": _ratio(b["train_samples_per_second"], a["train_samples_per_second"]),
        "train_tokens_per_second": _ratio(b["train_tokens_per_second"], a["train_tokens_per_second"]),
        "train_useful_flops_per_second": _ratio(b["train_useful_flops_per_second"], a["train_useful_flops_per_second"]),
        "eval_samples_per_second": _ratio(b["eval_samples_per_second"], a["eval_samples_per_second"]),
        "peak_rss": _ratio(b["peak_rss_mb"], a["peak_rss_mb"]),
        "peak_gpu_allocated": _ratio(b.get("peak_gpu_allocated_mb"), a.get("peak_gpu_allocated_mb")),
        "eval_accuracy_difference": b["eval_accuracy"] - a["eval_accuracy"],
    }


def _median_or_first(values: list[Any]) -> Any:
    # Figures that differ between repeats (rates, times, memory) take their median; the rest
    # (settings, counts, accuracies of a seeded run) are the same in every repeat and stay as they are.
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return statistics.median(values)
    return values[0]


def combine_pairs(pairs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(reference, budgetlora, ratios) over the repeats: one pair as it is; several, per-field
    medians of each pipeline and the medians of the paired ratios (None where any pair has none)."""
    if len(pairs) == 1:
        return pairs[0]["reference"], pairs[0]["budgetlora"], pairs[0]["ratios"]
    a, b = ({k: _median_or_first([p[name].get(k) for p in pairs]) for k in pairs[0][name]} for name in PIPELINES)
    ratios = {}
    for k in pairs[0]["ratios"]:
        values = [p["ratios"][k] for p in pairs]
        ratios[k] = None if any(v is None for v in values) else statistics.median(values)
    return a, b, ratios


def measure_peaks(n: int = 2048) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "matmul_n": n,
        "bf16_flops_per_second": measure_matmul_peak("bfloat16", n, device),
        "fp32_flops_per_second": measure_matmul_peak("float32", n, device),
    }


def run_bench(
    model: str,
    train_file: PathLike,
    *,
    samples: int = 1024,
    eval_rows: int = 7600,
    seed: int = 42,
    out_dir: Optional[PathLike] = None,
    matmul_n: int = 2048,
    repeats: int = 1,
    command: Optional[str] = None,
    progress=None,
) -> dict[str, Any]:
    """Both pipelines, one after the other in their own processes, and the ratios (b)/(a).

    With `repeats` > 1 the pair runs that many times, the order alternating (reference first, then
    budgetlora first, ...). Each repeat's ratios compare two runs next to each other in time; the
    reported ratios are the medians of those paired ratios, and each pipeline's figures the medians
    over the repeats. On a shared machine whose speed drifts between the minutes of one pipeline
    and the next, one pair can land on either side of a target by load alone; every repeat is kept
    in the report (`pairs`) and its full results in `repeat-K/` of the output folder.
    """
    import peft
    import torch
    import transformers

    if repeats < 1:
        raise UserError("bench: --repeats must be >= 1")
    say = progress or (lambda msg: None)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="budgetlora-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    if not Path(train_file).is_file():
        raise UserError(f"{train_file}: no such training file")
    say(f"carving {samples} training and {eval_rows} validation rows from {train_file}")
    train_csv, val_csv, rows_info = carve_rows(train_file, samples, eval_rows, seed, out)
    say(f"measuring the bf16 and fp32 matmul peaks (n={matmul_n})")
    peaks = measure_peaks(matmul_n)
    spec = {"model": str(model), "train_file": str(train_csv), "eval_file": str(val_csv), "samples": samples,
            "eval_rows": eval_rows, "seed": seed}
    pairs = []
    for k in range(repeats):
        order = PIPELINES if k % 2 == 0 else PIPELINES[::-1]
        pair_dir = out if repeats == 1 else out / f"repeat-{k + 1}"
        pair_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        for name in order:
            say(f"{f'repeat {k + 1}/{repeats}: ' if repeats > 1 else ''}running the {name} pipeline "
                f"(log: {pair_dir / (name + '.log')})")
            results[name] = run_pipeline_in_subprocess(name, {**spec, "out_dir": str(pair_dir)}, pair_dir)
        for r in results.values():
            _add_rates(r, peaks)
        a, b = results["reference"], results["budgetlora"]
        pairs.append({"order": list(order), "output_dir": str(pair_dir), "reference": a, "budgetlora": b,
                      "ratios": pair_ratios(a, b)})
    a, b, ratios = combine_pairs(pairs)
    targets = {
        "train_samples_per_second_ratio_at_least_8": bool(ratios["train_samples_per_second"] and ratios["train_samples_per_second"] >= 8),
        "predict_vs_reference_eval_ratio_at_least_6": bool(ratios["eval_samples_per_second"] and ratios["eval_samples_per_second"] >= 6),
        "accuracy_not_lower": b["eval_accuracy"] >= a["eval_accuracy"],
        "same_samples": a["train_samples"] == b["train_samples"],
        "both_under_budget": bool(a["under_budget"] and b["under_budget"]),
    }
    report = {
        "command": command or f"budgetlora bench --model {model} --train-file {train_file} --samples {samples} --eval-rows {eval_rows}",
        "date": _dt.date.today().isoformat(),
        "machine": machine_description(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "python": platform.python_version()},
        "model": str(model),
        "train_file": str(train_file),
        "samples": samples,
        "eval_rows": eval_rows,
        "seed": seed,
        "budget": BUDGET,
        "rows": rows_info,
        "peaks": peaks,
        "flops_formula": "training: per real token 4N + 2N_trainable + 12*L*H*t; inference: 2N + 4*L*H*t "
                         "(N non-embedding params incl. LoRA and head, t = real tokens of the row); parameters run on the "
                         "first token only (first_token_last_layer) count for one token per row",
        "timing": "train: inside the training loop only (model load, tokenization, evaluation, saving excluded); "
                  "reference eval: trainer.evaluate(); budgetlora eval: whole `budgetlora predict` command",
        "reference": a,
        "budgetlora": b,
        "ratios": ratios,
        "targets": targets,
        "repeats": repeats,
        "ratios_are": "the one pair's" if repeats == 1 else
                      f"medians of the {repeats} paired ratios; each pipeline's figures are medians over the repeats",
        "pairs": [{"order": p["order"], "output_dir": p["output_dir"], "ratios": p["ratios"],
                   **{name: {k: p[name][k] for k in PAIR_FIGURES} for name in PIPELINES}} for p in pairs],
        "output_dir": str(out),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------------------
# Scaling sweep: budgetlora's training loop on synthetic rows of exactly T tokens
# ---------------------------------------------------------------------------------------------


def synthetic_text(tokenizer: Any, tokens: int) -> str:
    """A text that tokenizes to exactly `tokens` ids (special tokens included)."""
    specials = len(tokenizer("")["input_ids"])
    for word in ("the", "a", "of", "and", "x"):
        for k in (tokens - specials, tokens - specials - 1, tokens - specials + 1):
            if k < 1:
                continue
            text = " ".join([word] * k)
            if len(tokenizer(text)["input_ids"]) == tokens:
                return text
    raise UserError(f"bench --sweep: cannot build a text of exactly {tokens} tokens with this tokenizer")


def scaling_sweep(
    model: str,
    lengths: Sequence[int] = (32, 64, 128, 256),
    rows: Sequence[int] = (256, 512, 1024),
    *,
    seed: int = 42,
    out_dir: Optional[PathLike] = None,
    peaks: Optional[dict[str, Any]] = None,
    progress=None,
) -> dict[str, Any]:
    """Time budgetlora's training loop (train(), defaults, one epoch) for each (T, rows)."""
    import random

    from budgetlora.config import load_config
    from budgetlora.core.hub import load_hf_config, load_tokenizer
    from budgetlora.modeling import add_lora, build_classifier_from_config
    from budgetlora.training.trainer import train

    say = progress or (lambda msg: None)
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="budgetlora-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(model)
    base_cfg = load_config(None, {"model": model})
    hf_config = load_hf_config(base_cfg.model, 4, ["World", "Sports", "Business", "Sci/Tech"])
    max_pos = int(getattr(hf_config, "max_position_embeddings", 512) or 512)
    shape = model_shape(add_lora(build_classifier_from_config(base_cfg.model, hf_config), base_cfg))
    table, skipped = [], []
    for T in lengths:
        if T > max_pos - 2 or T < 8:
            skipped.append({"seq_len": T, "why": f"outside 8..{max_pos - 2} tokens for this model"})
            continue
        text = synthetic_text(tokenizer, T)
        for n in rows:
            data = out / "sweep-data"
            data.mkdir(exist_ok=True)
            rng = random.Random(seed)
            tr, ev = data / f"train-{T}-{n}.csv", data / "eval.csv"
            for path, count in ((tr, n), (ev, 8)):
                with open(path, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
                    labels = [i % 4 for i in range(count)]
                    rng.shuffle(labels)
                    for y in labels:
                        w.writerow([y + 1, text])
            say(f"sweep: {n} rows x {T} tokens")
            cfg = load_config(None, {"model": model, "train_file": str(tr), "eval_file": str(ev), "epochs": 1,
                                     "seed": seed, "max_length": max(T, 8), "output_dir": str(out / "sweep-run"),
                                     "overwrite": True})
            m = train(cfg, command="budgetlora bench --sweep")
            secs = float(m["train_runtime_s"])
            flops = shape_flops([T] * n, shape)
            row = {"seq_len": T, "rows": n, "tokens": T * n, "train_seconds": secs,
                   "samples_per_second": n / secs, "tokens_per_second": T * n / secs,
                   "useful_flops_per_second": flops / secs}
            if peaks:
                row["share_of_bf16_peak"] = flops / secs / peaks["bf16_flops_per_second"]
                row["share_of_fp32_peak"] = flops / secs / peaks["fp32_flops_per_second"]
            table.append(row)
    shutil.rmtree(out / "sweep-run", ignore_errors=True)
    plot = out / "bench_scaling.png"
    _plot_sweep(table, plot)
    md = out / "bench_scaling.md"
    md.write_text(_sweep_markdown(table) + "\n", encoding="utf-8")
    return {"model": str(model), "lengths": list(lengths), "rows": list(rows), "table": table, "skipped": skipped,
            "plot": str(plot), "table_file": str(md), "precision": m["precision"] if table else None}


def _plot_sweep(table: list[dict[str, Any]], path: Path) -> None:
    from budgetlora.core.plots import _pyplot

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for T in sorted({r["seq_len"] for r in table}):
        pts = sorted((r for r in table if r["seq_len"] == T), key=lambda r: r["tokens"])
        ax1.plot([r["tokens"] for r in pts], [r["train_seconds"] for r in pts], marker="o", label=f"T={T}")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("training tokens (rows x T)")
    ax1.set_ylabel("seconds in the training loop")
    ax1.set_title("time vs tokens")
    ax1.legend()
    for n in sorted({r["rows"] for r in table}):
        pts = sorted((r for r in table if r["rows"] == n), key=lambda r: r["seq_len"])
        ax2.plot([r["seq_len"] for r in pts], [1e3 * r["train_seconds"] / r["tokens"] for r in pts], marker="o",
                 label=f"{n} rows")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("sequence length T (tokens)")
    ax2.set_ylabel("ms per token")
    ax2.set_title("cost per token vs sequence length")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sweep_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| T (tokens) | rows | tokens | train s | samples/s | tokens/s | useful GFLOP/s | share of bf16 peak |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table:
        share = r.get("share_of_bf16_peak")
        lines.append(f"| {r['seq_len']} | {r['rows']} | {r['tokens']:,} | {r['train_seconds']:.2f} | "
                     f"{r['samples_per_second']:.1f} | {r['tokens_per_second']:.0f} | "
                     f"{r['useful_flops_per_second'] / 1e9:.1f} | {'' if share is None else f'{share:.1%}'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def format_report(rep: dict[str, Any]) -> str:
    a, b, r = rep["reference"], rep["budgetlora"], rep["ratios"]
    rows = [
        ("precision", a["precision"], b["precision"], None, "s"),
        ("attention kernel", a.get("attention"), b.get("attention"), None, "s"),
        ("encoder dropout", a.get("encoder_dropout"), b.get("encoder_dropout"), None, "g"),
        ("trainable params", a["trainable_params"], b["trainable_params"], None, ",d"),
        ("samples trained", a["train_samples"], b["train_samples"], None, ",d"),
        ("train samples/s", a["train_samples_per_second"], b["train_samples_per_second"], r["train_samples_per_second"], ".2f"),
        ("train real tokens/s", a["train_tokens_per_second"], b["train_tokens_per_second"], r["train_tokens_per_second"], ",.0f"),
        ("train executed tokens/s", a["train_executed_tokens_per_second"], b["train_executed_tokens_per_second"], None, ",.0f"),
        ("train useful GFLOP/s", a["train_useful_flops_per_second"] / 1e9, b["train_useful_flops_per_second"] / 1e9,
         r["train_useful_flops_per_second"], ".1f"),
        ("  share of bf16 peak", a["train_share_of_bf16_peak"], b["train_share_of_bf16_peak"], None, ".1%"),
        ("  share of fp32 peak", a["train_share_of_fp32_peak"], b["train_share_of_fp32_peak"], None, ".1%"),
        ("eval samples/s", a["eval_samples_per_second"], b["eval_samples_per_second"], r["eval_samples_per_second"], ".1f"),
        ("validation accuracy", a["eval_accuracy"], b["eval_accuracy"], None, ".4f"),
        ("peak RSS MiB", a["peak_rss_mb"], b["peak_rss_mb"], r["peak_rss"], ",.0f"),
    ]
    if a.get("peak_gpu_allocated_mb") is not None:
        rows.append(("peak GPU allocated MiB", a["peak_gpu_allocated_mb"], b["peak_gpu_allocated_mb"], r["peak_gpu_allocated"], ",.0f"))
    w = max(len(x[0]) for x in rows)
    out = [f"budgetlora bench  {rep['date']}  {rep['machine']}",
           f"model {rep['model']}; {rep['samples']} training rows, {rep['eval_rows']} validation rows, seed {rep['seed']}",
           f"matmul peak (n={rep['peaks']['matmul_n']}): bf16 {rep['peaks']['bf16_flops_per_second'] / 1e9:.0f} GFLOP/s, "
           f"fp32 {rep['peaks']['fp32_flops_per_second'] / 1e9:.0f} GFLOP/s",
           ""]
    pairs = rep.get("pairs", [])
    if len(pairs) > 1:
        out.append(f"{len(pairs)} paired repeats, the order alternating; the table: {rep['ratios_are']}")
        for k, p in enumerate(pairs, 1):
            pr = p["ratios"]
            out.append(f"  repeat {k} ({p['order'][0]} first): train {_fmt(pr['train_samples_per_second'], '.2f')}x, "
                       f"eval {_fmt(pr['eval_samples_per_second'], '.2f')}x "
                       f"(train {_fmt(p['reference']['train_samples_per_second'], '.2f')} -> "
                       f"{_fmt(p['budgetlora']['train_samples_per_second'], '.2f')} samples/s, "
                       f"eval {_fmt(p['reference']['eval_samples_per_second'], '.1f')} -> "
                       f"{_fmt(p['budgetlora']['eval_samples_per_second'], '.1f')} samples/s)")
        out.append("")
    out.append(f"{'':<{w}}  {'(a) reference':>15}  {'(b) budgetlora':>15}  {'(b)/(a)':>8}")
    for name, va, vb, ratio, spec in rows:
        out.append(f"{name:<{w}}  {_fmt(va, spec):>15}  {_fmt(vb, spec):>15}  {_fmt(ratio, '.2f') + ('x' if ratio else ''):>8}")
    out += ["",
            f"(a) eval: {a['eval_timed']}; (b) eval: {b['eval_timed']}",
            f"(b) predict accuracy {b['predict_accuracy']:.4f}, predict peak RSS {_fmt(b['predict_peak_rss_mb'], ',.0f')} MiB",
            f"accuracy (b)-(a): {r['eval_accuracy_difference']:+.4f}",
            "targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rep["targets"].items()),
            f"outputs: {rep['output_dir']}"]
    return "\n".join(out)


def bench_command(
    model: str,
    train_file: Optional[str],
    *,
    samples: int = 1024,
    eval_rows: int = 7600,
    seed: int = 42,
    output_dir: Optional[str] = None,
    as_json: bool = False,
    sweep: bool = False,
    sweep_lengths: Sequence[int] = (32, 64, 128, 256),
    sweep_rows: Sequence[int] = (256, 512, 1024),
    matmul_n: int = 2048,
    repeats: int = 1,
    argv: Sequence[str] = (),
) -> str:
    import shlex

    def say(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    command = "budgetlora " + shlex.join(list(argv)) if argv else None
    if sweep and repeats != 1:
        raise UserError("bench: --repeats is for the side-by-side run, not --sweep")
    if sweep:
        out = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="budgetlora-sweep-"))
        say(f"measuring the bf16 and fp32 matmul peaks (n={matmul_n})")
        peaks = measure_peaks(matmul_n)
        res = scaling_sweep(model, sweep_lengths, sweep_rows, seed=seed, out_dir=out, peaks=peaks, progress=say)
        res.update({"command": command, "date": _dt.date.today().isoformat(), "machine": machine_description(), "peaks": peaks})
        (out / "bench_scaling.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        if as_json:
            return json.dumps(res, indent=2)
        return "\n".join([f"budgetlora bench --sweep  {res['date']}  {res['machine']}",
                          f"budgetlora training loop ({res['precision']}), synthetic rows of exactly T tokens", "",
                          _sweep_markdown(res["table"]), "",
                          *(f"skipped T={s['seq_len']}: {s['why']}" for s in res["skipped"]),
                          f"plot: {res['plot']}"])
    if not train_file:
        raise UserError("bench: give --train-file FILE (or --sweep for the scaling sweep)")
    rep = run_bench(model, train_file, samples=samples, eval_rows=eval_rows, seed=seed, out_dir=output_dir,
                    matmul_n=matmul_n, repeats=repeats, command=command, progress=say)
    return json.dumps(rep, indent=2) if as_json else format_report(rep)
