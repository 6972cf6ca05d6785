"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

The dictionary is read as nested prefixes W_dec[:m_1] in W_dec[:m_2] ... in W_dec; each prefix
must reconstruct the input on its own. Early latents are pushed to carry general (parent)
features, so they do not absorb their children, which is what makes this architecture the
best published one on hierarchical ground truth. Activation and inference threshold are
BatchTopK's.

Options from the literature, measured on the suite's hierarchical cases (s13, s14, s15):
- matryoshka_inner_weight: the "balanced" Matryoshka of Chanin et al. 2025 (Feature Hedging):
  inner losses weighted m, m^2, ... from the outermost inward, so that the outer loss's
  absorption pressure can cancel the hedging that narrow prefixes cause;
- matryoshka_random_prefixes: Nabeshima's prefix ends drawn afresh each step (the user rarely
  knows the levels of the hierarchy; fixed widths that miss them split a level in two);
- matryoshka_aux: SAELens's Matryoshka aux loss, AuxK per level: the dead latents of a level
  reconstruct what the prefix ending there misses, not what the whole dictionary misses.

None of the three beat the seed-to-seed spread on those cases (f1 within +-0.03 of the
defaults; balanced m=0.5 lost 0.03), so all stay off. What did move them is AuxK's weight
(aux_coefficient, 0.5 as batchtopk's): about a fifth of the latents ended dead on every
hierarchical case, and f1 counts a dead latent as 0. Our AuxK term is normalised by the
residual's variance while the reconstruction terms are raw squared errors, so at OpenAI's 1/32
it is tiny beside them: on s13 at the end of training, AuxK 0.03 against a loss of 47
(full-width error 8), where in OpenAI's code, with both terms normalised, it is about 0.03
against 0.05. Adam keeps a dying latent's steps small for as long as its second moment
remembers the large reconstruction gradients, so a weak AuxK cannot pull it back in time. s13
f1 at aux_coefficient 1/32, 1/8, 1/2, 2: 0.68, 0.72, 0.77, 0.73 (seed-to-seed spread at 1/32:
0.63 to 0.68).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from sae.models.architectures.batchtopk import BatchTopKOptions, BatchTopKSAE
from sae.models.base import StepContext, TrainOutput, row_sq_error
from sae.models.registry import register_architecture
from sae.models.sparse import Latents, Layout, topk_pairs


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
    matryoshka_inner_weight: float = Field(1.0, ge=0)
    """Balanced Matryoshka (Chanin et al. 2025): the inner prefix losses weigh m, m^2, ... from
    the outermost inward (1: every prefix alike, the original Matryoshka; 0: plain BatchTopK).
    """
    matryoshka_random_prefixes: int = Field(0, ge=0)
    """If above 0, that many prefix ends are drawn afresh each training step (Nabeshima 2024's
    Pareto draw, which favours short prefixes) instead of the fixed matryoshka_widths.
    """

    matryoshka_aux: bool = False
    """AuxK per level (SAELens's use_matryoshka_aux_loss): a level's dead latents learn the
    residual of the prefix ending at that level instead of the whole dictionary's residual.
    """

    @model_validator(mode="after")
    def _nested(self) -> MatryoshkaOptions:
        widths = self.matryoshka_widths
        if widths is not None:
            if any(b <= a for a, b in zip(widths, widths[1:], strict=False)) or widths[0] < 1:
                raise ValueError("matryoshka_widths must be positive and strictly increasing")
            if widths[-1] > self.d_sae:
                raise ValueError(f"matryoshka_widths exceed d_sae={self.d_sae}")
        if self.matryoshka_random_prefixes >= self.d_sae:
            raise ValueError(f"matryoshka_random_prefixes must be below d_sae={self.d_sae}")
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

    def training_forward(self, x: Tensor, ctx: StepContext) -> TrainOutput:
        # random prefixes are drawn from the step (progress is step / total_steps), so a
        # resumed run draws the same ones without any state of its own
        self._step_key = round(ctx.progress * 2**40)
        return super().training_forward(x, ctx)

    def training_widths(self) -> list[int]:
        """The prefix ends of this training step."""
        n = self.cfg.matryoshka_random_prefixes
        if n == 0:
            return self.prefix_widths()
        generator = torch.Generator().manual_seed(getattr(self, "_step_key", 0))
        return pareto_prefixes(self.d_sae, n, generator)

    def reconstruction_loss(self, x: Tensor, latents: Latents, mse: Tensor) -> Tensor:
        # Partial reconstructions are built up prefix by prefix, each from the previous one;
        # the loss is the weighted mean of the inner ones and the full one (`mse`, weight 1).
        widths = self.training_widths()
        m = self.cfg.matryoshka_inner_weight
        inner = len(widths) - 1
        total, weights, recon, start = mse, 1.0, self.b_dec, 0
        for level, end in enumerate(widths[:-1]):
            values, layout = latents.layout.restrict(latents.values, start, end)
            recon = recon + layout.decode(values, self.W_dec[start:end])
            weight = m ** (inner - level)
            if weight > 0:
                total = total + weight * row_sq_error(x, recon)
                weights += weight
            start = end
        return total / weights


    def _auxk_layout(self, pre: Tensor, ctx: StepContext) -> Layout | None:
        if self.cfg.matryoshka_aux:
            return None  # AuxK runs per level, in extra_loss
        return super()._auxk_layout(pre, ctx)

    def extra_loss(
        self, x: Tensor, pre: Tensor, layout: Layout, recon: Tensor, ctx: StepContext
    ) -> Tensor:
        """The Matryoshka aux loss: each level's top-k_aux dead latents reconstruct the residual
        of the prefix that ends with the level (each term scaled down while a level has fewer
        dead latents than k_aux, as SAELens does)."""
        dead_mask = ctx.dead_mask
        zero = x.new_zeros(())
        if not self.cfg.matryoshka_aux or "auxk" not in self.cfg.remedy() or dead_mask is None:
            return zero
        if not bool(dead_mask.any()):
            return zero
        k_aux = self.cfg.aux_k or self.d_in // 2
        with torch.no_grad():
            pre_all = self.pre_acts(x)
            acts = layout.apply_mask(self.pair_acts(pre, layout.latent))
        total, partial, start = zero, self.b_dec.detach(), 0
        for end in self.training_widths():
            with torch.no_grad():
                values, sub = layout.restrict(acts, start, end)
                partial = partial + sub.decode(values, self.W_dec[start:end])
            dead = dead_mask[start:end].nonzero().flatten() + start
            if dead.numel():
                chosen = topk_pairs(pre_all[:, dead], min(k_aux, dead.numel()))
                aux_layout = Layout.from_pairs(
                    chosen.rows, dead[chosen.cols], x.shape[0], self.d_sae, chosen.row_offsets
                )
                term = self.auxk_loss(x, pre_all, aux_layout, partial, ctx.group)
                total = total + min(dead.numel() / k_aux, 1.0) * term
            start = end
        return total


def default_widths(d_sae: int) -> list[int]:
    """Doubling prefixes from d_sae/32 up to d_sae."""
    widths = [max(1, d_sae >> shift) for shift in (5, 4, 3, 2, 1)]
    return sorted({w for w in widths if w < d_sae}) + [d_sae]


def pareto_prefixes(
    d_sae: int, n: int, generator: torch.Generator, power: float = 0.5
) -> list[int]:
    """`n` distinct prefix ends in [1, d_sae), then d_sae: Nabeshima's draw, P(end <= w) =
    (w / d_sae) ** power, which puts most ends among the first latents."""
    cdf = (torch.arange(d_sae + 1, dtype=torch.float64) / d_sae) ** power
    pdf = (cdf[1:] - cdf[:-1])[:-1]  # ends 1 .. d_sae - 1
    ends = torch.multinomial(pdf, n, replacement=False, generator=generator) + 1
    return [*sorted(int(e) for e in ends), d_sae]


