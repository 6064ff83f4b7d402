"""Figures written next to a run's outputs (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Optional, Sequence, Union

import numpy as np

# A figure goes to a file path, or to an open binary file (a report inlines it from memory).
Target = Union[str, Path, IO[bytes]]


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend), for every figure the package writes."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def read_log(log_path: Union[str, Path]) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl (a line cut short by a kill is skipped)."""
    records = []
    for line in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plot_curves(log_path: Union[str, Path], out_path: Target) -> None:
    """curves.png: `plot_learning_curves` of a run's log.jsonl."""
    plot_learning_curves(read_log(log_path), out_path)


def plot_learning_curves(records: Sequence[dict[str, Any]], out: Target, title: str = "budgetlora training") -> None:
    """Loss (left) and accuracy (right) against optimizer step, training and validation."""
    plt = pyplot()
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (train_key, eval_key, what) in zip((ax_loss, ax_acc), (("loss", "eval_loss", "loss"),
                                                                   ("train_accuracy", "eval_accuracy", "accuracy"))):
        points = [r for r in train if train_key in r]
        if points:
            ax.plot([r["step"] for r in points], [r[train_key] for r in points], color="tab:blue", label=f"training {what}")
        points = [r for r in evals if eval_key in r]
        if points:
            ax.plot([r["step"] for r in points], [r[eval_key] for r in points], "o-", color="tab:orange", label=f"validation {what}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, label_names: Sequence[str], out_path: Target, title: str = "") -> None:
    plt = pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ConfusionMatrixDisplay(matrix, display_labels=list(label_names)).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_reliability(bins: Sequence[dict[str, Any]], out: Target, calibrated: Optional[Sequence[dict[str, Any]]] = None,
                     title: str = "") -> None:
    """Reliability diagram: accuracy against confidence per bin (bars: the model's own softmax;
    line: after temperature scaling), the diagonal being perfect calibration; the bins come from
    inference.calibration.reliability_bins (dicts with lower, upper, count, confidence, accuracy)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    full = [b for b in bins if b["count"]]
    ax.bar([b["lower"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           color="tab:blue", alpha=0.55, edgecolor="white", label="softmax")
    if calibrated:
        points = [b for b in calibrated if b["count"]]
        ax.plot([b["confidence"] for b in points], [b["accuracy"] for b in points], "o-", color="tab:orange",
                label="temperature-scaled")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_prediction_sample(sample: Sequence[dict[str, Any]], label_names: Sequence[str], out: Target,
                           text_chars: int = 48) -> None:
    """Predictions on a few rows, two to a line: each row's text over one bar per class of its
    probability; the prediction's bar green when right and red when wrong, the gold class's name
    in bold."""
    plt = pyplot()
    cols = 2 if len(sample) > 1 else 1
    lines = max(1, -(-len(sample) // cols))
    fig, axes = plt.subplots(lines, cols, figsize=(10, (0.2 * len(label_names) + 0.55) * lines + 0.3), squeeze=False)
    for ax in axes.flat[len(sample):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, sample):
        probs = row["probabilities"]
        right = row["predicted"] == row["gold"]
        colors = ["lightgray"] * len(probs)
        colors[row["predicted"]] = "tab:green" if right else "tab:red"
        ax.barh(range(len(probs)), probs, color=colors)
        ax.set_xlim(0, 1)
        ax.set_yticks(range(len(probs)), [str(name) for name in label_names], fontsize=7)
        ax.get_yticklabels()[row["gold"]].set_fontweight("bold")
        ax.invert_yaxis()  # first class on top
        ax.set_xticks([])
        text = " ".join(str(row["text"]).split())
        text = text if len(text) <= text_chars else text[: text_chars - 1] + "…"
        # parse_math=False: a '$' in a news text is a dollar, not mathtext
        ax.set_title(f"{text}\n[gold {label_names[row['gold']]}, predicted {label_names[row['predicted']]} "
                     f"{probs[row['predicted']]:.2f}]", fontsize=7, loc="left", parse_math=False,
                     color="black" if right else "darkred")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_accuracy_vs_params(points: Sequence[tuple[str, int, float]], out: Target, ylabel: str = "accuracy",
                            budget: Optional[int] = None) -> None:
    """One dot per run: trainable parameters (x, log scale: runs differ by factors) against
    accuracy (y), each dot labelled; the budget as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (name, params, acc) in enumerate(points):
        ax.scatter([params], [acc], s=40)
        # alternate label offsets so runs with close scores do not print over each other
        ax.annotate(name, (params, acc), textcoords="offset points", xytext=(6, 6 if k % 2 == 0 else -12),
                    fontsize=8, parse_math=False)
    ax.set_xscale("log")
    if budget:
        ax.axvline(budget, color="gray", linestyle="--", linewidth=1, label=f"budget {budget:,}")
        ax.legend(fontsize=8)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
