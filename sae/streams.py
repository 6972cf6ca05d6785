"""The stream interfaces every stage meets at: sources produce them, the store writes and reads
them, training consumes them.

A `BatchStream` is an infinite iterator of [batch, d_in] float tensors whose position can be
saved and restored exactly (`state_dict` / `load_state_dict`), so a killed training run resumes
on the very next unseen batch. A `HarvestStream` yields `HarvestBatch`es, the rows of one forward
pass with their metadata, as a store writes them. Nothing here imports a source or the store, so
both can depend on this module without depending on each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class BatchStream(Iterator[Tensor], ABC):
    @abstractmethod
    def __next__(self) -> Tensor: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able scalars that pin the stream's position."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release background resources (prefetch threads, open files)."""


class Wrapping:
    """A stream over another stream, `inner`: its position and resources are the inner one's."""

    inner: Any

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        self.inner.close()


@dataclass
class HarvestBatch:
    """Rows of one forward pass as a harvest writes them: one [rows, d] tensor per hook, plus
    optional per-row metadata kept for feature dashboards and monosemanticity scoring."""

    activations: dict[str, Tensor]
    token_ids: Tensor | None = None  # [rows] int64
    positions: Tensor | None = None  # [rows] int64, position within the context window
    doc_ids: Tensor | None = None  # [rows] int64, index of the source document
    labels: dict[str, Tensor] = field(default_factory=dict)  # planted latent variables, [rows]

    @property
    def rows(self) -> int:
        return next(iter(self.activations.values())).shape[0]


class HarvestStream(Iterator[HarvestBatch], ABC):
    """Like BatchStream, for harvesting: resumable, yields HarvestBatch, each of the harvest's
    batch_rows rows (fewer only where the source ends)."""

    @abstractmethod
    def __next__(self) -> HarvestBatch: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def skip_batches(self, n: int) -> int:
        """Move past the next `n` batches as if they had been read; returns the rows passed
        over (fewer than n * batch_rows only where the source ends). A distributed harvest
        skips the rows other ranks write: sources whose rows cost a model's forward pass
        override this to skip that work too."""
        rows = 0
        for _ in range(n):
            try:
                rows += next(self).rows
            except StopIteration:
                break
        return rows

    def close(self) -> None:
        """Release background resources."""
