"""Knowledge distillation: a finished run (or an ensemble of runs) teaches the student.

The teacher is never trained, so it is not part of the student's trainable parameters and does not
count against the budget. Its logits on the training rows are computed once, before the first
step, and cached in the student's run folder (`cache/teacher-<key>.safetensors`, one file per
teacher) and, where it can be written, in the teacher's own `cache/`, so a resumed or repeated
run, or another student of the same teacher on the same rows, does not pay for teacher inference
again. The key hashes everything the logits depend on: every file of the teacher's saved model,
its base model, its tokenizer and
max_length, the inference precision, and the training texts.

The student's loss (Hinton et al. 2015) is

    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

An ensemble's teacher distribution is the mean of its members' softmax(z_k / T); it is handed to
the loss as the pseudo-logits T * log(mean), whose softmax at temperature T is exactly that mean.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from safetensors.torch import load_file, save_file

from budgetlora.config import RunConfig, load_config
from budgetlora.core.device import inference_device
from budgetlora.core.files import atomic_path
from budgetlora.core.hub import load_tokenizer
from budgetlora.data import tokenizer_fingerprint, update_hash_with_texts
from budgetlora.errors import ConfigError, RunDirError
from budgetlora.inference.runner import LoadedRun, inference_precision, predict_logits
from budgetlora.modeling import read_adapter_meta

log = logging.getLogger(__name__)

_CACHE_VERSION = b"budgetlora-teacher-v2"


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1-alpha) CE + alpha T^2 KL(softmax(teacher/T) || softmax(student/T)), KL averaged over rows."""
    s = student_logits.float()
    ce = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return ce
    T = float(temperature)
    kl = F.kl_div(
        F.log_softmax(s / T, dim=-1),
        F.log_softmax(teacher_logits.float() / T, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * T * T * kl


def combine(per_teacher: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """One teacher: its logits. An ensemble: T * log(mean_k softmax(z_k / T))."""
    if len(per_teacher) == 1:
        return per_teacher[0]
    T = float(temperature)
    probs = torch.stack([F.softmax(z.float() / T, dim=-1) for z in per_teacher]).mean(0)
    return T * probs.clamp_min(1e-12).log()


def training_targets(
    cfg: RunConfig,
    texts: list[str],
    enc: Any,
    tokenizer: Any,
    label_names: list[str],
    cache_dir: Path,
) -> torch.Tensor:
    """Teacher logits [len(texts), num_labels] for the training rows, row i for texts[i] / enc row i.

    `enc` is the student's `Encoded` of `texts`; a teacher whose tokenizer and max_length are the
    student's reads those ids directly, any other tokenizes the texts with its own tokenizer.
    """
    for d in cfg.train.teacher_dirs:
        if cfg.output_dir and Path(d).expanduser().resolve() == Path(cfg.output_dir).expanduser().resolve():
            raise ConfigError(f"teacher: {d} is this run's own output folder; name another, finished run")
    # Loading a teacher draws random numbers (its head is initialised before the adapter replaces
    # it): keep them off the global generators, so the student starts the same, cache hit or not.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        per = [
            teacher_logits(d, texts, enc, tokenizer, cfg.data.max_length, label_names, cache_dir)
            for d in cfg.train.teacher_dirs
        ]
    return combine(per, cfg.train.distill_temperature)


def teacher_logits(
    run_dir: str,
    texts: list[str],
    enc: Any,
    student_tokenizer: Any,
    student_max_length: int,
    label_names: list[str],
    cache_dir: Path,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """One teacher's fp32 logits on `texts`, from the cache when it holds them."""
    folder = Path(run_dir).expanduser()
    adapter = folder / "adapter"
    if not adapter.is_dir():
        raise RunDirError(f"teacher: {run_dir} is not a finished budgetlora run (no adapter/ folder)")
    meta = read_adapter_meta(adapter)
    if list(meta["label_names"]) != list(label_names):
        raise ConfigError(
            f"teacher: {run_dir} was trained on the classes {meta['label_names']}, this run has "
            f"{list(label_names)}; a teacher must predict the same classes in the same order"
        )
    teacher_tok = load_tokenizer(str(adapter))
    fingerprint = tokenizer_fingerprint(teacher_tok)
    max_length = int(meta.get("max_length", 128))
    key = _cache_key(folder, meta, fingerprint, max_length, _precision_of(folder), texts)
    name = f"teacher-{key}.safetensors"
    path = Path(cache_dir) / name
    # The teacher's own cache/ holds the logits of every student that asked before (the key names
    # the texts), so a second student of the same teacher on the same rows does not run it again.
    shared = folder / "cache" / name
    for found in (path, shared):
        cached = _load(found, len(texts), len(label_names))
        if cached is not None:
            log.info("teacher %s: reusing cached logits %s", run_dir, found)
            if found is shared:
                _save(path, cached, {"teacher": str(run_dir), "key": key})
            return cached

    log.info("teacher %s: computing logits for %d training rows (once; cached in %s)", run_dir, len(texts), path)
    run = LoadedRun(folder)
    same_ids = fingerprint == tokenizer_fingerprint(student_tokenizer) and max_length == student_max_length
    if same_ids:
        logits = predict_logits(run.model, enc.input_ids, batch_size or run.eval_batch_size, run.collate,
                                run.device, run.precision, progress=True)
    else:
        logits = run.logits(texts, batch_size, progress=True)
    del run
    for target in (path, shared):  # the teacher's copy is best effort: its folder may be read-only
        _save(target, logits, {"teacher": str(run_dir), "key": key})
    return logits


def _precision_of(folder: Path) -> str:
    """The precision LoadedRun will run the teacher at (bf16 and fp32 logits differ slightly)."""
    cfg_path = folder / "config.yaml"
    return inference_precision(load_config(cfg_path) if cfg_path.is_file() else None, inference_device())


def _cache_key(folder: Path, meta: dict, fingerprint: str, max_length: int, precision: str, texts: list[str]) -> str:
    h = hashlib.sha256(_CACHE_VERSION)
    # Every file of the saved model: peft's adapter_* files, or trained_parameters.safetensors for
    # the methods saved without peft (full fine-tuning, BitFit), whose runs differ only there.
    for f in sorted(p for p in (folder / "adapter").iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(json.dumps({"base_model": meta.get("base_model"), "head": meta.get("head"),
                         "pooling": meta.get("pooling"), "labels": meta.get("label_names")}, sort_keys=True).encode())
    h.update(f"{fingerprint}/{max_length}/{precision}/{len(texts)}".encode())
    update_hash_with_texts(h, texts)
    return h.hexdigest()[:40]


def _load(path: Path, rows: int, num_labels: int) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    try:
        logits = load_file(str(path))["logits"]
        if tuple(logits.shape) != (rows, num_labels) or not torch.isfinite(logits).all():
            raise ValueError(f"shape {tuple(logits.shape)}")
        return logits.float()
    except Exception as e:  # a damaged cache is only a lost shortcut
        log.warning("ignoring unreadable teacher cache %s (%s)", path, e)
        return None


def _save(path: Path, logits: torch.Tensor, metadata: dict[str, str]) -> None:
    try:
        with atomic_path(path) as tmp:
            save_file({"logits": logits.float().contiguous()}, str(tmp), metadata=metadata)
    except OSError as e:
        log.warning("could not write the teacher cache %s (%s)", path, e)
