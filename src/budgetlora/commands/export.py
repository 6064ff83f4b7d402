"""`budgetlora export`: a finished run as a standalone model folder that leaves budgetlora.

`--format hf`: LoRA merged into the weights, a plain transformers folder (config.json with
id2label/label2id, model.safetensors, tokenizer files, README.md with the Hub's metadata header)
that `AutoModelForSequenceClassification` and `pipeline("text-classification")` load without
budgetlora and without `trust_remote_code`. `--format onnx`: the same model as one ONNX graph
(dynamic batch and sequence axes) for ONNX Runtime, `--quantize int8` with int8 weights.

Verification is part of the export: the folder is written beside OUT under a temporary name,
loaded in a fresh interpreter that refuses to import budgetlora (`export_check.py`), scored on the
run's validation rows and compared with budgetlora's own fp32 logits of the same rows. Only a
folder within the tolerance below is renamed to OUT; otherwise nothing is written at OUT (an
existing OUT replaced with --overwrite stays as it was) and the command fails with the figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from budgetlora.errors import ConfigError, ExportError, RunDirError

FORMATS = ("hf", "onnx")
QUANTIZE = ("int8",)
DEFAULT_VERIFY_ROWS = 512

# Tolerances of the verification. fp32 (hf, onnx): the same function up to float rounding, so the
# class probabilities may differ by 1e-3 at most, and a label may differ only on a row whose two
# best classes are closer than twice that (a tie within the tolerance). int8: weights rounded to
# 8 bits move probabilities by a few hundredths; at least 97% of the labels must agree (measured
# on MiniLM: docs/EXPORT.md).
FP32_MAX_PROB_DIFF = 1e-3
INT8_MIN_AGREEMENT = 0.97


@dataclass
class Verification:
    """How the exported folder, loaded without budgetlora, compares with budgetlora's logits."""

    rows: int
    label_agreement: float  # share of rows with the same label
    max_prob_diff: float  # largest |p_export - p_budgetlora| over rows and classes
    pipeline_agreement: Optional[float]  # hf: pipeline("text-classification")'s labels, by name
    tolerance: str
    passed: bool


@dataclass
class ExportResult:
    output: Path
    format: str
    quantize: Optional[str]
    head: str
    size_bytes: int
    seconds: float
    verification: Verification
    pushed_to: Optional[str] = None


def tolerance_text(quantize: Optional[str]) -> str:
    if quantize:
        return f"at least {INT8_MIN_AGREEMENT:.0%} of labels agree (int8 weights)"
    return (f"probabilities within {FP32_MAX_PROB_DIFF:g}; labels agree except where the two best classes "
            f"are within {2 * FP32_MAX_PROB_DIFF:g}")


def compare(reference: Any, exported: Any, quantize: Optional[str],
            pipeline_labels: Optional[list[str]] = None, label_names: Optional[list[str]] = None) -> Verification:
    """Verification figures of exported logits against budgetlora's (both [rows, classes]); for
    hf, `pipeline_labels` are pipeline("text-classification")'s answers, held to the same rule."""
    import torch

    ref_p, exp_p = torch.as_tensor(reference).float().softmax(-1), torch.as_tensor(exported).float().softmax(-1)
    ref_y = ref_p.argmax(-1)
    same = ref_y == exp_p.argmax(-1)
    max_diff = (ref_p - exp_p).abs().max().item()
    top2 = ref_p.topk(min(2, ref_p.shape[-1]), dim=-1).values
    clear = (top2[:, 0] - top2[:, -1] > 2 * FP32_MAX_PROB_DIFF) | (ref_p.shape[-1] == 1)
    if quantize:
        passed = same.float().mean().item() >= INT8_MIN_AGREEMENT
    else:
        passed = max_diff <= FP32_MAX_PROB_DIFF and bool(same[clear].all())
    pipe = None
    if pipeline_labels is not None and label_names is not None:
        pipe_same = torch.tensor([label_names[y] == got for y, got in zip(ref_y.tolist(), pipeline_labels)])
        pipe = pipe_same.float().mean().item()
        passed = passed and len(pipeline_labels) == len(ref_y) and bool(pipe_same[clear].all())
    return Verification(len(ref_y), same.float().mean().item(), max_diff, pipe, tolerance_text(quantize), passed)


def _check_request(run_dir: Path, output: Path, fmt: str, quantize: Optional[str], overwrite: bool) -> None:
    """Every refusal that needs no model: one line each, before anything is loaded or written."""
    from budgetlora.core.files import check_writable, is_finished_run

    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize: {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if quantize and fmt != "onnx":
        raise ConfigError("--quantize int8: quantized exports are ONNX graphs; add --format onnx")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run folder")
    if not is_finished_run(run_dir) or not (run_dir / "adapter").is_dir():
        raise RunDirError(f"{run_dir}: not a finished run (metrics.json says finished and adapter/ exists once "
                          f"training ends); finish it with `budgetlora train --resume {run_dir}` first")
    if output.resolve() == run_dir.resolve() or run_dir.resolve() in output.resolve().parents:
        raise RunDirError(f"{output}: inside the run folder; export to a folder of its own")
    if output.exists() and not overwrite:
        raise RunDirError(f"{output}: exists; pass --overwrite to replace it, or choose another --output")
    if output.exists() and not output.is_dir():
        raise RunDirError(f"{output}: exists and is not a folder")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
        except ImportError as e:
            raise ConfigError(f"--format onnx needs {e.name}: pip install 'budgetlora[export]'") from None
    check_writable(output.parent)


def _sample_texts(cfg: Any, verify_data: Optional[Path], rows: int) -> tuple[list[str], str]:
    """(texts to verify on, where they come from): the run's validation rows, or --verify-data."""
    from budgetlora.config import DataConfig
    from budgetlora.data import load_file, prepare_splits
    from budgetlora.errors import UserError

    if rows < 1:
        raise ConfigError(f"--verify-rows: must be at least 1, got {rows}")
    dcfg = cfg.data if cfg is not None else DataConfig()
    if verify_data is not None:
        texts = load_file(verify_data, dcfg, require_labels=False).texts
        where = str(verify_data)
    else:
        if cfg is None:
            raise ConfigError("export: the run has no config.yaml to find its validation rows; pass --verify-data FILE")
        try:
            texts = prepare_splits(cfg.data, cfg.train.seed).eval.texts
        except (UserError, OSError) as e:
            raise ConfigError(f"export: cannot read the run's validation rows to verify the export ({e}); "
                              "pass --verify-data FILE with texts to verify on") from None
        where = "the run's validation rows"
    if not texts:
        raise ConfigError(f"export: {where} hold no texts to verify on")
    return texts[:rows], where


def reference_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """budgetlora's own logits of `texts`: its tokenization, batching and inference loop, in fp32."""
    import torch

    from budgetlora.data import Collator, encode
    from budgetlora.inference.runner import predict_logits

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = encode(texts, tokenizer, max_length).input_ids
    return predict_logits(model, ids, 32, Collator(pad), torch.device("cpu"), "fp32")


def _env_without_budgetlora() -> dict[str, str]:
    import os

    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and not (Path(p) / "budgetlora" / "__init__.py").is_file()]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _check_script() -> str:
    return (Path(__file__).with_name("export_check.py")).read_text(encoding="utf-8")


def verify_folder(folder: Path, fmt: str, onnx_file: str, texts: list[str], reference: Any,
                  label_names: list[str], quantize: Optional[str], timeout: float = 1800) -> Verification:
    """Load `folder` in a fresh interpreter that cannot import budgetlora, score `texts`, compare."""
    with tempfile.TemporaryDirectory(prefix="budgetlora-verify-") as work:
        texts_path, out_path = Path(work) / "texts.json", Path(work) / "out.json"
        texts_path.write_text(json.dumps(texts), encoding="utf-8")
        # The work folder as the current one and no budgetlora source tree on PYTHONPATH, so nothing
        # of budgetlora is on the path by accident; the script's import hook refuses the rest.
        cmd = [sys.executable, "-c", _check_script(), str(folder.resolve()), fmt, onnx_file,
               str(texts_path), str(out_path)]
        try:
            done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=_env_without_budgetlora())
        except subprocess.TimeoutExpired:
            raise ExportError(f"export: loading the exported folder took over {timeout:.0f} s; nothing was written") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportError(f"export: the exported folder does not load without budgetlora ({last}); nothing was written")
        result = json.loads(out_path.read_text(encoding="utf-8"))
    if result["budgetlora_imported"]:
        raise ExportError("export: loading the exported folder imported budgetlora; nothing was written")
    return compare(reference, result["logits"], quantize, result["pipeline_labels"], label_names)


def _write_model_files(tmp: Path, fmt: str, quantize: Optional[str], model: Any, tokenizer: Any,
                       meta: dict[str, Any]) -> str:
    """The model files into `tmp`; the ONNX file's name ('' for hf)."""
    from budgetlora.modeling.export_model import ONNX_FILE, quantize_onnx_int8, write_hf_folder, write_onnx

    write_hf_folder(model, tokenizer, meta, tmp)
    if fmt == "hf":
        return ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if quantize:
        fp32 = tmp / ".fp32.onnx"
        write_onnx(model, fp32, pad)
        quantize_onnx_int8(fp32, tmp / ONNX_FILE)
        for leftover in tmp.glob(".fp32*"):  # the fp32 graph and any files the quantizer made beside it
            leftover.unlink()
    else:
        write_onnx(model, tmp / ONNX_FILE, pad)
    for weights in tmp.glob("*.safetensors"):  # ONNX Runtime reads the graph's own copy
        weights.unlink()
    return ONNX_FILE


def _record(run_dir: Path, fmt: str, quantize: Optional[str], onnx_file: str, meta: dict[str, Any],
            verification: Verification, source_of_rows: str) -> dict[str, Any]:
    import budgetlora

    return {
        "format": fmt, "quantize": quantize, "onnx_file": onnx_file or None,
        "label_names": list(meta["label_names"]), "max_length": int(meta.get("max_length", 128)),
        "head": meta["head"], "base_model": meta["base_model"], "source_run": str(run_dir.resolve()),
        "budgetlora_version": budgetlora.__version__,
        "verification": {**asdict(verification), "rows_from": source_of_rows},
    }


def export_run(
    run_dir: Union[str, Path],
    output: Union[str, Path],
    fmt: str = "hf",
    *,
    quantize: Optional[str] = None,
    overwrite: bool = False,
    push_to_hub: Optional[str] = None,
    base_model: Optional[str] = None,
    verify_data: Optional[Union[str, Path]] = None,
    verify_rows: int = DEFAULT_VERIFY_ROWS,
) -> ExportResult:
    """Merge, write, verify in a fresh interpreter, then rename into place (see the module doc)."""
    from budgetlora.config import load_config
    from budgetlora.core.files import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temporaries
    from budgetlora.inference.exported import EXPORT_CONFIG, EXPORT_META
    from budgetlora.modeling import read_adapter_meta
    from budgetlora.modeling.export_model import exportable_head, merged_model

    start = time.perf_counter()
    run_dir, output = Path(run_dir).expanduser(), Path(output).expanduser()
    _check_request(run_dir, output, fmt, quantize, overwrite)
    exportable_head(read_adapter_meta(run_dir / "adapter")["head"])  # before the minutes of loading
    cfg_path = run_dir / "config.yaml"
    cfg = load_config(cfg_path) if cfg_path.is_file() else None
    texts, rows_from = _sample_texts(cfg, Path(verify_data) if verify_data else None, verify_rows)
    model, tokenizer, meta = merged_model(run_dir, cfg.model if cfg is not None else None, base_model)
    reference = reference_logits(model, tokenizer, texts, int(meta.get("max_length", 128)))
    remove_stale_temporaries(output)
    with atomic_path(output, directory=True) as tmp:
        onnx_file = _write_model_files(tmp, fmt, quantize, model, tokenizer, meta)
        if cfg_path.is_file():
            shutil.copyfile(cfg_path, tmp / EXPORT_CONFIG)
        verification = verify_folder(tmp, fmt, onnx_file, texts, reference, list(meta["label_names"]), quantize)
        if not verification.passed:
            raise ExportError(
                f"export: the exported model does not reproduce the run ({verification_text(verification)}); "
                "nothing was written" + ("" if not output.exists() else f", {output} is as it was"))
        record = _record(run_dir, fmt, quantize, onnx_file, meta, verification, rows_from)
        atomic_write_json(tmp / EXPORT_META, record)
        atomic_write_text(tmp / "README.md", model_card(record, _read_metrics(run_dir), cfg))
        _default_permissions(tmp)
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    result = ExportResult(output, fmt, quantize, meta["head"], size, time.perf_counter() - start, verification)
    if push_to_hub:
        result.pushed_to = push_folder(output, push_to_hub)
    return result


def _default_permissions(folder: Path) -> None:
    """The modes a plain `mkdir`/`open` would have given under the user's umask: the temporary
    names the folder was written under are private (0700/0600), a model folder is for sharing."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def verification_text(v: Verification) -> str:
    text = (f"{v.rows} rows: labels agree on {v.label_agreement:.2%}, largest probability difference "
            f"{v.max_prob_diff:.2g}")
    if v.pipeline_agreement is not None:
        text += f", pipeline() labels agree on {v.pipeline_agreement:.2%}"
    return text + f"; tolerance: {v.tolerance}"


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _hub_id(name: Optional[str]) -> Optional[str]:
    """`name` when it reads as a Hub id ('org/model' or 'model'), None for a local folder."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def model_card(record: dict[str, Any], metrics: dict[str, Any], cfg: Any) -> str:
    """README.md with the Hub's metadata header (huggingface_hub's ModelCardData)."""
    from huggingface_hub import ModelCardData

    base = _hub_id(record["base_model"])
    dataset = cfg.data.dataset if cfg is not None and not cfg.data.train_file else None
    fields = {k: v for k, v in {
        "trainable_parameters": metrics.get("trainable_params"), "budget": metrics.get("budget"),
        "head": record["head"], "validation_accuracy": metrics.get("best_eval_accuracy"),
        "format": record["format"], "quantize": record["quantize"],
    }.items() if v is not None}
    header = ModelCardData(
        base_model=base, library_name="transformers" if record["format"] == "hf" else "onnx",
        pipeline_tag="text-classification", datasets=[dataset] if dataset else None, metrics=["accuracy"],
        tags=["budgetlora", "lora", "text-classification"] + (["onnx"] if record["format"] == "onnx" else []),
        budgetlora=fields,
    ).to_yaml()
    v = record["verification"]
    labels = ", ".join(record["label_names"])
    acc = metrics.get("best_eval_accuracy")
    usage = _usage(record)
    budget, trained = _count(fields.get("budget")), _count(fields.get("trainable_parameters"))
    return f"""---
{header}
---

# {Path(record["source_run"]).name} ({record["format"]}{", " + record["quantize"] if record["quantize"] else ""})

A LoRA fine-tune of `{record["base_model"]}` for text classification, trained by budgetlora under a
budget of {budget} trainable parameters ({trained} trained,
`{record["head"]}` head) and merged into the weights: no budgetlora or peft needed to run it.

- **Labels**: {labels}
- **Validation accuracy** (budgetlora, at training): {f"{acc:.4f}" if acc is not None else "not recorded"}
- **Texts are cut at** {record["max_length"]} tokens (the tokenizer's `model_max_length`; pass `truncation=True`)
- **Verified** when exported, loaded without budgetlora against budgetlora's own logits on
  {v["rows"]} rows ({v["rows_from"]}): labels agree on {v["label_agreement"]:.2%}, largest probability
  difference {v["max_prob_diff"]:.2g} (tolerance: {v["tolerance"]})

## Use

```python
{usage}
```
"""


def _count(n: Optional[int]) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _usage(record: dict[str, Any]) -> str:
    if record["format"] == "hf":
        return ('from transformers import pipeline\n\n'
                'classify = pipeline("text-classification", model="PATH_OR_REPO")\n'
                'classify(["Stocks rallied after the earnings report."], truncation=True)')
    return ('import onnxruntime as ort\nfrom transformers import AutoTokenizer\n\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH")\n'
            f'session = ort.InferenceSession("PATH/{record["onnx_file"]}")\n'
            'enc = tokenizer(["Stocks rallied after the earnings report."], truncation=True, padding=True, return_tensors="np")\n'
            'logits = session.run(["logits"], {k: enc[k] for k in ("input_ids", "attention_mask")})[0]')


def push_folder(folder: Path, repo: str) -> str:
    """Upload the export to the Hub model repo `repo` (created if missing); its URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="budgetlora export")
    except Exception as e:  # offline, no token, no permission: huggingface_hub's errors vary by cause
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"--push-to-hub: could not upload to {repo} ({text}); the export is complete at "
                          f"{folder}, upload it later with `hf upload {repo} {folder}`") from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
