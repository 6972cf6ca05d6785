"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row, AuxK for dead latents."""

from torch import Tensor

from sae.models.base import SparseAutoencoder
from sae.models.sparse import Layout, topk_pairs


class TopKSAE(SparseAutoencoder):
    arch = "topk"
    saelens_arch = "topk"

    def select(self, pre: Tensor, training: bool) -> Layout:
        return topk_pairs(pre, int(self.cfg.k))

    def saelens_cfg(self) -> dict[str, object]:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
