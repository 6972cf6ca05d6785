"""SAE architectures, registered by name. Adding one: a new file and one line below."""

import torch

from sae.config import SAEConfig
from sae.memory import check_sae_fits
from sae.models.base import ForwardOutput, SparseAutoencoder, StepContext, TrainOutput
from sae.models.batchtopk import BatchTopKSAE
from sae.models.gated import GatedSAE
from sae.models.jumprelu import JumpReLUSAE
from sae.models.matryoshka import MatryoshkaSAE
from sae.models.relu import ReLUSAE
from sae.models.topk import TopKSAE
from sae.seeding import derive_seed

REGISTRY: dict[str, type[SparseAutoencoder]] = {
    cls.arch: cls
    for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, MatryoshkaSAE)
}


def build_sae(cfg: SAEConfig, d_in: int, seed: int = 0) -> SparseAutoencoder:
    check_sae_fits(d_in, cfg.d_sae)  # one line, not a torch traceback or the OOM killer
    generator = torch.Generator().manual_seed(derive_seed(seed, "sae-init"))
    return REGISTRY[cfg.arch](d_in, cfg, generator)


__all__ = [
    "REGISTRY",
    "ForwardOutput",
    "SparseAutoencoder",
    "StepContext",
    "TrainOutput",
    "build_sae",
]
