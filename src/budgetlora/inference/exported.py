"""Reading a folder written by `budgetlora export` for `predict` and `evaluate`.

An hf export is loaded with plain transformers and then served like a run (the run's precision,
the first-token cut, packed linear layers); an onnx export runs in ONNX Runtime behind a small
`nn.Module`, so the one inference loop (`predict_logits`) serves every kind of folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from budgetlora.errors import ConfigError, ModelLoadError

EXPORT_META = "budgetlora_export.json"  # what was exported, from which run, and its verification
EXPORT_CONFIG = "budgetlora_config.yaml"  # the run's settings: how to read data files, precision
FORMATS = ("hf", "onnx")


def read_export_meta(folder: Path) -> Optional[dict[str, Any]]:
    """The export's record, or None when `folder` is not an export."""
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable export record ({e}); export the run again") from None
    if meta.get("format") not in FORMATS:
        raise ModelLoadError(f"{path}: unknown export format {meta.get('format')!r}; export the run again")
    return meta


class OrtClassifier(nn.Module):
    """An ONNX Runtime session with the classifier's call signature: (input_ids, attention_mask)
    in, an output with `.logits` (a torch tensor) out. No parameters: casts and `.to()` are
    no-ops, and ONNX Runtime computes in the graph's own types."""

    def __init__(self, path: Path, threads: int = 1):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                **_: Any) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        feed = {k: v.cpu().numpy() for k, v in feed.items() if k in self.inputs}
        return SequenceClassifierOutput(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))


def load_exported(folder: Path, meta: dict[str, Any], cfg: Any, threads: int = 1) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, adapter-style meta) of an exported folder, the shape of
    `modeling.load_trained`'s answer. `cfg` is the run's RunConfig (None where the export has
    none); `threads` is ONNX Runtime's thread count for each inference stream."""
    from budgetlora.core.hub import load_tokenizer
    from budgetlora.modeling import check_tokenizer_matches, first_token_last_layer, resolve_attn_implementation

    folder = Path(folder)
    tokenizer = load_tokenizer(str(folder))
    if meta["format"] == "onnx":
        onnx_path = folder / meta.get("onnx_file", "model.onnx")
        if not onnx_path.is_file():
            raise ModelLoadError(f"{folder}: {onnx_path.name} is missing; export the run again")
        try:
            model: nn.Module = OrtClassifier(onnx_path, threads)
        except ImportError:
            raise ConfigError("onnx exports run in ONNX Runtime: pip install 'budgetlora[export]'") from None
    else:
        from transformers import AutoModelForSequenceClassification

        attn = resolve_attn_implementation(cfg.model.attn_implementation if cfg is not None else "auto")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation=attn,
                                                                       dtype=torch.float32)
        except Exception as e:  # transformers raises OSError/ValueError for a damaged folder
            raise ModelLoadError(f"{folder}: cannot load the exported model ({str(e).splitlines()[0]})") from None
        check_tokenizer_matches(tokenizer, model.config, str(folder))
        if cfg is None or cfg.model.first_token_last_layer:
            first_token_last_layer(model)  # every exportable head reads the first token only
    run_meta = {"label_names": list(meta["label_names"]), "max_length": int(meta.get("max_length", 128)),
                "head": meta.get("head"), "base_model": meta.get("base_model"), "export": meta}
    return model.eval(), tokenizer, run_meta
