"""The small interfaces that connect activation sources to training and evaluation.

A source hands out `BatchStream`s: infinite iterators of [batch, d_in] float tensors whose
position can be saved and restored exactly (`state_dict` / `load_state_dict`), so a killed
training run resumes on the very next unseen batch. Sources with known features also
implement `GroundTruthSource`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
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


class ActivationSource(ABC):
    d_in: int

    @abstractmethod
    def stream(self, batch_size: int, seed: int) -> BatchStream:
        """A fresh stream; two streams with the same seed yield the same batches."""

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
