"""The small interfaces that connect activation sources to training and evaluation.

A source hands out `BatchStream`s: infinite iterators of [batch, d_in] float tensors whose
position can be saved and restored exactly (`state_dict` / `load_state_dict`), so a killed
training run resumes on the very next unseen batch. Sources with known features also
implement `GroundTruthSource`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sae.errors import ConfigError


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


class ActivationSource(ABC):
    d_in: int
    hook_names: tuple[str, ...] = ("hidden",)

    @abstractmethod
    def stream(self, batch_size: int, seed: int) -> BatchStream:
        """A fresh stream; two streams with the same seed yield the same batches."""

    def harvest_stream(self, batch_rows: int, seed: int) -> HarvestStream:
        """Rows for a store. Single-hook sources wrap `stream`; language models override."""
        return _SingleHookHarvest(self.stream(batch_rows, seed), self.hook_names[0])

    def stream_hooks(self, batch_size: int, seed: int, hooks: tuple[str, ...]) -> BatchStream:
        """A stream of {hook: [batch, d]} for several hooks with rows aligned, so SAEs on
        different hooks share every read. Single-hook sources serve their one hook; sources
        with several (stores, language models) override this."""
        unknown = sorted(set(hooks) - {self.hook_names[0]})
        if unknown:
            raise ConfigError(
                f"this data source has hook '{self.hook_names[0]}' only, not {', '.join(unknown)}"
            )
        return _HookDictStream(self.stream(batch_size, seed), self.hook_names[0])

    def width(self, hook: str | None) -> int:
        """The width of `hook`'s rows (None: the first hook's); sources with hooks of
        different widths (stores, language models) override this."""
        return self.d_in

    def metadata(self) -> dict[str, Any]:
        """Describes the source for metrics.json and store manifests."""
        return {}


class GroundTruthSource(ActivationSource):
    """A source whose activations are sparse combinations of known feature directions."""

    @property
    @abstractmethod
    def feature_vectors(self) -> Tensor:
        """[n_features, d_in] true directions (not necessarily unit norm)."""

    @abstractmethod
    def sample_with_features(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(activations [n, d_in], true feature activations [n, n_features])."""


class SampledStream(BatchStream):
    """A stream that draws each batch from a ground-truth source with its own generator."""

    def __init__(self, source: GroundTruthSource, batch_size: int, seed: int):
        self.source, self.batch_size = source, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def __next__(self) -> Tensor:
        x, _ = self.source.sample_with_features(self.batch_size, self.generator)
        self.batches += 1
        return x

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["rng"])
        self.batches = int(state["batches"])


class _HookDictStream(Wrapping, BatchStream):
    def __init__(self, stream: BatchStream, hook: str):
        self.inner, self.hook = stream, hook

    def __next__(self) -> dict[str, Tensor]:  # type: ignore[override]
        return {self.hook: next(self.inner)}


class _SingleHookHarvest(Wrapping, HarvestStream):
    def __init__(self, stream: BatchStream, hook: str):
        self.inner, self.hook = stream, hook

    def __next__(self) -> HarvestBatch:
        return HarvestBatch(activations={self.hook: next(self.inner)})
