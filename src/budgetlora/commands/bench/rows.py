"""The rows: carved once from the user's file and written as AG-News-style files (class 1..K,
text) that both pipelines read, so both see the same training and validation rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from budgetlora.errors import UserError

PathLike = Union[str, Path]


def write_rows(path: Path, labels: Iterable[int], texts: Iterable[str]) -> None:
    """An AG-News-style file: no header, every field quoted, class 1..K (label + 1) then text."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for y, text in zip(labels, texts):
            w.writerow([int(y) + 1, text])


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
    train_csv, val_csv = out / "train.csv", out / "validation.csv"
    write_rows(train_csv, splits.train.labels, splits.train.texts)
    write_rows(val_csv, splits.eval.labels, splits.eval.texts)
    info = {
        "source_rows": n,
        "val_fraction": round(fraction, 6),
        "train_rows": len(splits.train),
        "eval_rows": len(splits.eval),
        "label_names": splits.label_names,
    }
    return train_csv, val_csv, info


def read_rows(path: PathLike, limit: Optional[int] = None):
    """A carved file the notebook way: pandas, no header, class 1..K then text (labels 0..K-1)."""
    import pandas as pd

    df = pd.read_csv(path, header=None, names=["label", "text"], dtype={"label": int, "text": str}, keep_default_na=False)
    df["label"] = df["label"] - 1
    return df.iloc[:limit].reset_index(drop=True) if limit else df


def ensure_files(train_file: PathLike, samples: int, eval_rows: int, seed: int, out_dir: Path,
                 eval_file: Optional[PathLike]) -> tuple[Path, Path]:
    """The carved (train, validation) files: the given ones, or carved here when `eval_file` is None."""
    if eval_file is not None:
        return Path(train_file), Path(eval_file)
    tr, va, _ = carve_rows(train_file, samples, eval_rows, seed, out_dir)
    return tr, va
