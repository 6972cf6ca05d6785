"""BatchTopK SAE (Bussmann et al. 2024).

Training keeps the k * B largest activations across the whole batch, so rows may use more or
fewer than k latents. Inference cannot depend on the batch, so after training a single
threshold is fitted (the mean over batches of the smallest activation BatchTopK kept) and the
SAE becomes a JumpReLU: latent = relu(pre) * (pre > threshold). That is also how it is
exported to SAELens.
"""

import torch
from torch import Tensor

from sae.config import SAEConfig
from sae.models.base import SparseAutoencoder, StepContext
from sae.models.topk import topk_per_row


def batch_topk(pre: Tensor, k: float) -> Tensor:
    acts = pre.relu()
    flat = acts.flatten()
    n_keep = min(int(k * pre.shape[0]), flat.numel())
    values, indices = flat.topk(n_keep, sorted=False)
    return torch.zeros_like(flat).scatter_(0, indices, values).view_as(pre)


class BatchTopKSAE(SparseAutoencoder):
    arch = "batchtopk"
    saelens_arch = "jumprelu"

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(d_in, cfg, generator)
        # NaN until fitted: until then inference falls back to batch-level top-k.
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def train_activation(self, pre: Tensor, ctx: StepContext) -> Tensor:
        if ctx.progress < self.cfg.warm_start_frac:
            return topk_per_row(pre, self.cfg.warm_k())
        return batch_topk(pre, self.cfg.k)

    def activation(self, pre: Tensor) -> Tensor:
        if torch.isnan(self.threshold):
            return batch_topk(pre, self.cfg.k)
        return pre.relu() * (pre > self.threshold)

    @torch.no_grad()
    def fit_inference(self, batches: list[Tensor]) -> None:
        minima = []
        for x in batches:
            kept = batch_topk(self.pre_acts(x), self.cfg.k)
            positive = kept[kept > 0]
            if positive.numel():
                minima.append(positive.min())
        if minima:
            self.threshold.copy_(torch.stack(minima).mean())

    def saelens_weights(self) -> dict[str, Tensor]:
        weights = super().saelens_weights()
        weights["threshold"] = self.threshold.detach().expand(self.d_sae).clone()
        return weights
