"""ReLU SAE with an L1 penalty, following Anthropic's April 2024 recipe.

The decoder is left free and the L1 term is weighted by each decoder row's norm, so the
penalty cannot be dodged by shrinking latents and growing decoder rows. Rows start at a small
norm (init_decoder_norm) with W_enc = W_dec^T. After training the norms are folded into the
encoder, leaving unit decoder rows.
"""

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from sae.config import PenaltyWarmupOptions
from sae.models.base import SparseAutoencoder, StepContext
from sae.models.registry import register_architecture
from sae.models.sparse import Layout


class L1Options(PenaltyWarmupOptions):
    """An L1 penalty (relu weights it by decoder row norm, Anthropic Apr 2024; gated puts it
    on the gate); dead latents are resampled."""

    default_remedy: ClassVar[str] = "resample"
    shown_keys: ClassVar[tuple[str, ...]] = ("l1_coefficient",)

    l1_coefficient: float = Field(5.0, ge=0)
    """Weight of the L1 penalty (inputs are scaled to mean norm sqrt(d_in))."""


class ReLUOptions(L1Options):
    init_decoder_norm: float = Field(0.1, gt=0)
    """Decoder rows start this short, W_enc = W_dec^T."""

    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "standard", {}


@register_architecture
class ReLUSAE(SparseAutoencoder):
    arch = "relu"
    Options = ReLUOptions
    saelens_arch = "standard"
    unit_norm_decoder = False

    def select(self, pre: Tensor, training: bool) -> Layout:
        return Layout.from_threshold(pre, 0.0)

    def sparsity_loss(self, pre: Tensor, acts: Tensor, layout: Layout, ctx: StepContext) -> Tensor:
        weighted = layout.weighted_sum(acts, self.W_dec.norm(dim=-1))
        return ctx.sparsity_scale * self.cfg.l1_coefficient * weighted / layout.n_rows

    @torch.no_grad()
    def fit_inference(self, batches: list[Tensor]) -> None:
        # ReLU commutes with positive scaling: move row norms into the encoder so the final
        # decoder has unit rows and latents are in comparable units, as SAELens users expect.
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        self.W_dec.div_(norms[:, None])
