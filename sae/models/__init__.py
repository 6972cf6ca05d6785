"""SAE architectures. Adding one: a new file in sae/models/architectures/ (see registry.py).

Importing this package is light (no torch): the registry functions are here at once, and the
model classes and `REGISTRY` load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae.models.registry import (
    all_architectures,
    architecture,
    architecture_names,
    register_architecture,
)

if TYPE_CHECKING:
    from sae.config import SAEConfig
    from sae.models.base import SparseAutoencoder

_FROM_BASE = ("ForwardOutput", "SparseAutoencoder", "StepContext", "TrainOutput")


def build_sae(cfg: SAEConfig, d_in: int, seed: int = 0) -> SparseAutoencoder:
    import torch

    from sae.memory import check_sae_fits
    from sae.seeding import derive_seed

    cfg = cfg.resolve()
    check_sae_fits(d_in, cfg.d_sae)  # one line, not a torch traceback or the OOM killer
    generator = torch.Generator().manual_seed(derive_seed(seed, "sae-init"))
    return architecture(cfg.arch)(d_in, cfg, generator)


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":  # every architecture by name, as tests iterate it
        return all_architectures()
    if name in _FROM_BASE:
        from sae.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'sae.models' has no attribute '{name}'")


__all__ = [
    "REGISTRY",
    "ForwardOutput",
    "SparseAutoencoder",
    "StepContext",
    "TrainOutput",
    "all_architectures",
    "architecture",
    "architecture_names",
    "build_sae",
    "register_architecture",
]
