# An attention for transformers' AttentionInterface: eager (matmul, additive mask, softmax, matmul)
# with the softmax computed in fp32 and cast back. Measured as a CPU default on 2026-11-22 and not
# kept (docs/BENCHMARKS.md); imported by predict_softmax.py and train_attention_dropout.py.
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "eager_fp32_softmax"


def eager_fp32_softmax_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(NAME, eager_fp32_softmax_attention)
AttentionMaskInterface.register(NAME, eager_mask)
