"""Run by `budgetlora export` as a script in a fresh interpreter: load an exported folder the way
a user without budgetlora would (transformers, or ONNX Runtime for ONNX) and score texts.

    python export_check.py FOLDER FORMAT ONNX_FILE TEXTS.json OUT.json

It must never import budgetlora: an import hook refuses it, so a folder that needed budgetlora's
code (or `trust_remote_code`) fails here instead of on the user's machine. It writes the logits
(and, for the hf format, the labels `pipeline("text-classification")` gives) to OUT.json.
"""

from __future__ import annotations

import importlib.abc
import json
import sys


class _NoBudgetlora(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the finder protocol
        if name == "budgetlora" or name.startswith("budgetlora."):
            raise ImportError(f"the exported folder needed {name}; an export must load without budgetlora")
        return None


def _batches(texts: list[str], tokenizer, size: int = 32):
    """Rows sorted by length (less padding), each batch tokenized like a user would:
    truncation at the tokenizer's model_max_length, padding to the batch's longest row."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        yield idx, tokenizer([texts[i] for i in idx], truncation=True, padding=True, return_tensors="np")


def hf_logits(folder: str, texts: list[str]) -> tuple[list[list[float]], list[str]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logits: list = [None] * len(texts)
    with torch.inference_mode():
        for idx, enc in _batches(texts, tokenizer):
            out = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.float()
            for i, row in zip(idx, out.tolist()):
                logits[i] = row
    classify = pipeline("text-classification", model=folder, tokenizer=folder)
    labels = [r["label"] for r in classify(texts, truncation=True, batch_size=32)]
    return logits, labels


def onnx_logits(folder: str, onnx_file: str, texts: list[str]) -> list[list[float]]:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(f"{folder}/{onnx_file}", providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logits: list = [None] * len(texts)
    for idx, enc in _batches(texts, tokenizer):
        feed = {k: v.astype("int64") for k, v in enc.items() if k in wanted}
        for i, row in zip(idx, session.run(["logits"], feed)[0].tolist()):
            logits[i] = row
    return logits


def main(argv: list[str]) -> int:
    folder, fmt, onnx_file, texts_path, out_path = argv
    sys.meta_path.insert(0, _NoBudgetlora())
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    labels = None
    if fmt == "hf":
        logits, labels = hf_logits(folder, texts)
    else:
        logits = onnx_logits(folder, onnx_file, texts)
    result = {"logits": logits, "pipeline_labels": labels,
              "budgetlora_imported": any(m == "budgetlora" or m.startswith("budgetlora.") for m in sys.modules)}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
