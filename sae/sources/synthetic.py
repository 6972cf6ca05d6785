"""SynthSAEBench-style ground truth, built by sae_lens.synthetic (used, not rewritten).

Our config is validated here and translated into sae_lens's SyntheticModelConfig; the
firing-probability schedules, magnitudes, hierarchy and low-rank correlation are SAELens's.
Batches are drawn by our FastSampler (sae/sources/synthetic_sampler.py): the same distribution
as sae_lens's `sample_with_features`, drawn sparsely from the stream's own torch.Generator, so
sampling is reproducible and resumable without touching the global RNG. Models it does not
cover fall back to sae_lens's sampler, which draws from the global RNG: those draws run inside
`fork_rng` with the stream's saved generator state.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.synthetic import (
    HierarchyConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
)
from sae_lens.synthetic.firing_magnitudes import MagnitudeConfig as SLMagnitudeConfig
from sae_lens.synthetic.firing_probabilities import (
    FiringProbabilityConfig as SLFiringProbabilityConfig,
)
from torch import Tensor

from sae.config import FiringProbabilityConfig, MagnitudeConfig, SyntheticConfig
from sae.seeding import derive_seed
from sae.sources.base import GroundTruthSource, SampledStream
from sae.sources.synthetic_sampler import FastSampler
from sae.streams import BatchStream


def _firing(cfg: FiringProbabilityConfig) -> SLFiringProbabilityConfig:
    fields = {
        "zipfian": {"exponent": cfg.exponent, "max_prob": cfg.max_prob, "min_prob": cfg.min_prob},
        "linear": {"max_prob": cfg.max_prob, "min_prob": cfg.min_prob},
        "random": {"max_prob": cfg.max_prob, "min_prob": cfg.min_prob},
        "constant": {"probability": cfg.probability},
    }[cfg.kind]
    return SLFiringProbabilityConfig.from_dict({"generator_name": cfg.kind, **fields})


def _magnitude(value: float | MagnitudeConfig) -> float | SLMagnitudeConfig:
    if not isinstance(value, MagnitudeConfig):
        return float(value)
    fields = {
        "constant": {"value": value.value},
        "linear": {"start": value.start, "end": value.end},
        "exponential": {"start": value.start, "end": value.end},
        "folded_normal": {"mean": value.mean, "std": value.std},
    }[value.kind]
    return SLMagnitudeConfig.from_dict({"generator_name": value.kind, **fields})


def saelens_config(cfg: SyntheticConfig, seed: int) -> SyntheticModelConfig:
    """sae_lens derives its sub-seeds as seed + 1 ... seed + 4; we follow its convention."""
    hierarchy = None
    if cfg.hierarchy is not None:
        hierarchy = HierarchyConfig(**cfg.hierarchy.model_dump())
    correlation = None
    if cfg.correlation is not None:
        correlation = LowRankCorrelationConfig(
            rank=cfg.correlation.rank,
            correlation_scale=cfg.correlation.correlation_scale,
            seed=seed + 4,
        )
    orthogonalization = None
    if cfg.orthogonalize_steps:
        orthogonalization = OrthogonalizationConfig(
            num_steps=cfg.orthogonalize_steps, lr=cfg.orthogonalize_lr
        )
    return SyntheticModelConfig(
        num_features=cfg.num_features,
        hidden_dim=cfg.hidden_dim,
        firing_probability=_firing(cfg.firing),
        hierarchy=hierarchy,
        orthogonalization=orthogonalization,
        correlation=correlation,
        std_firing_magnitudes=_magnitude(cfg.std_magnitude),
        mean_firing_magnitudes=_magnitude(cfg.mean_magnitude),
        bias=cfg.bias,
        seed=seed,
    )


class SyntheticSource(GroundTruthSource):
    def __init__(self, cfg: SyntheticConfig, seed: int):
        self.cfg = cfg
        self.d_in = cfg.hidden_dim
        model_seed = cfg.seed if cfg.seed is not None else derive_seed(seed, "synthetic-model")
        with torch.random.fork_rng(devices=[]):
            self.model = SyntheticModel(saelens_config(cfg, model_seed))
        self.model.eval()
        self.sampler = FastSampler.build(self.model)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        if self.sampler is not None:  # no dense [n, num_features] matrix needed
            return self.sampler.sample(n, generator)
        return super().sample(n, generator)

    def sample_with_features(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.sampler is not None:
            return self.sampler.sample_with_features(n, generator)
        return self.saelens_sample_with_features(n, generator)

    def saelens_sample_with_features(
        self, n: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """sae_lens's own sampler (the reference the fast one is checked against)."""
        # sae_lens draws from the global RNG: lend it our generator's state for this draw.
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator.get_state())
            x, features = self.model.sample_with_features(n)
            generator.set_state(torch.get_rng_state())
        return x, features

    def stream(self, batch_size: int, seed: int) -> BatchStream:
        return SampledStream(self, batch_size, seed)

    @property
    def feature_vectors(self) -> Tensor:
        return self.model.feature_dict.feature_vectors.detach()

    def metadata(self) -> dict[str, Any]:
        return {"kind": "synthetic", "num_features": self.cfg.num_features, "d_in": self.d_in}
