"""JumpReLU SAE (Rajamanoharan et al. 2024, Gemma Scope).

latent_i = pre_i * H(pre_i - theta_i) with a learned per-latent threshold theta = exp(log_theta).
H has no useful gradient, so theta learns through a straight-through estimator: the
derivative of H is replaced by a rectangle kernel of width `bandwidth` around the threshold.
The penalty is the L0 norm itself, made trainable by the same estimator.
"""

import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from sae.config import PenaltyWarmupOptions, SAEConfig, WarmStartOptions
from sae.distributed import World
from sae.models.base import SparseAutoencoder, StepContext
from sae.models.registry import register_architecture
from sae.models.sparse import LatentIndex, Layout, at_latents, batch_topk_pairs


class JumpReLUOptions(WarmStartOptions, PenaltyWarmupOptions):
    """k sets the TopK warm start and, after it, the thresholds' starting cutoff. The other
    keys are in units of inputs scaled to mean norm sqrt(d_in)."""

    shown_keys: ClassVar[tuple[str, ...]] = ("l0_coefficient",)

    l0_coefficient: float = Field(0.5, ge=0)
    """Weight of the L0 penalty."""
    jumprelu_bandwidth: float = Field(0.5, gt=0)
    """STE rectangle kernel width."""
    jumprelu_init_threshold: float = Field(0.5, gt=0)
    """Without a warm start."""

    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "jumprelu", {}


def _kernel(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Rectangle kernel K((pre - theta) / bandwidth) / bandwidth."""
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold * _kernel(pre, threshold, ctx.bandwidth) * grad)
        return grad_pre, grad_threshold.sum_to_size(threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(_kernel(pre, threshold, ctx.bandwidth) * grad)
        return None, grad_threshold.sum_to_size(threshold.shape), None


@register_architecture
class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"
    Options = JumpReLUOptions
    saelens_arch = "jumprelu"
    warm_startable = True

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(d_in, cfg, generator)
        init = torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold))
        self.log_threshold = nn.Parameter(init.log())
        # After a TopK warm start the thresholds are set once, from the data, then learned.
        self.register_buffer("warm_start_done", torch.tensor(False))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def end_warm_start(self, pre: Tensor, group: World) -> None:
        """Start every threshold at the cutoff that keeps k latents per row on average."""
        if self.warm_start_done:
            return
        if group.distributed:  # the cutoff of the whole batch, over all ranks
            cutoff = float(group.kth_largest(pre.relu(), int(self.cfg.k * group.rows(pre.shape[0]))))
        else:
            layout = batch_topk_pairs(pre.relu(), int(self.cfg.k * pre.shape[0]))
            kept = layout.gather(pre)
            cutoff = float(kept.min()) if kept.numel() else 1.0
        self.log_threshold.fill_(math.log(max(cutoff, 1e-6)))
        self.warm_start_done.fill_(True)

    def select(self, pre: Tensor, training: bool) -> Layout:
        # In training the straight-through estimator also needs the pairs just below the
        # threshold, within half a bandwidth: they carry the threshold's gradient.
        margin = self.cfg.jumprelu_bandwidth / 2 if training else 0.0
        return Layout.from_threshold(pre, self.threshold - margin)

    def pair_acts(self, pre: Tensor, latent: LatentIndex) -> Tensor:
        return _JumpReLU.apply(pre, at_latents(self.threshold, latent), self.cfg.jumprelu_bandwidth)

    def sparsity_loss(self, pre: Tensor, acts: Tensor, layout: Layout, ctx: StepContext) -> Tensor:
        threshold = at_latents(self.threshold, layout.latent)
        l0 = _Step.apply(pre, threshold, self.cfg.jumprelu_bandwidth).sum() / layout.n_rows
        return ctx.sparsity_scale * self.cfg.l0_coefficient * l0

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "log_threshold": 0}

    def saelens_weights(self) -> dict[str, Tensor]:
        return {**super().saelens_weights(), "threshold": self.threshold.detach()}
