"""Agreement of exported models with `budgetlora predict`, and their accuracy (docs/EXPORT.md).

Each export is scored the way a user without budgetlora would score it: the hf folder with plain
transformers in fp32 (AutoModelForSequenceClassification, truncation at the tokenizer's
model_max_length), the onnx folders with ONNX Runtime. Their labels are compared with a
`budgetlora predict` submission of the same rows (the run folder, budgetlora's default CPU path).

    python docs/experiments/export_agreement.py DATA.csv PREDICT.csv HF_DIR ONNX_DIR [INT8_DIR]

DATA.csv: AG News rows (class 1-4, text) without a header, e.g. ../shared/data/ag_news/train_text_only.csv.
PREDICT.csv: `budgetlora predict --run RUN --input DATA.csv --output PREDICT.csv`.
"""

from __future__ import annotations

import csv
import json
import sys
import time

import numpy as np


def read_rows(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [" ".join(r[1:]) for r in rows], np.array([int(r[0]) - 1 for r in rows])


def batches(texts: list[str], tokenizer, size: int = 64):
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        yield idx, tokenizer([texts[i] for i in idx], truncation=True, padding=True, return_tensors="np")


def hf_labels(folder: str, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = np.zeros(len(texts), dtype=int)
    with torch.inference_mode():
        for idx, enc in batches(texts, tok):
            out[idx] = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.argmax(-1).numpy()
    return out


def onnx_labels(folder: str, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(folder)
    out = np.zeros(len(texts), dtype=int)
    for idx, enc in batches(texts, tok):
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        out[idx] = session.run(["logits"], feed)[0].argmax(-1)
    return out


def main(data: str, predicted: str, hf: str, onnx: str, int8: str = "") -> None:
    texts, gold = read_rows(data)
    with open(predicted, newline="", encoding="utf-8") as f:
        ours = np.array([int(r["Label"]) for r in csv.DictReader(f)])
    assert len(ours) == len(texts)
    report = {"rows": len(texts), "budgetlora_predict_accuracy": float((ours == gold).mean())}
    for name, fn, folder in (("hf", hf_labels, hf), ("onnx_fp32", onnx_labels, onnx), ("onnx_int8", onnx_labels, int8)):
        if not folder:
            continue
        start = time.perf_counter()
        labels = fn(folder, texts)
        report[name] = {"agreement_with_budgetlora_predict": float((labels == ours).mean()),
                        "disagreeing_rows": int((labels != ours).sum()),
                        "accuracy": float((labels == gold).mean()), "seconds": time.perf_counter() - start}
        print(name, report[name], flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
