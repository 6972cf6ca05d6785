"""Feature absorption where the hierarchy is known.

A parent feature p (e.g. "animal") is active whenever one of its children c ("dog") is. An SAE
that absorbs p into c's latent has a latent for "dog" that also carries "animal", and p's own
latent stops firing exactly when a child is active. Measured per parent:
- p's latent: the latent that detects p best (F1 of "fires" against "p is active") on the
  evaluation rows;
- absorption rate: of the rows where p and at least one child are active, the fraction on
  which p's latent does not fire (SAEBench's absorption fraction, with the true hierarchy in
  place of its first-letter probe);
- absorbed into: the latent that fires most often on those missed rows, with its decoder's
  cosine to p and to the child it matches best.
`absorption_rate` is the mean over parents (SAEBench averages its per-letter fractions);
`absorption_rate_pooled` pools the rows of every parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sae.evaluation.ground_truth import cosines
from sae.evaluation.monosemanticity import DetectorCounts
from sae.evaluation.reconstruction import Dictionary
from sae.sources.base import GroundTruthSource


@dataclass
class ParentAbsorption:
    parent: int  # index of the parent among the true features
    children: list[int]
    latent: int  # the parent's best latent
    f1: float  # its F1 as a detector of the parent
    child_rows: int  # rows with the parent and a child active
    missed_rows: int  # of those, rows where the parent's latent does not fire
    absorbed_into: int | None  # the latent firing most on the missed rows
    absorber_cos_parent: float | None
    absorber_best_child: int | None  # the child its decoder matches best
    absorber_cos_child: float | None

    @property
    def rate(self) -> float:
        return self.missed_rows / self.child_rows if self.child_rows else 0.0


@dataclass
class Absorption:
    parents: list[ParentAbsorption] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        counted = [p for p in self.parents if p.child_rows]
        rows = sum(p.child_rows for p in counted)
        return {
            "absorption_rate": sum(p.rate for p in counted) / len(counted) if counted else 0.0,
            "absorption_rate_pooled": sum(p.missed_rows for p in counted) / rows if rows else 0.0,
            "parents_scored": len(counted),
            "per_parent": [{**p.__dict__, "rate": p.rate} for p in self.parents],
        }


def hierarchy_of(source: GroundTruthSource) -> dict[int, list[int]]:
    """Parent feature -> its children's features, for a synthetic source with a hierarchy
    (sae_lens.synthetic's tree); empty for any other source."""
    model = getattr(source, "model", None)
    tree = getattr(model, "hierarchy", None)
    if tree is None:
        return {}
    parents: dict[int, list[int]] = {}

    def visit(node: Any) -> None:
        children = [c.feature_index for c in node.children if c.feature_index is not None]
        if node.feature_index is not None and children:
            parents[int(node.feature_index)] = [int(c) for c in children]
        for child in node.children:
            visit(child)

    for root in tree.roots:
        visit(root)
    return parents


def _rows(source: GroundTruthSource, samples: int, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < samples:
        n = min(batch_size, samples - done)
        yield source.sample_with_features(n, generator)
        done += n


@torch.no_grad()
def hierarchy_absorption(
    sae: Dictionary,
    source: GroundTruthSource,
    hierarchy: dict[int, list[int]],
    samples: int,
    batch_size: int,
    seed: int,
    input_scale: float = 1.0,
) -> Absorption:
    """Two passes over the same rows (same seed): find each parent's latent, then count the
    rows it misses while a child is active and which latents fire there instead."""
    parents = sorted(hierarchy)
    device = sae.W_dec.device
    d_sae = sae.W_dec.shape[0]

    def fires(x: Tensor) -> Tensor:
        return (sae.encode(x.to(device) * input_scale) != 0).cpu()

    detectors = DetectorCounts(d_sae, [str(p) for p in parents])
    for x, features in _rows(source, samples, batch_size, seed):
        detectors.add(fires(x), features[:, parents] > 0)
    f1 = detectors.f1()
    latents = f1.argmax(dim=0)  # [n_parents]

    child_rows = torch.zeros(len(parents), dtype=torch.float64)
    missed = torch.zeros(len(parents), dtype=torch.float64)
    missed_fires = torch.zeros(len(parents), d_sae, dtype=torch.float64)
    for x, features in _rows(source, samples, batch_size, seed):
        fired = fires(x)
        active = features > 0
        with_child = torch.stack(
            [active[:, p] & active[:, hierarchy[p]].any(dim=1) for p in parents], dim=1
        )  # [rows, n_parents]
        miss = with_child & ~fired[:, latents]
        child_rows += with_child.sum(0).double()
        missed += miss.sum(0).double()
        missed_fires += miss.double().T @ fired.double()

    decoder = sae.W_dec.detach().float().cpu()
    truth = source.feature_vectors.float().cpu()
    result = Absorption()
    for i, p in enumerate(parents):
        counts = missed_fires[i].clone()
        counts[latents[i]] = 0
        absorber = int(counts.argmax()) if missed[i] > 0 and counts.max() > 0 else None
        cos_parent = cos_child = best_child = None
        if absorber is not None:
            cos = cosines(decoder[absorber : absorber + 1], truth[[p, *hierarchy[p]]])[0]
            cos_parent = float(cos[0])
            j = int(cos[1:].abs().argmax())
            best_child, cos_child = hierarchy[p][j], float(cos[1 + j])
        result.parents.append(
            ParentAbsorption(
                parent=p,
                children=hierarchy[p],
                latent=int(latents[i]),
                f1=float(f1[latents[i], i]),
                child_rows=int(child_rows[i]),
                missed_rows=int(missed[i]),
                absorbed_into=absorber,
                absorber_cos_parent=cos_parent,
                absorber_best_child=best_child,
                absorber_cos_child=cos_child,
            )
        )
    return result


# Variables of the generated language whose values nest under one parent: "inside brackets"
# (depth 1, 2, 3) and "in a list" (item 1 .. 6); each value implies the parent.
NESTED_VARIABLES = ("bracket_depth", "list_position")


def label_absorption(latents: Tensor, truth: Tensor, names: list[str]) -> dict[str, Any]:
    """The same measure on labelled rows (latents [R, d_sae], truth [R, n] bool): for each
    nested variable the parent is "any value" and the children are its values, so every
    parent row has a child; the parent's latent is its best detector by F1, its absorption
    the share of parent rows it misses (also per child), and the absorber the latent firing
    most on the missed rows, with the child it detects best."""
    fires = latents != 0
    result: dict[str, Any] = {}
    for variable in NESTED_VARIABLES:
        columns = [i for i, n in enumerate(names) if n.split("=")[0] == variable]
        if not columns:
            continue
        children = truth[:, columns]
        parent = children.any(dim=1)
        if not parent.any():
            continue
        counts = DetectorCounts(fires.shape[1], [variable, *[names[i] for i in columns]])
        counts.add(fires, torch.cat([parent[:, None], children], dim=1))
        f1 = counts.f1()
        latent = int(f1[:, 0].argmax())
        missed = parent & ~fires[:, latent]
        per_child = {
            names[c]: float((missed & truth[:, c]).sum() / truth[:, c].sum().clamp(min=1))
            for c in columns
        }
        on_missed = fires[missed].sum(0)
        on_missed[latent] = 0
        absorber = int(on_missed.argmax()) if int(on_missed.max()) > 0 else None
        result[variable] = {
            "latent": latent,
            "f1": float(f1[latent, 0]),
            "parent_rows": int(parent.sum()),
            "rate": float(missed.sum() / parent.sum()),
            "rate_per_child": per_child,
            "absorbed_into": absorber,
            "absorber_best_child": None
            if absorber is None
            else names[columns[int(f1[absorber, 1:].argmax())]],
        }
    if result:
        rates = [r["rate"] for r in result.values()]
        return {"absorption_rate": sum(rates) / len(rates), "per_variable": result}
    return {}
