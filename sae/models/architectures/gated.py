"""Gated SAE (Rajamanoharan et al. 2024).

A gate decides which latents are on, a magnitude path how strongly; they share W_enc, the
magnitude path rescaled per latent by exp(r_mag). The L1 penalty sits on the gate's
pre-activations, and an auxiliary loss makes the gate alone reconstruct the input through a
frozen copy of the decoder, so the gate's sparsity is not paid for with shrinkage of the
magnitudes. Here `pre_acts` is the gate pre-activation and b_enc is SAELens's b_gate.
"""

from typing import Any

import torch
from torch import Tensor, nn

from sae.config import SAEConfig
from sae.models.architectures.relu import L1Options
from sae.models.base import SparseAutoencoder, StepContext, row_sq_error
from sae.models.registry import register_architecture
from sae.models.sparse import LatentIndex, Layout, at_latents


class GatedOptions(L1Options):
    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "gated", {}


@register_architecture
class GatedSAE(SparseAutoencoder):
    arch = "gated"
    Options = GatedOptions
    saelens_arch = "gated"

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(d_in, cfg, generator)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def select(self, pre: Tensor, training: bool) -> Layout:
        return Layout.from_threshold(pre, 0.0)

    def pair_acts(self, pre: Tensor, latent: LatentIndex) -> Tensor:
        b_enc, r_mag, b_mag = (at_latents(p, latent) for p in (self.b_enc, self.r_mag, self.b_mag))
        magnitude = (pre - b_enc) * r_mag.exp() + b_mag
        return (pre > 0).to(pre.dtype) * magnitude.relu()

    def sparsity_loss(self, pre: Tensor, acts: Tensor, layout: Layout, ctx: StepContext) -> Tensor:
        gate = layout.weighted_sum(pre.relu(), self.W_dec.norm(dim=-1))
        return ctx.sparsity_scale * self.cfg.l1_coefficient * gate / layout.n_rows

    def extra_loss(
        self, x: Tensor, pre: Tensor, layout: Layout, recon: Tensor, ctx: StepContext
    ) -> Tensor:
        gate_recon = layout.decode(pre.relu(), self.W_dec.detach()) + self.b_dec.detach()
        return row_sq_error(x, gate_recon)

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "r_mag": 0, "b_mag": 0}

    def saelens_weights(self) -> dict[str, Tensor]:
        weights = super().saelens_weights()
        weights["b_gate"] = weights.pop("b_enc")
        weights["r_mag"] = self.r_mag.detach()
        weights["b_mag"] = self.b_mag.detach()
        return weights
