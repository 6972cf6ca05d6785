"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

The dictionary is read as nested prefixes W_dec[:m_1] in W_dec[:m_2] ... in W_dec; each prefix
must reconstruct the input on its own. Early latents are pushed to carry general (parent)
features, so they do not absorb their children, which is what makes this architecture the
best published one on hierarchical ground truth. Activation and inference threshold are
BatchTopK's.
"""

from typing import Any, ClassVar

from pydantic import Field, model_validator
from torch import Tensor

from sae.models.architectures.batchtopk import BatchTopKOptions, BatchTopKSAE
from sae.models.base import row_sq_error
from sae.models.registry import register_architecture
from sae.models.sparse import Latents


class MatryoshkaOptions(BatchTopKOptions):
    shown_keys: ClassVar[tuple[str, ...]] = ("k", "matryoshka_widths")

    # batchtopk's 0.8 was measured on flat cases only; Matryoshka keeps the shared default
    # until the hierarchical cases say otherwise.
    warm_start_frac: float = Field(0.5, ge=0, le=1)
    """Fraction of training run as a per-row TopK before the batch-level TopK."""

    matryoshka_widths: list[int] | None = None
    """Nested prefix widths; the full width d_sae is always the last level (default: doubling
    prefixes from d_sae/32).
    """

    @model_validator(mode="after")
    def _nested(self) -> "MatryoshkaOptions":
        widths = self.matryoshka_widths
        if widths is not None:
            if any(b <= a for a, b in zip(widths, widths[1:], strict=False)) or widths[0] < 1:
                raise ValueError("matryoshka_widths must be positive and strictly increasing")
            if widths[-1] > self.d_sae:
                raise ValueError(f"matryoshka_widths exceed d_sae={self.d_sae}")
        return self

    def prefix_widths(self) -> list[int]:
        widths = list(self.matryoshka_widths or default_widths(self.d_sae))
        return widths if widths[-1] == self.d_sae else [*widths, self.d_sae]

    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "matryoshka_batchtopk", {"k": self.k, "matryoshka_widths": self.prefix_widths()}


@register_architecture
class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"
    Options = MatryoshkaOptions

    def prefix_widths(self) -> list[int]:
        return self.cfg.prefix_widths()

    def reconstruction_loss(self, x: Tensor, latents: Latents, mse: Tensor) -> Tensor:
        # Partial reconstructions are built up prefix by prefix, each from the previous one.
        total, recon, start = mse, self.b_dec, 0
        for end in self.prefix_widths()[:-1]:
            values, layout = latents.layout.restrict(latents.values, start, end)
            recon = recon + layout.decode(values, self.W_dec[start:end])
            total = total + row_sq_error(x, recon)
            start = end
        return total / len(self.prefix_widths())


def default_widths(d_sae: int) -> list[int]:
    """Doubling prefixes from d_sae/32 up to d_sae."""
    widths = [max(1, d_sae >> shift) for shift in (5, 4, 3, 2, 1)]
    return sorted({w for w in widths if w < d_sae}) + [d_sae]
