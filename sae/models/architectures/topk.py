"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per row, AuxK for dead latents."""

from typing import Any, ClassVar

from pydantic import model_validator
from torch import Tensor

from sae.config import KOptions
from sae.models.base import SparseAutoencoder
from sae.models.registry import register_architecture
from sae.models.sparse import Layout, topk_pairs


class TopKOptions(KOptions):
    shown_keys: ClassVar[tuple[str, ...]] = ("k",)

    @model_validator(mode="after")
    def _whole_k(self) -> "TopKOptions":
        if not float(self.k).is_integer():
            raise ValueError(f"topk needs a whole number k (got {self.k:g})")
        return self

    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "topk", {"k": int(self.k)}  # SAELens's TopK takes an int, as ours does


@register_architecture
class TopKSAE(SparseAutoencoder):
    arch = "topk"
    Options = TopKOptions
    saelens_arch = "topk"

    def select(self, pre: Tensor, training: bool) -> Layout:
        return topk_pairs(pre, int(self.cfg.k))

    def saelens_cfg(self) -> dict[str, object]:
        return {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False}
