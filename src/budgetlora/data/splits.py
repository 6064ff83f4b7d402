"""A run's training and validation texts: a stratified, seeded hold-out when there is no
evaluation file, and label ids and names that agree between the two."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from budgetlora.config import DataConfig
from budgetlora.data.checks import data_error
from budgetlora.data.readers import TextSet, load_file, load_hub_dataset


@dataclass
class Splits:
    train: TextSet
    eval: TextSet
    label_names: list[str]


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx): `fraction` of the rows held out, every class in proportion.

    Each class gives round-to-total shares (largest remainders), and keeps at least one row in
    train. Both index lists come in a seeded order in which every PREFIX is itself close to
    stratified, so "the first N rows" (max_train_samples, max_eval_samples) are a stratified
    random sample rather than the head of a possibly sorted file.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    total = min(max(1, round(fraction * n)), n - len(classes)) if n > len(classes) else 0
    ideal = counts * (total / n) if n else counts.astype(float)
    take = np.floor(ideal).astype(np.int64)
    caps = np.maximum(counts - 1, 0)
    take = np.minimum(take, caps)
    remainder = ideal - take
    # Ties in the remainders are broken at random (seeded) so no class is favoured by its id.
    order = np.lexsort((rng.random(len(classes)), -remainder))
    short = total - int(take.sum())
    for c in order:
        if short <= 0:
            break
        if take[c] < caps[c]:
            take[c] += 1
            short -= 1
    train_parts, val_parts = [], []
    for c, k in zip(classes, take):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    return _prefix_stratified(train_parts, rng), _prefix_stratified(val_parts, rng)


def _prefix_stratified(parts: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    # Row r of a class with m rows sits at (r + u) / m on [0, 1); sorting all rows by that key
    # interleaves the classes in proportion, with random jitter.
    keys, idx = [], []
    for members in parts:
        m = len(members)
        if m == 0:
            continue
        keys.append((np.arange(m) + rng.random(m)) / m)
        idx.append(members)
    if not idx:
        return []
    all_keys, all_idx = np.concatenate(keys), np.concatenate(idx)
    return [int(i) for i in all_idx[np.argsort(all_keys, kind="stable")]]


def prepare_splits(cfg: DataConfig, seed: int) -> Splits:
    """The training and validation texts of a run, with consistent label ids and names."""
    if cfg.train_file:
        train_src: Any = cfg.train_file
        train = load_file(cfg.train_file, cfg)
    else:
        train_src = cfg.dataset
        train = load_hub_dataset(cfg.dataset, "train", cfg)
    assert train.labels is not None
    known = cfg.label_names or train.label_names
    if cfg.eval_file:
        eval_set = load_file(cfg.eval_file, cfg, label_names=known)
        assert eval_set.labels is not None
        if known is None and eval_set.label_names is not None:
            raise data_error(cfg.eval_file, "the labels are names but the training file's are integer "
                                            "ids; use the same kind in both, or pass --label-names")
    else:
        tr_idx, va_idx = stratified_split(train.labels, cfg.val_fraction, seed)
        if not va_idx or not tr_idx:
            raise data_error(train_src, f"{len(train)} labelled rows are too few to hold out "
                                        f"val_fraction={cfg.val_fraction} for validation; give more rows "
                                        "or an --eval-file")
        eval_set = train.subset(va_idx)
        eval_set.name = f"{train.name}-val"
        train = train.subset(tr_idx)
    # Truncate only after the split, so a held-out row can never come back as a training row.
    if cfg.max_train_samples is not None:
        train = train.subset(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples is not None:
        eval_set = eval_set.subset(range(min(cfg.max_eval_samples, len(eval_set))))
    names = cfg.label_names or train.label_names or eval_set.label_names
    present = set(train.labels or [])
    eval_src = cfg.eval_file or f"{train_src} (validation split)"
    if names is None:
        k = max(present) + 1
        for i, y in enumerate(eval_set.labels or []):
            if y >= k:
                raise data_error(eval_src, f"row {i + 1}: class {y} is in the evaluation rows but not in "
                                           "the training rows; add training rows of that class")
        names = [str(c) for c in range(k)]
    for c, label in enumerate(names):
        if c not in present:
            hint = ("; raise --max-train-samples" if cfg.max_train_samples is not None else "")
            raise data_error(train_src, f"no training rows of class {c} ({label!r}) although the label "
                                        f"names list {len(names)} classes; add rows of that class or "
                                        f"pass --label-names with only the classes present{hint}")
    for i, y in enumerate(eval_set.labels or []):
        if y >= len(names):
            raise data_error(eval_src, f"row {i + 1}: label {y} is out of range for the {len(names)} "
                                       "label names; fix the row or pass --label-names")
    train.label_names = list(names)
    eval_set.label_names = list(names)
    return Splits(train=train, eval=eval_set, label_names=list(names))
