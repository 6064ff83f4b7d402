"""Tests of budgetlora.data.encoding: tokenizing once, the token cache, the length filter."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from budgetlora.data import Encoded, encode, length_filter_indices
from tiny import make_texts, make_tokenizer

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_encode_matches_tokenizer(tokenizer):
    texts, labels = make_texts(50, seed=3, max_words=60)
    enc = encode(texts, tokenizer, max_length=16, labels=labels)
    assert isinstance(enc, Encoded) and enc.labels == labels
    assert enc.input_ids == tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert max(enc.lengths) == 16 and min(enc.lengths) < 16
    assert encode([], tokenizer, 16).input_ids == []


def test_encode_cache_hit(tokenizer, tmp_path, monkeypatch):
    texts, labels = make_texts(30, seed=4)
    first = encode(texts, tokenizer, 32, labels=labels, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("tokenizer called despite a cache hit")

    monkeypatch.setattr(type(tokenizer), "__call__", boom)
    second = encode(texts, tokenizer, 32, labels=labels, cache_dir=tmp_path)
    assert second.input_ids == first.input_ids and second.labels == labels
    monkeypatch.undo()
    encode(texts, tokenizer, 24, cache_dir=tmp_path)  # another max_length: another entry
    encode(texts[:-1], tokenizer, 32, cache_dir=tmp_path)  # other texts: another entry
    assert len(list(tmp_path.glob("*.npz"))) == 3
    files[0].write_bytes(b"damaged")  # a broken cache entry is recomputed
    assert encode(texts, tokenizer, 32, cache_dir=tmp_path).input_ids == first.input_ids


def test_encode_cache_write_leaves_only_entries(tokenizer, tmp_path, caplog):
    texts, _ = make_texts(20, seed=6)
    cache = tmp_path / "not" / "yet"  # created on the first write
    first = encode(texts, tokenizer, 32, cache_dir=cache)
    encode(texts[:5], tokenizer, 32, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(n.startswith("tokens-") and n.endswith(".npz") for n in files), files
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="budgetlora.data"):
        # an unwritable cache is only a lost shortcut: the ids still come back
        assert encode(texts, tokenizer, 32, cache_dir=blocked).input_ids == first.input_ids
    assert "could not write the token cache" in caplog.text


def test_encode_megabyte_text_is_cheap(tokenizer):
    start = time.monotonic()
    enc = encode(["goal " * 200_000, "short text"], tokenizer, max_length=32)
    assert time.monotonic() - start < 2
    assert enc.lengths[0] == 32


def test_length_filter_indices():
    lengths = list(range(1, 101))
    assert length_filter_indices(lengths, 0, 100) == list(range(100))
    keep = length_filter_indices(lengths, 10, 90)
    assert keep == [i for i, n in enumerate(lengths) if np.percentile(lengths, 10) <= n <= np.percentile(lengths, 90)]
    assert 0 not in keep and 99 not in keep
    assert length_filter_indices([], 1, 99) == []
