"""ReLU SAE with p-annealing (Karvonen et al. 2024, "Measuring Progress in Dictionary Learning
for Language Model Interpretability with Board Game Models").

The L1 penalty shrinks every active latent, large or small; an L_p penalty with p < 1 is
closer to counting active latents (L0), which is what sparsity means, but is not convex and
trains poorly from a random start. p-annealing starts at p = p_start (1: plain L1, the relu
recipe) and lowers p linearly to p_end over the training after anneal_start_frac, so the
dictionary is found under the convex penalty and then sharpened. Everything else, the export
included, is the relu architecture's.
"""

from typing import ClassVar

from pydantic import Field, model_validator
from torch import Tensor

from sae.models.architectures.relu import ReLUOptions, ReLUSAE
from sae.models.base import StepContext
from sae.models.registry import register_architecture
from sae.models.sparse import Layout

# (a + EPS)^p - EPS^p instead of a^p: the same value to within EPS^p, with a finite gradient at
# a -> 0, where a^p's grows without bound for p < 1
EPS = 1e-6


class PAnnealOptions(ReLUOptions):
    shown_keys: ClassVar[tuple[str, ...]] = ("l1_coefficient", "p_start", "p_end")

    p_start: float = Field(1.0, gt=0, le=1)
    """Exponent p of the L_p penalty at the start (1: L1)."""
    p_end: float = Field(0.5, gt=0, le=1)
    """Exponent p at the end of training."""
    anneal_start_frac: float = Field(0.25, ge=0, lt=1)
    """P stays p_start until then."""

    @model_validator(mode="after")
    def _p_falls(self) -> "PAnnealOptions":
        if self.p_end > self.p_start:
            raise ValueError(f"p_end={self.p_end:g} must not exceed p_start={self.p_start:g}")
        return self

    def p_at(self, progress: float) -> float:
        """The exponent at this fraction of training."""
        span = 1.0 - self.anneal_start_frac
        done = min(1.0, max(0.0, progress - self.anneal_start_frac) / span)
        return self.p_start + (self.p_end - self.p_start) * done


@register_architecture
class PAnnealSAE(ReLUSAE):
    arch = "panneal"
    Options = PAnnealOptions

    def sparsity_loss(self, pre: Tensor, acts: Tensor, layout: Layout, ctx: StepContext) -> Tensor:
        p = self.cfg.p_at(ctx.progress)
        powered = (acts + EPS).pow(p) - EPS**p if p != 1.0 else acts
        weighted = layout.weighted_sum(powered, self.W_dec.norm(dim=-1))
        return ctx.sparsity_scale * self.cfg.l1_coefficient * weighted / layout.n_rows

