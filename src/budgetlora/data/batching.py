"""From encoded rows to tensors: the length-grouped training sampler (resumable mid-epoch), the
longest-first inference batches, the dataset view of encoded rows and the padding collator."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from budgetlora.data.encoding import Encoded


# Rows are sorted by length within buckets of this many batches: large enough that batches hold
# rows of similar length (little padding), small enough that each epoch's order stays random.
LENGTH_BUCKET_BATCHES = 50


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of rows of similar length, so per-batch padding stays small.

    Per epoch (own generator seeded with seed + epoch; the global RNG is never touched): shuffle
    all rows, cut into mega-buckets of `bucket_batches * batch_size`, sort each by length, cut
    into batches, shuffle the batch order. Randomness comes from the shuffles; homogeneity from
    the sort within a bucket.

    Resuming mid-epoch: `state_dict(batches_done)` records the epoch and how many of its batches
    were consumed; after `load_state_dict(state)` the next iteration yields exactly the remaining
    batches of that epoch (and `len()` counts only those), later epochs are complete again. Pass
    `batches_done` explicitly when a DataLoader prefetches (the sampler's own count would include
    batches fetched but not trained on).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = LENGTH_BUCKET_BATCHES,
        drop_last: bool = False,
    ):
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError("batch_size and bucket_batches must be >= 1")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._skip = 0

    def batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        """All batches of an epoch, in order (a pure function of seed and epoch)."""
        epoch = self.epoch if epoch is None else epoch
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            out = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            perm = torch.randperm(n, generator=g).tolist()
            mega = self.bucket_batches * bs
            out = []
            for start in range(0, n, mega):
                bucket = sorted(perm[start:start + mega], key=self.lengths.__getitem__, reverse=True)
                out.extend(bucket[i:i + bs] for i in range(0, len(bucket), bs))
            order = torch.randperm(len(out), generator=g).tolist()
            out = [out[i] for i in order]
        if self.drop_last:
            out = [b for b in out if len(b) == bs]
        return out

    def __iter__(self):
        batches = self.batches()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for b in batches[skip:]:
            self._yielded += 1
            yield b

    def __len__(self) -> int:
        n = len(self.lengths)
        full = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return max(full - self._skip, 0)

    def state_dict(self, batches_done: Optional[int] = None) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "batches_done": self._yielded if batches_done is None else int(batches_done),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, not {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches_done"])
        self._yielded = self._skip


def train_batch_sampler(lengths: Sequence[int], batch_size: int, *, seed: int,
                        group_by_length: bool = True) -> LengthGroupedBatchSampler:
    """The training loop's sampler: shuffled, length-grouped batches (or plain shuffled batches
    when `group_by_length` is off), never dropping the last short batch."""
    return LengthGroupedBatchSampler(
        lengths, batch_size, shuffle=True, seed=seed, drop_last=False,
        bucket_batches=LENGTH_BUCKET_BATCHES if group_by_length else 1,
    )


class ShardedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """One process's share of every batch of `batches` (several processes training one run): the
    batch cut into `world_size` contiguous pieces whose sizes differ by at most one row, so each
    step trains on exactly the rows one process would, whatever the batch's size. A batch with
    fewer rows than processes is first filled up by repeating its rows (every process must run
    a forward pass)."""

    def __init__(self, batches: LengthGroupedBatchSampler, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.batch_size = batches.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            while len(batch) < self.world_size:
                batch = batch + batch
            cut = [len(batch) * k // self.world_size for k in range(self.world_size + 1)]
            yield batch[cut[self.rank]:cut[self.rank + 1]]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Inference batches, longest rows first (memory peaks show at once); every index once."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class EncodedDataset(torch.utils.data.Dataset):
    """Row i -> {"input_ids": list[int], "labels": int} (no "labels" when there are none), plus
    row i of each `extra` tensor under its name (e.g. "teacher_logits" for distillation)."""

    def __init__(self, enc: Encoded, extra: Optional[dict[str, torch.Tensor]] = None):
        self.enc = enc
        self.extra = dict(extra or {})
        for name, values in self.extra.items():
            if len(values) != len(enc.input_ids):
                raise ValueError(f"{name}: {len(values)} rows for {len(enc.input_ids)} encoded rows")

    def __len__(self) -> int:
        return len(self.enc.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.enc.input_ids[i]}
        if self.enc.labels is not None:
            item["labels"] = self.enc.labels[i]
        for name, values in self.extra.items():
            item[name] = values[i]
        return item


class Collator:
    """Pads a list of rows on the right to the longest row of THIS batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [list(map(int, it["input_ids"])) for it in items]
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if items and all("labels" in it for it in items):
            out["labels"] = torch.tensor([int(it["labels"]) for it in items], dtype=torch.long)
        for name in items[0] if items else ():
            if isinstance(items[0][name], torch.Tensor):  # EncodedDataset's per-row extras
                out[name] = torch.stack([it[name] for it in items])
        return out
