"""Tests of budgetlora.data.batching: the length-grouped sampler, inference batches, the collator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from budgetlora.config import DataConfig
from budgetlora.data import (
    Collator,
    Encoded,
    EncodedDataset,
    LengthGroupedBatchSampler,
    encode,
    load_file,
    sorted_batches,
)
from tiny import make_tokenizer

CFG = DataConfig()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(5, 200, size=n).tolist()


def test_sampler_permutation_and_determinism():
    lengths = _lengths(1003)
    s = LengthGroupedBatchSampler(lengths, 16, seed=1, bucket_batches=10)
    rng_state = torch.get_rng_state()
    e0 = list(s)
    assert torch.equal(rng_state, torch.get_rng_state())  # the global RNG is untouched
    assert sorted(i for b in e0 for i in b) == list(range(1003))
    assert len(e0) == len(s) == 63
    assert list(LengthGroupedBatchSampler(lengths, 16, seed=1, bucket_batches=10)) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(i for b in e1 for i in b) == list(range(1003))
    s.set_epoch(0)
    assert list(s) == e0


def test_sampler_groups_lengths():
    lengths = _lengths(2000)
    bs = 32

    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    grouped = list(LengthGroupedBatchSampler(lengths, bs, seed=0))
    perm = np.random.default_rng(0).permutation(len(lengths)).tolist()
    random_batches = [perm[i:i + bs] for i in range(0, len(perm), bs)]
    assert waste(grouped) < 0.1 * waste(random_batches)


def test_sampler_sequential_and_drop_last():
    s = LengthGroupedBatchSampler([3] * 10, 4, shuffle=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    d = LengthGroupedBatchSampler(_lengths(10), 4, drop_last=True)
    assert len(d) == 2 and all(len(b) == 4 for b in d)


def test_sampler_resume_mid_epoch():
    lengths = _lengths(500)
    s = LengthGroupedBatchSampler(lengths, 8, seed=5, bucket_batches=4)
    s.set_epoch(2)
    it = iter(s)
    seen = [next(it) for _ in range(7)]
    state = s.state_dict()
    assert state == {"epoch": 2, "seed": 5, "batches_done": 7}
    rest = list(it)
    resumed = LengthGroupedBatchSampler(lengths, 8, seed=5, bucket_batches=4)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert len(resumed) == len(rest)
    assert list(resumed) == rest
    assert seen + rest == s.batches(2)
    assert len(resumed) == len(s.batches(2))  # the next epoch is whole again
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, 8, seed=6).load_state_dict(state)


def test_sorted_batches():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = sorted_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_collator_and_dataset():
    enc = Encoded([[5, 6, 7], [8], [9, 10]], [1, 0, 3])
    ds = EncodedDataset(enc)
    assert len(ds) == 3 and ds[1] == {"input_ids": [8], "labels": 0}
    batch = Collator(pad_token_id=1)([ds[1], ds[2]])
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[8, 1], [9, 10]]  # T = longest row of THIS batch
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [0, 3]
    full = Collator(0)([ds[i] for i in range(3)])
    assert full["input_ids"].shape == (3, 3) and full["labels"].shape == (3,)
    unlabelled = EncodedDataset(Encoded([[1, 2]], None))
    assert unlabelled[0] == {"input_ids": [1, 2]}
    assert set(Collator(0)([unlabelled[0]])) == {"input_ids", "attention_mask"}


def test_dataloader_end_to_end(tokenizer, tiny_train_csv):
    ts = load_file(tiny_train_csv, CFG)
    enc = encode(ts.texts, tokenizer, 32, labels=ts.labels)
    sampler = LengthGroupedBatchSampler(enc.lengths, 16, seed=0)
    loader = torch.utils.data.DataLoader(EncodedDataset(enc), batch_sampler=sampler,
                                         collate_fn=Collator(tokenizer.pad_token_id))
    rows = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
        rows += len(batch["labels"])
    assert rows == len(ts)
