"""A harvested activation store as a training source (`data.store: DIR`).

Stores harvested from a ground-truth source (toy, synthetic) record that source's config and a
hash of its true features, so training on the store can be evaluated against the same ground
truth as training on the live source: `ground_truth()` rebuilds it and checks the hash.
"""

from __future__ import annotations

from typing import Any

import xxhash

from sae.config import DataConfig
from sae.errors import DataError
from sae.sources.base import ActivationSource, BatchStream, GroundTruthSource
from sae.store.format import ACTS
from sae.store.reader import Store, StoreStream


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
        self.column = self.store.hook_column(data.hook)
        self.hook = self.column.removeprefix(ACTS)
        self.hook_names = (self.hook,)
        self.d_in = self.store.hooks[self.hook]
        self.shuffle, self.buffer_rows = data.shuffle, data.buffer_rows

    def stream(self, batch_size: int, seed: int) -> BatchStream:
        # whole batches on every process: data-parallel training asks for its rank's slice
        # itself (sae/training/parallel.py)
        return StoreStream(
            self.store, self.column, batch_size, seed, self.shuffle, self.buffer_rows,
            rank=0, world_size=1,
        )  # fmt: skip

    def metadata(self) -> dict[str, Any]:
        source = self.store.manifest.source
        return {
            "kind": "store",
            "store": str(self.store.dir),
            "hook_name": self.hook,
            "rows": self.store.rows,
            "dtype": self.store.manifest.dtype,
            "model_name": source.get("model"),
            "dataset_path": source.get("dataset"),
            "context_size": source.get("context_size"),
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
