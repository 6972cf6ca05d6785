"""The order rows are read in: a pure function of (manifest, seed, epoch).

Rows are grouped in blocks (`block_rows` consecutive rows of one shard; a shard's last block
may be shorter). Epoch e visits every block exactly once, in the order of the keys
splitmix64(base(seed, e) + block_index): a fixed, version-independent hash, so the order does
not hang on a library's random-number stream. Without shuffling, blocks come in stored order.

The stream is the epochs laid end to end: row position p is row p mod N of epoch p div N.
Training takes consecutive global batches of batch_size * world_size rows; rank r reads the
r-th batch_size slice of each. Ranks therefore never share a row, together read every row of
every epoch, and a saved position (a single integer) resumes all of them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class BlockTable:
    """Block b is rows [start[b], start[b] + length[b]) of shard shard[b]; `first[s]` is the
    first block of shard s. Blocks are numbered in stored order."""

    shard: np.ndarray
    start: np.ndarray
    length: np.ndarray
    first: np.ndarray

    @classmethod
    def build(cls, shard_rows: list[int], block_rows: int) -> BlockTable:
        rows = np.asarray(shard_rows, dtype=np.int64)
        per_shard = -(-rows // block_rows)
        first = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)
        shard = np.repeat(np.arange(len(rows)), per_shard)
        start = (np.arange(int(per_shard.sum())) - first[shard]) * block_rows
        return cls(shard, start, np.minimum(block_rows, rows[shard] - start), first)

    def global_rows(self, segments: list[tuple[int, int, int]], shard_rows: list[int]) -> np.ndarray:
        """The stored-order row numbers that `segments` cover (for checking orders)."""
        shard_first_row = np.concatenate([[0], np.cumsum(shard_rows)])
        parts = [
            shard_first_row[self.shard[b]] + self.start[b] + np.arange(lo, hi)
            for b, lo, hi in segments
        ]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijection on uint64 with good avalanche (Steele et al. 2014)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def block_permutation(n_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The order of blocks in one epoch: distinct keys, so argsort yields a permutation."""
    mixed = splitmix64(np.array([seed & _MASK], dtype=np.uint64))
    base = splitmix64(mixed ^ np.uint64(epoch & _MASK))
    with np.errstate(over="ignore"):
        keys = splitmix64(base + np.arange(n_blocks, dtype=np.uint64))
    return np.argsort(keys, kind="stable")


class EpochOrder:
    """Maps positions in the endless row stream to (block, first row, end row) segments."""

    def __init__(self, block_lengths: np.ndarray, seed: int, shuffle: bool):
        self.lengths = np.asarray(block_lengths, dtype=np.int64)
        self.rows_per_epoch = int(self.lengths.sum())
        self.seed, self.shuffle = seed, shuffle
        self._epoch = lru_cache(maxsize=2)(self._layout)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.lengths)
        order = block_permutation(n, self.seed, epoch) if self.shuffle else np.arange(n)
        return order, np.cumsum(self.lengths[order])

    def blocks(self, epoch: int) -> np.ndarray:
        return self._epoch(epoch)[0]

    def segments(self, position: int, count: int) -> list[tuple[int, int, int]]:
        """The rows [position, position + count) of the stream as block slices, in order."""
        segments = []
        epoch, row = divmod(position, self.rows_per_epoch)
        while count > 0:
            order, ends = self._epoch(epoch)
            i = int(np.searchsorted(ends, row, side="right"))
            while count > 0 and i < len(order):
                block = int(order[i])
                begin = int(ends[i]) - int(self.lengths[block])
                lo = row - begin
                take = min(int(self.lengths[block]) - lo, count)
                segments.append((block, lo, lo + take))
                row += take
                count -= take
                i += 1
            if row == self.rows_per_epoch:
                epoch, row = epoch + 1, 0
        return segments
