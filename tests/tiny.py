"""Tiny models and data built in code, so unit tests need no network and no downloads.

The models are the real transformers architectures (hidden size 32, 2 layers) with a WordPiece
tokenizer trained here on the synthetic corpus below.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

# Words that make each class learnable; the rest of each text is shared filler.
CLASS_WORDS = [
    ["election", "minister", "war", "embassy", "treaty", "rebels"],
    ["match", "goal", "coach", "league", "olympic", "season"],
    ["shares", "profit", "market", "bank", "earnings", "merger"],
    ["software", "internet", "chip", "space", "computer", "research"],
]
FILLER = ["the", "a", "on", "in", "of", "said", "today", "new", "report", "after", "with", "for"]
LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]

ARCH_CONFIGS = {
    "roberta": ("RobertaConfig", dict(max_position_embeddings=130, type_vocab_size=1)),
    "bert": ("BertConfig", dict(max_position_embeddings=128)),
    "distilbert": ("DistilBertConfig", dict(max_position_embeddings=128)),
    "mpnet": ("MPNetConfig", dict(max_position_embeddings=130)),
    "electra": ("ElectraConfig", dict(max_position_embeddings=128, embedding_size=32)),
    "deberta-v2": ("DebertaV2Config", dict(max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False)),
}


def make_texts(n: int, seed: int = 0, min_words: int = 4, max_words: int = 20) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 4
        words = [rng.choice(FILLER) for _ in range(rng.randint(min_words, max_words))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(CLASS_WORDS[label]))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def write_agnews_csv(path: Path, n: int, seed: int = 0) -> Path:
    """Rows in the original AG News format: no header, class 1..4, title, description."""
    texts, labels = make_texts(n, seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for t, y in zip(texts, labels):
            words = t.split()
            w.writerow([y + 1, " ".join(words[:3]), " ".join(words[3:])])
    return path


def make_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts, _ = make_texts(400, seed=123)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", bos_token="[CLS]", eos_token="[SEP]", model_max_length=128,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(arch: str = "roberta", vocab_size: int = 200, pad_token_id: int = 0, num_labels: int = 4,
                initializer_range: float = 0.02, **overrides):
    import transformers

    cls_name, extra = ARCH_CONFIGS[arch]
    cls = getattr(transformers, cls_name)
    common = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=pad_token_id, **overrides)
    if arch == "distilbert":
        return cls(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common, **extra)
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common, **extra)


def make_tiny_model(out_dir: Path, arch: str = "roberta", seed: int = 0, pretrain_steps: int = 0) -> Path:
    """A saved tiny pretrained-style model folder: config, safetensors weights, tokenizer.

    A randomly initialised encoder this small barely moves under LoRA in a few dozen steps, so tests
    that check that training *learns* use `pretrain_steps`: the whole model is first fine-tuned
    briefly on other synthetic rows, like a real pretrained encoder whose features already carry
    the signal, and only its encoder is saved (the head is new, as in real use).
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out_dir)
    cfg = tiny_config(arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if not pretrain_steps:
        AutoModel.from_config(cfg).save_pretrained(str(out_dir))
        return out_dir
    full = AutoModelForSequenceClassification.from_config(cfg)
    texts, labels = make_texts(400, seed=99)
    enc = tok(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.AdamW(full.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(pretrain_steps):
        idx = torch.randint(0, len(texts), (32,), generator=g)
        loss = full(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=y[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    full.base_model.save_pretrained(str(out_dir))
    return out_dir
