"""Toy models of superposition (Elhage et al. 2022), trained here before any SAE sees them.

n sparse features x_i (present with probability p_i, value U[0, 1]) are compressed to
h = W x in m < n dimensions by a model trained to reconstruct x' = ReLU(W^T h + b) under an
importance-weighted MSE. The SAE sees h; the true feature directions are W's columns. Features
the model chose not to represent (tiny columns) are not in h at all, so ground-truth metrics
use only the represented ones; `represented_features` in the stats says how many that is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.config import ToyModelConfig
from sae.seeding import derive_seed
from sae.sources.base import GroundTruthSource, SampledStream
from sae.streams import BatchStream

REPRESENTED_NORM = 0.5  # a column this long carries its feature (Elhage et al. use ~0.5 too)


class ToySuperposition(GroundTruthSource):
    def __init__(self, cfg: ToyModelConfig, seed: int):
        self.cfg = cfg
        self.d_in = cfg.d_hidden
        self.probabilities = _probabilities(cfg)
        self.importance = cfg.importance_decay ** torch.arange(cfg.n_features, dtype=torch.float32)
        generator = torch.Generator().manual_seed(derive_seed(seed, "toy-model"))
        self.W, self.b, self.final_loss = self._train(generator)
        self.represented = self.W.norm(dim=0) >= REPRESENTED_NORM

    # --------------------------------------------------------------- sampling

    def sample_features(self, n: int, generator: torch.Generator) -> Tensor:
        cfg = self.cfg
        present = torch.rand(n, cfg.n_features, generator=generator) < self.probabilities
        start = 0
        for _ in range(cfg.correlated_groups):
            group = slice(start, start + cfg.group_size)
            fires = torch.rand(n, 1, generator=generator) < self.probabilities[group].mean()
            present[:, group] = fires
            start += cfg.group_size
        for _ in range(cfg.anticorrelated_groups):
            group = slice(start, start + cfg.group_size)
            fires = torch.rand(n, generator=generator) < self.probabilities[group].sum().clamp(max=1)
            which = torch.randint(cfg.group_size, (n,), generator=generator)
            present[:, group] = torch.nn.functional.one_hot(which, cfg.group_size).bool()
            present[:, group] &= fires[:, None]
            start += cfg.group_size
        return torch.rand(n, cfg.n_features, generator=generator) * present

    def sample_with_features(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        features = self.sample_features(n, generator)
        return features @ self.W.T, features[:, self.represented]

    def stream(self, batch_size: int, seed: int) -> BatchStream:
        return SampledStream(self, batch_size, seed)

    @property
    def feature_vectors(self) -> Tensor:
        return self.W.T[self.represented]

    # --------------------------------------------------------------- the toy model

    def _train(self, generator: torch.Generator) -> tuple[Tensor, Tensor, float]:
        cfg = self.cfg
        W = torch.empty(cfg.d_hidden, cfg.n_features)
        torch.nn.init.xavier_normal_(W, generator=generator)
        W.requires_grad_(True)
        b = torch.zeros(cfg.n_features, requires_grad=True)
        optimizer = torch.optim.AdamW([W, b], lr=cfg.train_lr)
        loss = torch.tensor(0.0)
        for _ in range(cfg.train_steps):
            x = self.sample_features(cfg.train_batch_size, generator)
            x_hat = torch.relu((x @ W.T) @ W + b)
            loss = (self.importance * (x - x_hat).pow(2)).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return W.detach(), b.detach(), loss.item()

    def metadata(self) -> dict[str, Any]:
        return {"kind": "toy", **self.superposition_stats()}

    def superposition_stats(self) -> dict[str, float | int]:
        """Elhage et al.'s measures: feature dimensionality and dimensions per feature.

        D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 is the fraction of a dimension feature i
        occupies; m / ||W||_F^2 is the dimensions the model spends per (unit) feature.
        """
        W = self.W
        norms = W.norm(dim=0)
        unit = W / norms.clamp(min=1e-8)
        overlaps = (unit.T @ W).pow(2).sum(-1)
        dimensionality = norms.pow(2) / overlaps.clamp(min=1e-12)
        kept = self.represented
        return {
            "n_features": self.cfg.n_features,
            "d_hidden": self.cfg.d_hidden,
            "represented_features": int(kept.sum()),
            "dimensions_per_feature": float(self.cfg.d_hidden / W.pow(2).sum()),
            "mean_feature_dimensionality": float(dimensionality[kept].mean()) if kept.any() else 0.0,
            "toy_model_loss": self.final_loss,
        }


def _probabilities(cfg: ToyModelConfig) -> Tensor:
    if cfg.probability_schedule == "uniform":
        return torch.full((cfg.n_features,), cfg.feature_probability)
    ranks = torch.arange(1, cfg.n_features + 1, dtype=torch.float32)
    weights = ranks.pow(-cfg.zipf_exponent)
    return (weights / weights.mean() * cfg.feature_probability).clamp(max=1.0)
