"""Figures written next to a run's outputs (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend), for every figure the package writes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(log_path: Union[str, Path], out_path: Union[str, Path]) -> None:
    """Training loss and validation accuracy against optimizer step, from log.jsonl."""
    plt = pyplot()
    records = [json.loads(line) for line in Path(log_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="train loss")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    if evals:
        ax2.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", color="tab:orange", label="val accuracy")
    ax2.set_ylabel("validation accuracy", color="tab:orange")
    ax1.set_title("budgetlora training")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, label_names: Sequence[str], out_path: Union[str, Path], title: str = "") -> None:
    plt = pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ConfusionMatrixDisplay(matrix, display_labels=list(label_names)).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
