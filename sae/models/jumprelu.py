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

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)

    def train_activation(self, pre: Tensor, ctx: StepContext) -> Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def sparsity_loss(self, pre: Tensor, latents: Tensor, ctx: StepContext) -> Tensor:
        l0 = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(-1).mean()
        return ctx.sparsity_scale * self.cfg.l0_coefficient * l0

    def latent_axes(self) -> dict[str, int]:
        return {**super().latent_axes(), "log_threshold": 0}

    def saelens_weights(self) -> dict[str, Tensor]:
        return {**super().saelens_weights(), "threshold": self.threshold.detach()}
