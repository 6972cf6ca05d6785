"""Small stores whose rows say where they came from, for the store tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.store.format import LOCK
from sae.store.writer import harvest_rows, open_writer
from sae.streams import HarvestBatch, HarvestStream

WIDTHS = {"resid": 6, "mlp": 4}


def counting_rows(first: int, count: int, widths: dict[str, int] = WIDTHS) -> HarvestBatch:
    """Row r has activations r, r + 0.25, ... (exact in fp32, bf16 for small r) per hook, and
    metadata columns that are simple functions of r."""
    rows = torch.arange(first, first + count)
    return HarvestBatch(
        activations={
            hook: rows[:, None].float() * (1 if i == 0 else -1) + 0.25 * torch.arange(width)
            for i, (hook, width) in enumerate(widths.items())
        },
        token_ids=rows % 50,
        positions=rows % 8,
        doc_ids=rows // 8,
        labels={"topic": rows % 3},
    )


class CountingStream(HarvestStream):
    def __init__(
        self, batch_rows: int, nan_at: int | None = None, scale: float = 1.0, end: int | None = None
    ):
        self.batch_rows, self.nan_at, self.scale, self.end = batch_rows, nan_at, scale, end
        self.next_row = 0

    def __next__(self) -> HarvestBatch:
        if self.end is not None and self.next_row >= self.end:
            raise StopIteration
        count = self.batch_rows if self.end is None else min(self.batch_rows, self.end - self.next_row)
        batch = counting_rows(self.next_row, count)
        batch.activations = {k: v * self.scale for k, v in batch.activations.items()}
        if self.nan_at is not None and 0 <= self.nan_at - self.next_row < self.batch_rows:
            batch.activations["mlp"][self.nan_at - self.next_row, 1] = float("nan")
        self.next_row += count
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_row": self.next_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_row = int(state["next_row"])


def harvest_counting(
    directory: Path,
    rows: int = 5000,
    shard_rows: int = 1000,
    batch_rows: int = 384,
    dtype: str = "fp32",
    block_rows: int | None = 64,
    stream: HarvestStream | None = None,
    on_commit: Any = None,
) -> Path:
    """Harvest counting rows into `directory` (continuing a store already there)."""
    harvest = {"rows": rows, "shard_rows": shard_rows, "batch_rows": batch_rows, "dtype": dtype}
    identity = {"kind": "counting", "seed": 0, "data": {"widths": WIDTHS}}
    with open_writer(directory, identity, harvest, dtype, block_rows) as writer:
        writer.describe({"model": "counting", "dataset": None, "context_size": 8, "metadata": {}})
        harvest_rows(writer, stream or CountingStream(batch_rows), rows, shard_rows, on_commit)
    return directory


def store_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != LOCK}
