"""The shared shape of every sparse autoencoder.

x -> pre = (x - b_dec) @ W_enc + b_enc -> latents = activation(pre) -> recon = latents @ W_dec + b_dec

An architecture is a subclass that says how `pre` becomes latents, in two parts: which
(row, latent) pairs it lets through (`select`, at inference and in training) and the
elementwise value at those pairs (`pair_acts`); plus its sparsity penalty and how its weights
map onto SAELens's format. Everything else (initialisation, decoder-norm handling, AuxK, the
loss assembly, and running the pairs through sparse or dense kernels, see sparse.py) lives
here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from sae.config import ArchitectureOptions, SAEConfig
from sae.distributed import LOCAL, World
from sae.models.sparse import (
    ALL,
    DENSE_ABOVE,
    LatentIndex,
    Latents,
    Layout,
    PreActsBuffer,
    encode_at,
    row_sq_error,
    topk_pairs,
)


class ForwardOutput(NamedTuple):
    recon: Tensor  # [B, d_in]
    latents: Tensor  # [B, d_sae], zero where a latent is off


class TrainOutput(NamedTuple):
    loss: Tensor  # what backward() is called on
    mse: Tensor  # mean over rows of ||x - recon||^2
    sparsity: Tensor  # the weighted sparsity penalty (0 for k-sparse architectures)
    aux: Tensor  # AuxK or the gated auxiliary reconstruction (0 where unused)
    recon: Tensor
    latents: Latents  # values at the active (row, latent) pairs; `.dense()` for [B, d_sae]


@dataclass
class StepContext:
    """What a training forward pass may depend on besides the batch."""

    sparsity_scale: float = 1.0  # warm-up factor for the sparsity coefficient, in [0, 1]
    progress: float = 1.0  # fraction of training done before this step
    dead_mask: Tensor | None = None  # [d_sae] bool, latents that have not fired recently
    # Kernels for the pairs after the encoder: None picks sparse when few latents are active.
    sparse: bool | None = None
    # the ranks sharing the batch (data-parallel): batch-level choices are made over all of it
    group: World = LOCAL


class SparseAutoencoder(nn.Module):
    arch: ClassVar[str]  # the `sae.arch` value
    Options: ClassVar[type[ArchitectureOptions]]  # its keys (sae/config.py), validated by arch
    saelens_arch: ClassVar[str]  # the `architecture` written to SAELens's cfg.json
    unit_norm_decoder: ClassVar[bool] = True
    # May start as a per-row TopK at another k (sae.warm_start_frac): topk, batch-level and
    # threshold activations.
    warm_startable: ClassVar[bool] = False

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
        self._scratch = PreActsBuffer()

    # ------------------------------------------------------------------ what an architecture says

    def select(self, pre: Tensor, training: bool) -> Layout:
        """The (row, latent) pairs that may be non-zero, or in training may carry a gradient."""
        raise NotImplementedError

    def pair_acts(self, pre: Tensor, latent: LatentIndex) -> Tensor:
        """Latent values from pre-activations at selected pairs, elementwise; `latent` indexes
        per-latent parameters (a [nnz] index, or ALL for a [rows, latents] matrix)."""
        return pre.relu()

    def sparsity_loss(self, pre: Tensor, acts: Tensor, layout: Layout, ctx: StepContext) -> Tensor:
        return pre.new_zeros((), dtype=torch.float32)

    def reconstruction_loss(self, x: Tensor, latents: Latents, mse: Tensor) -> Tensor:
        """The reconstruction term; matryoshka adds its nested prefixes to the full `mse`."""
        return mse

    def extra_loss(
        self, x: Tensor, pre: Tensor, layout: Layout, recon: Tensor, ctx: StepContext
    ) -> Tensor:
        """An architecture's own auxiliary term (gated); AuxK is added by the base class."""
        return x.new_zeros(())

    # ------------------------------------------------------------------ inference

    def pre_acts(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def activation(self, pre: Tensor) -> Tensor:
        """Inference-time latents from pre-activations, as a dense matrix."""
        return self.select(pre, training=False).to_dense().apply_mask(self.pair_acts(pre, ALL))

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., d_sae]: leading dims (batch, position) are rows."""
        if x.dim() != 2:
            rows = x.reshape(-1, x.shape[-1])
            return self.encode(rows).reshape(*x.shape[:-1], self.d_sae)
        return self.activation(self.pre_acts(x))

    def decode(self, latents: Tensor) -> Tensor:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> ForwardOutput:
        latents = self.encode(x)
        return ForwardOutput(self.decode(latents), latents)

    # ------------------------------------------------------------------ training

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        """The loss of one batch. Only the encoder matmul is dense: the activation picks the
        active pairs, and decoding and every gradient after it work on those pairs alone
        (dense kernels instead when too many latents are active for that to pay)."""
        warming = self.warm_startable and ctx.progress < self.cfg.warm_start_frac
        with torch.no_grad():
            pre_all = self._scratch.pre_acts(x, self.b_dec, self.W_enc, self.b_enc)
            if self.warm_startable and self.cfg.warm_start_frac > 0 and not warming:
                self.end_warm_start(pre_all, ctx.group)
            if warming:
                layout = topk_pairs(pre_all, self.cfg.warm_k(self.d_in))
            else:
                layout = self.training_select(pre_all, ctx.group)
            aux_layout = self._auxk_layout(pre_all, ctx)
        sparse = ctx.sparse if ctx.sparse is not None else layout.density() <= DENSE_ABOVE
        layout = layout.to_sparse() if sparse else layout.to_dense()
        pre = encode_at(x, self.b_dec, self.W_enc, self.b_enc, pre_all, layout)
        acts = layout.apply_mask(pre.relu() if warming else self.pair_acts(pre, layout.latent))
        latents = Latents(acts, layout)
        recon, mse = layout.decode_error(acts, self.W_dec, self.b_dec, x)
        sparsity = pre.new_zeros(()) if warming else self.sparsity_loss(pre, acts, layout, ctx)
        aux = self.extra_loss(x, pre, layout, recon, ctx)
        if aux_layout is not None:
            aux = aux + self.auxk_loss(x, pre_all, aux_layout, recon, ctx.group)
        loss = self.reconstruction_loss(x, latents, mse) + sparsity + aux
        return TrainOutput(loss, mse.detach(), sparsity.detach(), aux.detach(), recon, latents)

    def training_select(self, pre: Tensor, group: World) -> Layout:
        """`select` in training; batch-level architectures choose over the whole `group` batch."""
        return self.select(pre, training=True)

    def end_warm_start(self, pre: Tensor, group: World) -> None:
        """Called on every step after a TopK warm start; jumprelu sets its thresholds once."""

    def _auxk_layout(self, pre: Tensor, ctx: StepContext) -> Layout | None:
        """The top-k_aux dead latents of each row, when AuxK is on and something is dead."""
        if "auxk" not in self.cfg.remedy() or ctx.dead_mask is None:
            return None
        dead = ctx.dead_mask.nonzero().flatten()
        if dead.numel() == 0:
            return None
        k_aux = min(self.cfg.aux_k or self.d_in // 2, dead.numel())
        chosen = topk_pairs(pre[:, dead], k_aux)
        cols = dead[chosen.cols]
        return Layout.from_pairs(chosen.rows, cols, pre.shape[0], self.d_sae, chosen.row_offsets)

    def auxk_loss(
        self, x: Tensor, pre_all: Tensor, layout: Layout, recon: Tensor, group: World = LOCAL
    ) -> Tensor:
        """AuxK (Gao et al. 2024): the top-k_aux dead latents reconstruct the residual.

        Normalised by the residual's variance (over the whole batch of `group`) and scaled by
        aux_coefficient, as in OpenAI's sparse_autoencoder.
        """
        pre = encode_at(x, self.b_dec, self.W_enc, self.b_enc, pre_all, layout)
        aux_recon = layout.decode(pre.relu(), self.W_dec)
        residual = (x - recon).detach()
        # one path for one process and many: LOCAL's sum returns its input (float64, since the
        # variance is taken from sums of squares)
        n = group.rows(residual.shape[0])
        wide = residual.double()
        sums = group.sum(torch.cat([wide.sum(0), wide.pow(2).sum().reshape(1)]))
        variance = ((sums[-1] - sums[:-1].pow(2).sum() / n) / n).clamp(min=1e-8)
        loss = row_sq_error(residual, aux_recon) / variance.to(residual.dtype)
        return self.cfg.aux_coefficient * torch.nan_to_num(loss, nan=0.0)

    @torch.no_grad()
    def initialise_b_dec(self, sample: Tensor) -> None:
        """Start b_dec at the centre of a data sample (sae.b_dec_init): the geometric median,
        which outliers move less than the mean, the mean, or zero."""
        if self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(sample.mean(0))
        elif self.cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(sample))

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


def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm, started at the mean."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp(min=1e-12)
        weights = 1 / distances
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= tol * max(float(median.norm()), 1.0):
            median = updated
            break
        median = updated
    return median.float()
