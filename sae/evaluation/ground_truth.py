"""How well a dictionary recovers known features.

Definitions follow sae_lens.synthetic.evals (a test checks agreement to 1e-4):
- mcc: Hungarian one-to-one matching on |cos| between decoder rows and true features, mean of
  matched values.
- mmcs (Sharkey et al. 2022): for each true feature, the max cosine over decoder rows, averaged.
- frac_recovered_90 / _99: fraction of true features with some decoder row at |cos| >= 0.9 / 0.99.
- uniqueness: distinct best-matched true features / number of latents.
- precision / recall / f1: each latent is a detector for its best-matched true feature
  ("fires" = nonzero); per-latent scores averaged over all latents.
- l0, true_l0, explained_variance, dead_latents (never fired on the eval set), shrinkage
  (mean ||recon|| / ||x||).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from sae.evaluation.reconstruction import Dictionary, ReconstructionStats
from sae.sources.base import GroundTruthSource


def cosines(latent_dirs: Tensor, true_dirs: Tensor) -> Tensor:
    """[n_latents, n_true] cosine similarity between rows of the two matrices."""
    a = latent_dirs / latent_dirs.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    b = true_dirs / true_dirs.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return (a.double() @ b.double().T).float()


def mcc(cos: Tensor) -> float:
    # imported here: scipy.optimize costs ~0.5 s to import, which every command that imports
    # this module (a no-op `sae run` among them) paid before needing it
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(1 - cos.abs().numpy())
    return float(cos.abs()[rows, cols].mean())


def mmcs(cos: Tensor) -> float:
    return float(cos.max(dim=0).values.mean())


def frac_recovered(cos: Tensor, threshold: float) -> float:
    return float((cos.abs().max(dim=0).values >= threshold).float().mean())


def uniqueness(cos: Tensor) -> float:
    return len(cos.abs().argmax(dim=1).unique()) / cos.shape[0]


def recovery_profile(latent_dirs: Tensor, true_dirs: Tensor, chunk: int = 1024) -> dict:
    """Best |cos| of each true feature over the latents and of each latent over the true
    features, sorted high to low: the curves behind frac_recovered_* and uniqueness. Computed
    a block of latents at a time so wide dictionaries never hold the whole cosine matrix."""
    per_feature = torch.zeros(true_dirs.shape[0])
    per_latent = []
    for start in range(0, latent_dirs.shape[0], chunk):
        block = cosines(latent_dirs[start : start + chunk].float().cpu(), true_dirs.float().cpu())
        block = block.abs()
        per_feature = torch.maximum(per_feature, block.max(dim=0).values)
        per_latent.append(block.max(dim=1).values)

    def curve(values: Tensor) -> list[float]:
        return [round(float(v), 4) for v in values.sort(descending=True).values]

    return {
        "best_cos_per_feature": curve(per_feature),
        "best_cos_per_latent": curve(torch.cat(per_latent)),
    }


@dataclass
class GroundTruthMetrics:
    mcc: float
    mmcs: float
    frac_recovered_90: float
    frac_recovered_99: float
    uniqueness: float
    precision: float
    recall: float
    f1: float
    l0: float
    true_l0: float
    explained_variance: float
    dead_latents: int
    shrinkage: float
    # [d_sae] SAELens's sparsity.safetensors tensor; published, not a metrics.json number
    log10_density: Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "log10_density"}


class _Streaming(ReconstructionStats):
    """Sums over eval batches for the activation-dependent metrics."""

    def __init__(self, best_match: Tensor, d_sae: int):
        super().__init__(d_sae)
        self.best_match = best_match
        self.tp = torch.zeros(d_sae, dtype=torch.float64)
        self.fp = torch.zeros(d_sae, dtype=torch.float64)
        self.fn = torch.zeros(d_sae, dtype=torch.float64)
        self.true_l0 = 0.0

    def add(self, x: Tensor, recon: Tensor, latents: Tensor, features: Tensor) -> None:
        super().add(x, recon, latents)
        fires = latents != 0
        truth = features[:, self.best_match] > 0
        self.tp += (fires & truth).sum(0)
        self.fp += (fires & ~truth).sum(0)
        self.fn += (~fires & truth).sum(0)
        self.true_l0 += float((features != 0).sum())

    def classification(self) -> tuple[float, float, float]:
        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))

        precision = ratio(self.tp, self.tp + self.fp)
        recall = ratio(self.tp, self.tp + self.fn)
        f1 = ratio(2 * precision * recall, precision + recall)
        return float(precision.mean()), float(recall.mean()), float(f1.mean())


@torch.no_grad()
def evaluate_ground_truth(
    sae: Dictionary,
    source: GroundTruthSource,
    samples: int,
    batch_size: int,
    seed: int,
    input_scale: float = 1.0,
) -> GroundTruthMetrics:
    """Evaluate `sae` (trained on inputs multiplied by `input_scale`) on fresh samples."""
    true_dirs = source.feature_vectors.float().cpu()
    latent_dirs = sae.W_dec.detach().float().cpu()
    signed = cosines(latent_dirs, true_dirs)
    cos = signed.abs()
    stats = _Streaming(cos.argmax(dim=1), latent_dirs.shape[0])
    generator = torch.Generator().manual_seed(seed)
    device = sae.W_dec.device
    done = 0
    while done < samples:
        n = min(batch_size, samples - done)
        x, features = source.sample_with_features(n, generator)
        latents = sae.encode(x.to(device) * input_scale)
        recon = sae.decode(latents)
        stats.add(x, recon.cpu().double() / input_scale, latents.cpu(), features)
        done += n
    precision, recall, f1 = stats.classification()
    return GroundTruthMetrics(
        mcc=mcc(cos),
        mmcs=mmcs(signed),
        frac_recovered_90=frac_recovered(cos, 0.9),
        frac_recovered_99=frac_recovered(cos, 0.99),
        uniqueness=uniqueness(cos),
        precision=precision,
        recall=recall,
        f1=f1,
        true_l0=stats.true_l0 / stats.rows,
        **stats.summary(),
        log10_density=stats.log10_density(),
    )
