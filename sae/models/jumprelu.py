"""JumpReLU SAE (Rajamanoharan et al. 2024, Gemma Scope).

latent_i = pre_i * H(pre_i - theta_i) with a learned per-latent threshold theta = exp(log_theta).
H has no useful gradient, so theta learns through a straight-through estimator: the
derivative of H is replaced by a rectangle kernel of width `bandwidth` around the threshold.
The penalty is the L0 norm itself, made trainable by the same estimator.
"""

import torch
from torch import Tensor, nn

from sae.config import SAEConfig
from sae.models.base import SparseAutoencoder, StepContext
from sae.models.batchtopk import batch_topk
from sae.models.topk import topk_per_row


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
        grad_threshold = -(threshold * _kernel(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(_kernel(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return None, grad_threshold, None


class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"
    saelens_arch = "jumprelu"

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(d_in, cfg, generator)
        init = torch.full((cfg.d_sae,), float(cfg.jumprelu_init_threshold))
        self.log_threshold = nn.Parameter(init.log())
        # After a TopK warm start the thresholds are set once, from the data, then learned.
        self.register_buffer("warm_start_done", torch.tensor(False))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)

    def train_activation(self, pre: Tensor, ctx: StepContext) -> Tensor:
        if ctx.progress < self.cfg.warm_start_frac:
            return topk_per_row(pre, self.cfg.warm_k())
        if self.cfg.warm_start_frac > 0 and not self.warm_start_done:
            self._thresholds_from_batch_topk(pre)
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    @torch.no_grad()
    def _thresholds_from_batch_topk(self, pre: Tensor) -> None:
        """Start every threshold at the cutoff that keeps k latents per row on average."""
        kept = batch_topk(pre, self.cfg.k)
        cutoff = kept[kept > 0].min() if (kept > 0).any() else pre.new_tensor(1.0)
        self.log_threshold.fill_(float(cutoff.clamp(min=1e-6).log()))
        self.warm_start_done.fill_(True)

    def sparsity_loss(self, pre: Tensor, latents: Tensor, ctx: StepContext) -> Tensor:
        if ctx.progress < self.cfg.warm_start_frac:
            return pre.new_zeros(())
        l0 = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return ctx.sparsity_scale * self.cfg.l0_coefficient * l0

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "log_threshold": 0}

    def saelens_weights(self) -> dict[str, Tensor]:
        return {**super().saelens_weights(), "threshold": self.threshold.detach()}
