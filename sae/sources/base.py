"""What an activation source is: it hands out resumable streams (sae/streams.py) of rows for
training, harvesting or several hooks at once. Sources with known features also implement
`GroundTruthSource`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from sae.errors import ConfigError
from sae.streams import BatchStream, HarvestBatch, HarvestStream, Wrapping


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

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Activations [n, d_in] alone; sources that can skip the dense feature matrix do."""
        return self.sample_with_features(n, generator)[0]


class SampledStream(BatchStream):
    """A stream that draws each batch from a ground-truth source with its own generator."""

    def __init__(self, source: GroundTruthSource, batch_size: int, seed: int):
        self.source, self.batch_size = source, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def __next__(self) -> Tensor:
        x = self.source.sample(self.batch_size, self.generator)
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
