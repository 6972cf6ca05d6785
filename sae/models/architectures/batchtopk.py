"""BatchTopK SAE (Bussmann et al. 2024).

Training keeps the k * B largest activations across the whole batch, so rows may use more or
fewer than k latents. Inference cannot depend on the batch, so after training a single
threshold is fitted (the mean over batches of the smallest activation BatchTopK kept) and the
SAE becomes a JumpReLU: latent = relu(pre) * (pre > threshold). That is also how it is
exported to SAELens.

One threshold, not one per latent: training's selection is itself a single cutoff per batch
(the k * B-th largest value), so a single threshold is the rule training used. Per-latent
thresholds matched to each latent's training firing rate (its (1 - p_i) quantile on the fit
rows) changed nothing that matters in the ground-truth suite: s03 dead 68.0% -> 66.8%, f1 0.063
-> 0.063; s05 f1 0.680 -> 0.678, dead 4.3% -> 3.9%, L0 unchanged. The latents that are silent at
inference are silent in training too (s03: 69.5% dead at the last step, even 67.6% when started
at the true dictionary): at 16x superposition a batch-wide cutoff spends its budget on the
interference of crowded rows, which a per-row top-k does not (same weights, EV 0.75 -> 0.60
at the switch from the warm start), and the latents that lose it starve.
"""

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from sae.config import SAEConfig, WarmStartOptions
from sae.distributed import World
from sae.models.base import SparseAutoencoder
from sae.models.registry import register_architecture
from sae.models.sparse import Layout, batch_topk_pairs


class BatchTopKOptions(WarmStartOptions):
    shown_keys: ClassVar[tuple[str, ...]] = ("k",)

    # 0.8 rather than the shared 0.5: a batch-wide cutoff starves latents (see the module
    # docstring), so the less of the run it has, the fewer die. Quick suite, ours, mcc / dead,
    # 0.5 -> 0.8: s03 0.855 / 68% -> 0.879 / 50%; s05 0.954 / 4.3% -> 0.964 / 3.1%; s16
    # 0.985 / 1.6% -> 0.999 / 0%; s09 0.896 -> 0.892 and s11 1.000 -> 0.9995 (flat, the oracle
    # moved alike); hierarchical s13 0.651 / f1 0.48 -> 0.632 / 0.46 (one seed each).
    warm_start_frac: float = Field(0.8, ge=0, le=1)
    """Fraction of training run as a per-row TopK before the batch-level TopK."""
    # As topk's (and matryoshka's): AuxK is normalised by the residual's variance, the
    # reconstruction loss is not. Suite, dead latents 1/32 -> 0.5, every mcc within 0.003:
    # s03 142 -> 81 of 256, s05 13 -> 11, s07 2 -> 0, s12 5 -> 3, s17 1 -> 0.
    aux_coefficient: float = Field(0.5, ge=0)
    """AuxK loss weight (0.5, not OpenAI's 1/32: see the comment above)."""

    def saelens_training(self) -> tuple[str, dict[str, Any]]:
        return "batchtopk", {"k": self.k}


@register_architecture
class BatchTopKSAE(SparseAutoencoder):
    arch = "batchtopk"
    Options = BatchTopKOptions
    saelens_arch = "jumprelu"
    warm_startable = True

    def __init__(self, d_in: int, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__(d_in, cfg, generator)
        # NaN until fitted: until then inference falls back to batch-level top-k.
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def select(self, pre: Tensor, training: bool) -> Layout:
        if training or torch.isnan(self.threshold):
            return batch_topk_pairs(pre.relu(), int(self.cfg.k * pre.shape[0]))
        return Layout.from_threshold(pre, self.threshold, masked=True)

    def training_select(self, pre: Tensor, group: World) -> Layout:
        if not group.distributed:
            return self.select(pre, training=True)
        return global_batch_topk(pre.relu(), self.cfg.k, group)

    @torch.no_grad()
    def fit_inference(self, batches: list[Tensor]) -> None:
        minima = []
        for x in batches:
            pre = self.pre_acts(x)
            layout = self.select(pre, training=True)
            kept = self.pair_acts(layout.gather(pre), layout.latent)
            positive = kept[kept > 0]
            if positive.numel():
                minima.append(positive.min())
        if minima:
            self.threshold.copy_(torch.stack(minima).mean())

    def saelens_weights(self) -> dict[str, Tensor]:
        weights = super().saelens_weights()
        weights["threshold"] = self.threshold.detach().expand(self.d_sae).clone()
        return weights


def global_batch_topk(acts: Tensor, k: float, group: World) -> Layout:
    """The k * B largest entries of a batch of B rows split over the ranks of `group`: each
    rank keeps its entries at or above the batch's cutoff. Zero entries are left out (the
    single-process top-k may keep some when fewer than k * B are positive; they add nothing)."""
    cutoff = group.kth_largest(acts, int(k * group.rows(acts.shape[0])))
    return Layout.from_mask(acts >= cutoff if cutoff > 0 else acts > 0)
