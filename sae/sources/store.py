"""A harvested activation store as a training source (`data.store: DIR`).

Stores harvested from a ground-truth source (toy, synthetic) record that source's config and a
hash of its true features, so training on the store can be evaluated against the same ground
truth as training on the live source: `ground_truth()` rebuilds it and checks the hash.
"""

from __future__ import annotations

from typing import Any

import xxhash
from torch import Tensor

from sae.config import DataConfig
from sae.errors import ConfigError, DataError
from sae.sources.base import ActivationSource, GroundTruthSource
from sae.store.format import ACTS
from sae.store.reader import Store, StoreStream
from sae.streams import BatchStream, Wrapping


def feature_hash(source: GroundTruthSource) -> str:
    vectors = source.feature_vectors.detach().float().cpu().contiguous()
    return f"xxh3_128:{xxhash.xxh3_128_hexdigest(vectors.numpy().tobytes())}"


class StoreSource(ActivationSource):
    def __init__(self, data: DataConfig):
        assert data.store is not None
        self.store = Store(data.store)
        if not self.store.manifest.complete:
            m = self.store.manifest
            raise DataError(
                f"store {data.store} is incomplete ({m.rows} of {m.harvest.get('rows')} rows); "
                "finish it by running the same `sae harvest` command again"
            )
        self.hook_dims = dict(self.store.hooks)
        if data.hook is None and len(self.hook_dims) > 1:
            # SAEs on several hooks (`saes:` entries with `hook`) read them through
            # stream_hooks; a plain stream() needs data.hook
            self.column, self.hook = None, None
            self.hook_names = tuple(self.hook_dims)
        else:
            self.column = self.store.hook_column(data.hook)
            self.hook = self.column.removeprefix(ACTS)
            self.hook_names = (self.hook,)
        self.d_in = self.hook_dims[self.hook_names[0]]
        self.shuffle, self.buffer_rows = data.shuffle, data.buffer_rows

    def width(self, hook: str | None) -> int:
        return self.hook_dims[hook or self.hook_names[0]]

    def stream(self, batch_size: int, seed: int) -> BatchStream:
        # whole batches on every process: data-parallel training asks for its rank's slice
        # itself (sae/training/parallel.py)
        column = self.store.hook_column(self.hook)  # names the hooks when data.hook is needed
        return StoreStream(
            self.store, column, batch_size, seed, self.shuffle, self.buffer_rows,
            rank=0, world_size=1,
        )  # fmt: skip

    def stream_hooks(self, batch_size: int, seed: int, hooks: tuple[str, ...]) -> BatchStream:
        """{hook: rows} with the same rows of every hook: one read order for all of them."""
        columns = tuple(self.store.hook_column(hook) for hook in hooks)
        for hook in hooks:
            if hook not in self.hook_names:
                raise ConfigError(f"data.hook is '{self.hook}', so hook '{hook}' is not read")
        stream = StoreStream(
            self.store, columns, batch_size, seed, self.shuffle, self.buffer_rows,
            rank=0, world_size=1,
        )  # fmt: skip
        return _ByHook(stream)

    def metadata(self) -> dict[str, Any]:
        source = self.store.manifest.source
        return {
            "kind": "store",
            "store": str(self.store.dir),
            "hook_name": self.hook,
            "hooks": dict(self.hook_dims),
            "rows": self.store.rows,
            "dtype": self.store.manifest.dtype,
            "model_name": source.get("model"),
            "dataset_path": source.get("dataset"),
            "context_size": source.get("context_size"),
            "prepend_bos": (source.get("metadata") or {}).get("prepend_bos"),
            "harvested_from": {k: v for k, v in source.items() if k != "data"},
        }

    def ground_truth(self) -> GroundTruthSource | None:
        """The ground-truth source the store was harvested from, rebuilt; None if it has none."""
        source = self.store.manifest.source
        recorded = source.get("feature_hash")
        if recorded is None:
            return None
        from sae.sources import build_source

        rebuilt = build_source(DataConfig.model_validate(source["data"]), int(source["seed"]))
        assert isinstance(rebuilt, GroundTruthSource)
        if feature_hash(rebuilt) != recorded:
            raise DataError(
                f"store {self.store.dir}: its ground-truth source, rebuilt from the recorded "
                "config, has different feature vectors than at harvest time (a different "
                "torch version or thread count?); it cannot be evaluated against ground truth"
            )
        return rebuilt


class _ByHook(Wrapping, BatchStream):
    """A several-column store stream keyed by hook name instead of column name."""

    def __init__(self, stream: StoreStream):
        self.inner = stream

    def __next__(self) -> dict[str, Tensor]:  # type: ignore[override]
        batch = next(self.inner)
        return {column.removeprefix(ACTS): rows for column, rows in batch.items()}
