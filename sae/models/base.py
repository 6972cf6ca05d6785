"""The shared shape of every sparse autoencoder.

x -> pre = (x - b_dec) @ W_enc + b_enc -> latents = activation(pre) -> recon = latents @ W_dec + b_dec

An architecture is a subclass that says how `pre` becomes latents (at inference and in
training), what its sparsity penalty is, and how its weights map onto SAELens's format.
Everything else (initialisation, decoder-norm handling, AuxK, the loss assembly) lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from sae.config import SAEConfig


class ForwardOutput(NamedTuple):
    recon: Tensor  # [B, d_in]
    latents: Tensor  # [B, d_sae], zero where a latent is off


class TrainOutput(NamedTuple):
    loss: Tensor  # what backward() is called on
    mse: Tensor  # mean over rows of ||x - recon||^2
    sparsity: Tensor  # the weighted sparsity penalty (0 for k-sparse architectures)
    aux: Tensor  # AuxK or the gated auxiliary reconstruction (0 where unused)
    recon: Tensor
    latents: Tensor


@dataclass
class StepContext:
    """What a training forward pass may depend on besides the batch."""

    sparsity_scale: float = 1.0  # warm-up factor for the sparsity coefficient, in [0, 1]
    progress: float = 1.0  # fraction of training done before this step
    dead_mask: Tensor | None = None  # [d_sae] bool, latents that have not fired recently


def row_sq_error(x: Tensor, recon: Tensor) -> Tensor:
    """Mean over rows of the summed squared error."""
    return (x - recon).pow(2).sum(-1).mean()


class SparseAutoencoder(nn.Module):
    arch: ClassVar[str]
    saelens_arch: ClassVar[str]  # the `architecture` written to SAELens's cfg.json
    unit_norm_decoder: ClassVar[bool] = True

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.d_in, self.d_sae, self.cfg = d_in, cfg.d_sae, cfg
        directions = torch.randn(cfg.d_sae, d_in, generator=generator)
        norm = 1.0 if self.unit_norm_decoder else cfg.init_decoder_norm
        W_dec = directions / directions.norm(dim=-1, keepdim=True) * norm
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ------------------------------------------------------------------ inference

    def pre_acts(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        """Inference-time latents from pre-activations."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_acts(x))

    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> ForwardOutput:
        latents = self.encode(x)
        return ForwardOutput(self.decode(latents), latents)

    # ------------------------------------------------------------------ training

    def train_activation(self, pre: Tensor, ctx: StepContext) -> Tensor:
        """Training-time latents; differs from inference for batch-level or STE activations."""
        return self.activation(pre)

    def sparsity_loss(self, pre: Tensor, latents: Tensor, ctx: StepContext) -> Tensor:
        return pre.new_zeros(())

    def reconstruction_loss(self, x: Tensor, latents: Tensor, mse: Tensor) -> Tensor:
        """The reconstruction term; matryoshka adds its nested prefixes to the full `mse`."""
        return mse

    def extra_loss(self, x: Tensor, pre: Tensor, recon: Tensor, ctx: StepContext) -> Tensor:
        """AuxK on dead latents when the config asks for it (overridden by gated)."""
        if "auxk" not in self.cfg.remedy() or ctx.dead_mask is None:
            return pre.new_zeros(())
        return self.auxk_loss(x, pre, recon, ctx.dead_mask)

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        pre = self.pre_acts(x)
        latents = self.train_activation(pre, ctx)
        recon = self.decode(latents)
        mse = row_sq_error(x, recon)
        sparsity = self.sparsity_loss(pre, latents, ctx)
        aux = self.extra_loss(x, pre, recon, ctx)
        loss = self.reconstruction_loss(x, latents, mse) + sparsity + aux
        return TrainOutput(loss, mse.detach(), sparsity.detach(), aux.detach(), recon, latents)

    def auxk_loss(self, x: Tensor, pre: Tensor, recon: Tensor, dead: Tensor) -> Tensor:
        """AuxK (Gao et al. 2024): the top-k_aux dead latents reconstruct the residual.

        Normalised by the residual's variance and scaled by aux_coefficient, as in OpenAI's
        sparse_autoencoder; zero when nothing is dead.
        """
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(self.cfg.aux_k or self.d_in // 2, n_dead)
        residual = (x - recon).detach()
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        values, indices = dead_pre.topk(k_aux, dim=-1, sorted=False)
        aux_recon = sparse_decode(values.relu(), indices, self.W_dec)
        variance = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-8)
        loss = row_sq_error(residual, aux_recon) / variance
        return self.cfg.aux_coefficient * torch.nan_to_num(loss, nan=0.0)

    # ------------------------------------------------------------------ decoder norms

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient that would only change row norms."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            W, g = self.W_dec, self.W_dec.grad
            g.sub_((g * W).sum(-1, keepdim=True) * W)

    def latent_axes(self) -> dict[str, int]:
        """For each parameter, the axis that indexes latents (used to reset dead latents)."""
        return {"W_enc": 1, "b_enc": 0, "W_dec": 0}

    # ------------------------------------------------------------------ export

    def saelens_weights(self) -> dict[str, Tensor]:
        """Weights named as SAELens's inference class for `saelens_arch` expects."""
        return {
            "W_enc": self.W_enc.detach(),
            "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_dec": self.b_dec.detach(),
        }

    def saelens_cfg(self) -> dict[str, object]:
        """Architecture-specific keys for SAELens's cfg.json."""
        return {}

    def fit_inference(self, batches: list[Tensor]) -> None:
        """Settle what inference needs once training is over (a threshold, folded norms)."""


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] without building the dense latent matrix."""
    return torch.nn.functional.embedding_bag(
        indices, W_dec, per_sample_weights=values, mode="sum"
    )
