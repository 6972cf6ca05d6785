"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row, AuxK for dead latents."""

import torch
from torch import Tensor

from sae.models.base import SparseAutoencoder


def topk_per_row(pre: Tensor, k: int) -> Tensor:
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


class TopKSAE(SparseAutoencoder):
    arch = "topk"
    saelens_arch = "topk"

    def activation(self, pre: Tensor) -> Tensor:
        return topk_per_row(pre, int(self.cfg.k))

    def saelens_cfg(self) -> dict[str, object]:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
