"""Reconstruction metrics that need no ground truth: L0, explained variance, dead latents,
shrinkage. Summed over batches, so any number of rows fits in memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor


class Dictionary(Protocol):
    """Anything with encode/decode and a [d_sae, d_in] decoder: ours or a SAELens SAE."""

    W_dec: Tensor

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...


class ReconstructionStats:
    def __init__(self, d_sae: int):
        self.fired = torch.zeros(d_sae, dtype=torch.bool)
        self.rows = self.l0 = 0.0
        self.sum_x: Tensor | None = None
        self.sq_norm = self.sq_residual = self.shrink = 0.0
        self.shrink_rows = 0

    def add(self, x: Tensor, recon: Tensor, latents: Tensor) -> None:
        x, recon = x.double(), recon.double()
        fires = latents != 0
        self.fired |= fires.any(0)
        self.rows += x.shape[0]
        self.l0 += float(fires.sum())
        batch_sum = x.sum(0)
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sq_norm += float(x.pow(2).sum())
        self.sq_residual += float((x - recon).pow(2).sum())
        norms = x.norm(dim=-1)
        valid = norms > 1e-6
        self.shrink += float((recon.norm(dim=-1)[valid] / norms[valid]).sum())
        self.shrink_rows += int(valid.sum())

    def explained_variance(self) -> float:
        assert self.sum_x is not None
        variance = self.sq_norm / self.rows - float((self.sum_x / self.rows).pow(2).sum())
        return 1.0 - (self.sq_residual / self.rows) / variance

    def summary(self) -> dict[str, float | int]:
        return {
            "l0": self.l0 / self.rows,
            "explained_variance": self.explained_variance(),
            "dead_latents": int((~self.fired).sum()),
            "shrinkage": self.shrink / max(self.shrink_rows, 1),
        }


@torch.no_grad()
def evaluate_reconstruction(
    sae: Dictionary, batches: Iterable[Tensor], input_scale: float = 1.0
) -> dict[str, float | int]:
    """Metrics of `sae` (trained on inputs multiplied by `input_scale`) on `batches`."""
    stats = ReconstructionStats(sae.W_dec.shape[0])
    device = sae.W_dec.device
    for batch in batches:
        x = batch.float()
        latents = sae.encode(x.to(device) * input_scale)
        stats.add(x, sae.decode(latents).cpu().double() / input_scale, latents.cpu())
    return stats.summary()
