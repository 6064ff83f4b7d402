"""A trained run as a standalone model: LoRA merged into the weights, written as a plain
transformers folder (`AutoModelForSequenceClassification`, `pipeline("text-classification")`) and
optionally as ONNX (through torch's own ONNX exporter) for ONNX Runtime.

Only heads that are a transformers class after merging can leave: `default` and `native`. The
`linear` head (`EncoderClassifier`) exists only inside budgetlora, so it is refused with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from budgetlora.config import ModelConfig
from budgetlora.errors import ConfigError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask")
ONNX_OPSET = 18  # ONNX Runtime 1.18+ (2024) runs it; new enough for torch's exporter

LINEAR_HEAD_REFUSAL = (
    "the run's head is 'linear' (budgetlora's EncoderClassifier: one linear layer on the encoder's "
    "first token), which no transformers class builds, so the folder would need budgetlora's code "
    "to load; train with --head native (the model's own head, same budget class) or --head default "
    "to export"
)


def exportable_head(head: str) -> None:
    """Refuse, in one line, a head that would need budgetlora's code after export."""
    if head == "linear":
        raise ConfigError(f"export: {LINEAR_HEAD_REFUSAL}")
    if head not in ("default", "native"):
        raise ConfigError(f"export: unknown head {head!r} in the run's adapter")


def merged_model(run_dir: Path, settings: Optional[ModelConfig], base_model: Optional[str] = None):
    """(merged fp32 model in eval mode, tokenizer, adapter meta) of a finished run, built for
    export: the plain forward pass (no first-token cut, whose hook and attention kernel only
    budgetlora installs) and eager attention (a plain matmul + softmax that every exporter and
    runtime takes)."""
    from budgetlora.modeling import load_trained, read_adapter_meta

    exportable_head(read_adapter_meta(Path(run_dir) / "adapter")["head"])
    settings = dataclasses.replace(settings or ModelConfig(), first_token_last_layer=False, attn_implementation="eager")
    model, tokenizer, meta = load_trained(run_dir, base_model, settings, merge=True)
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):  # a head added later that merges into custom code
        raise ConfigError(f"export: the merged model is a {type(model).__name__}, not a transformers model")
    return model.float().eval(), tokenizer, meta


def write_hf_folder(model: Any, tokenizer: Any, meta: dict[str, Any], folder: Path) -> None:
    """config.json (with id2label/label2id), model.safetensors and the tokenizer files.

    The tokenizer's `model_max_length` becomes the run's `max_length`, so `truncation=True` cuts
    texts where budgetlora cut them in training and prediction.
    """
    names = list(meta["label_names"])
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.config.problem_type = "single_label_classification"
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.model_max_length = int(meta.get("max_length", 128))
    tokenizer.save_pretrained(str(folder))


class _LogitsOnly(nn.Module):
    """The classifier as a function of (input_ids, attention_mask) to logits: the graph's
    signature, with no optional inputs or output dataclass for the exporter to trace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def write_onnx(model: nn.Module, path: Path, pad_token_id: int = 0) -> None:
    """The merged fp32 model as one ONNX file with dynamic batch and sequence axes, through
    torch's maintained (dynamo) exporter."""
    ids = torch.full((2, 8), max(int(pad_token_id) + 1, 5), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so the traced graph is the general one
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: sequence} for name in ONNX_INPUTS}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed", for every export
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _LogitsOnly(model).eval(), (ids, mask), dynamo=True, input_names=list(ONNX_INPUTS),
                output_names=["logits"], dynamic_shapes=shapes, opset_version=ONNX_OPSET, optimize=True,
                verbose=False,
            )
            program.save(str(path))
    finally:
        exporter_log.setLevel(level)


def quantize_onnx_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization: int8 weights per output channel, activations
    quantized per batch at run time (the scheme of `budgetlora predict --quantize`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process the graph is logged on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.disable(logging.NOTSET)
