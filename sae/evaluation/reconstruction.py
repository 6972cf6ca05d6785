"""Reconstruction and sparsity statistics, summed over batches of rows.

Definitions are SAELens's (sae_lens.evals):
- explained_variance = 1 - E||x - x_hat||^2 / Var(x), with Var(x) = E||x||^2 - ||E x||^2 summed
  over dimensions, every row weighted equally (its ExplainedVarianceCalculator);
- mse = E||x - x_hat||^2 (summed over dimensions, averaged over rows);
- cosine_similarity = E cos(x, x_hat) (a zero vector counts as cosine 0);
- l0 = mean number of nonzero latents per row; a latent's density is the fraction of rows it
  is nonzero on; it is dead when it never fired.
Sums are kept in float64 on the CPU: Var(x) is a difference of two large numbers when the
activations have a large mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor

# SAELens adds this before log10 so dead latents get a finite log density (-10).
LOG_DENSITY_EPS = 1e-10


class Dictionary(Protocol):
    """Anything with encode/decode and a [d_sae, d_in] decoder: ours or a SAELens SAE."""

    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


class ReconstructionStats:
    def __init__(self, d_sae: int):
        self.rows = 0
        self.sum_x: Tensor | None = None
        self.sq_norm = self.sq_residual = self.cos_sum = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)
        self.max_activation = torch.zeros(d_sae)
        self.shrink = 0.0
        self.shrink_rows = 0

    def add(self, x: Tensor, recon: Tensor, latents: Tensor) -> None:
        """x, recon: [rows, d_in]; latents: [rows, d_sae]."""
        if x.shape[0] == 0:
            return
        x, recon = x.double(), recon.double()
        batch_sum = x.sum(0).cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sq_norm += float(x.pow(2).sum())
        self.sq_residual += float((x - recon).pow(2).sum())
        norms = x.norm(dim=-1) * recon.norm(dim=-1)
        self.cos_sum += float(((x * recon).sum(-1) / norms.clamp(min=1e-30)).sum())
        x_norms = x.norm(dim=-1)
        valid = x_norms > 1e-6
        self.shrink += float((recon.norm(dim=-1)[valid] / x_norms[valid]).sum())
        self.shrink_rows += int(valid.sum())
        self.rows += x.shape[0]
        self.fire_counts += (latents != 0).sum(0).double().cpu()
        batch_max = latents.max(0).values.float().cpu()
        self.max_activation = torch.maximum(self.max_activation, batch_max)

    def explained_variance(self) -> float:
        assert self.sum_x is not None, "no rows were added"
        variance = self.sq_norm / self.rows - float((self.sum_x / self.rows).pow(2).sum())
        mse = self.sq_residual / self.rows
        if variance < 1e-10:
            return 1.0 if mse < 1e-10 else 0.0
        return 1.0 - mse / variance

    def mse(self) -> float:
        return self.sq_residual / self.rows

    def cosine_similarity(self) -> float:
        return self.cos_sum / self.rows

    def l0(self) -> float:
        return float(self.fire_counts.sum()) / self.rows

    def density(self) -> Tensor:
        """[d_sae] fraction of rows on which each latent fired."""
        return self.fire_counts / max(self.rows, 1)

    def log10_density(self) -> Tensor:
        """SAELens's `sparsity` tensor: log10(density + 1e-10)."""
        return torch.log10(self.density() + LOG_DENSITY_EPS).float()

    def dead_latents(self) -> int:
        return int((self.fire_counts == 0).sum())

    def dense_latents(self, threshold: float) -> int:
        return int((self.density() > threshold).sum())

    def shrinkage(self) -> float:
        """Mean ||x_hat|| / ||x|| over rows with a nonzero input."""
        return self.shrink / max(self.shrink_rows, 1)

    def summary(self) -> dict[str, float | int]:
        return {
            "l0": self.l0(),
            "explained_variance": self.explained_variance(),
            "dead_latents": self.dead_latents(),
            "shrinkage": self.shrinkage(),
        }


def log10_density_histogram(log10_density: Tensor, alive: Tensor, bins: int) -> dict[str, list]:
    """Histogram of the alive latents' log10 density (dead ones are counted apart), with edges
    from the floor of the smallest value to 0 (density 1)."""
    values = log10_density[alive].double()
    if values.numel() == 0:
        return {"edges": [], "counts": []}
    low = float(torch.floor(values.min()))
    high = max(0.0, float(values.max()))
    if high <= low:
        high = low + 1.0
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    counts = torch.histogram(values, bins=edges).hist
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


@torch.no_grad()
def reconstruction_stats(
    sae: Dictionary, batches: Iterable[Tensor], input_scale: float = 1.0
) -> ReconstructionStats:
    """The sums over `batches` of `sae` (trained on inputs multiplied by `input_scale`)."""
    stats = ReconstructionStats(sae.W_dec.shape[0])
    device = sae.W_dec.device
    for batch in batches:
        x = batch.float()
        latents = sae.encode(x.to(device) * input_scale)
        stats.add(x, sae.decode(latents).cpu().double() / input_scale, latents.cpu())
    return stats


def evaluate_reconstruction(
    sae: Dictionary, batches: Iterable[Tensor], input_scale: float = 1.0
) -> dict[str, float | int]:
    """Metrics of `sae` (trained on inputs multiplied by `input_scale`) on `batches`."""
    return reconstruction_stats(sae, batches, input_scale).summary()
