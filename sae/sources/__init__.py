"""Sources of activations: toy models, synthetic dictionaries, stores, language models."""

from sae.config import DataConfig
from sae.sources.base import ActivationSource, GroundTruthSource
from sae.streams import BatchStream


def build_source(data: DataConfig, seed: int) -> ActivationSource:
    if data.toy is not None:
        from sae.sources.toy import ToySuperposition

        return ToySuperposition(data.toy, seed)
    if data.synthetic is not None:
        from sae.sources.synthetic import SyntheticSource

        return SyntheticSource(data.synthetic, seed)
    if data.store is not None:
        from sae.sources.store import StoreSource

        return StoreSource(data)
    if data.lm is not None:
        from sae.sources.model_activations import LMSource

        return LMSource(data.lm)
    raise NotImplementedError(f"data source '{data.kind}' is not available yet")


__all__ = ["ActivationSource", "BatchStream", "GroundTruthSource", "build_source"]
