"""Writers of small data files in every format, shared by the data tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from budgetlora.data import AG_NEWS_LABELS
from tiny import make_texts


def write_ag_rows(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return path


def frame(n: int = 12, names: bool = False) -> pd.DataFrame:
    texts, labels = make_texts(n, seed=5)
    texts[1] = 'a "quoted" text, with a comma,\ta tab and\na newline'
    lab = [AG_NEWS_LABELS[y] for y in labels] if names else labels
    return pd.DataFrame({"id": list(range(100, 100 + n)), "text": texts, "label": lab})


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".json":
        df.to_json(path, orient="records", force_ascii=False)  # an array of objects
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".pkl":
        df.to_pickle(path)
    else:
        raise AssertionError(suffix)
    return path
