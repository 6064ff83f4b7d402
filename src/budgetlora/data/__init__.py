"""Reading text-classification data, carving validation, tokenizing once and batching by length.

One concern a module: `readers` (files and Hub datasets -> `TextSet`), `safe_pickle` (unpickling
a stranger's file without running its code), `splits` (the run's training and validation texts),
`encoding` (tokenizing once, with a cache), `batching` (samplers, the dataset view, the collator),
and `checks` (the one-line `DataError` they all raise). Callers import from here.
"""

from budgetlora.data.batching import (
    LENGTH_BUCKET_BATCHES,
    Collator,
    EncodedDataset,
    LengthGroupedBatchSampler,
    ShardedBatchSampler,
    sorted_batches,
    train_batch_sampler,
)
from budgetlora.data.checks import PathLike
from budgetlora.data.encoding import (
    CHARS_PER_TOKEN_LIMIT,
    Encoded,
    encode,
    length_filter_indices,
    tokenizer_fingerprint,
    update_hash_with_texts,
)
from budgetlora.data.readers import AG_NEWS_LABELS, ID_COLUMNS, SUFFIXES, TextSet, load_file, load_hub_dataset
from budgetlora.data.safe_pickle import safe_load_pickle
from budgetlora.data.splits import Splits, prepare_splits, stratified_split

__all__ = [
    "AG_NEWS_LABELS", "CHARS_PER_TOKEN_LIMIT", "Collator", "Encoded", "EncodedDataset", "ID_COLUMNS",
    "LENGTH_BUCKET_BATCHES", "LengthGroupedBatchSampler",
    "ShardedBatchSampler", "PathLike", "SUFFIXES", "Splits", "TextSet",
    "encode", "length_filter_indices", "load_file", "load_hub_dataset", "prepare_splits",
    "safe_load_pickle", "sorted_batches", "stratified_split", "tokenizer_fingerprint",
    "train_batch_sampler", "update_hash_with_texts",
]
