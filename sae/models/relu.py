"""ReLU SAE with an L1 penalty, following Anthropic's April 2024 recipe.

The decoder is left free and the L1 term is weighted by each decoder row's norm, so the
penalty cannot be dodged by shrinking latents and growing decoder rows. Rows start at a small
norm (init_decoder_norm) with W_enc = W_dec^T. After training the norms are folded into the
encoder, leaving unit decoder rows.
"""

import torch
from torch import Tensor

from sae.models.base import SparseAutoencoder, StepContext
from sae.models.sparse import Layout


class ReLUSAE(SparseAutoencoder):
    arch = "relu"
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
