"""Toy Models of Superposition (Elhage et al. 2022), reproduced on trained toy models.

Every experiment trains toy models (sae/lab/toy_models.py) all at once, one instance per grid
point. What is measured:

- directions: n = 5 features in m = 2 dims, importance 0.9^i: W's columns as arrows per
  sparsity. Dense features give the m most important an orthogonal pair and drop the rest;
  as S rises the model packs more in (antipodal pairs, then a pentagon);
- phase diagram (sae/lab/phase.py): n = 2 features in m = 1 dim, the extra feature ignored,
  given the dimension or in superposition against its relative importance and 1 - S, each
  cell the best of several restarts, beside the exact-loss reference;
- dimensionality: n features in m dims over sparsities; each feature's dimensionality
  D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 and the model's dimensions per feature
  m / ||W||_F^2, and the share of D_i at the sticky fractions (STICKY) against chance;
- SAE recovery: an SAE trained (by this library's trainer) on a toy model's hidden layer h = W x,
  its decoder rows matched one-to-one to W's represented columns (|cos|, Hungarian).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae.lab.phase import phase_diagram
from sae.lab.toy_models import REPRESENTED, train_toy_models

# the fractions D_i sticks at, with the polytope that gives each: a feature alone in its
# dimension, a tetrahedron (4 features in 3 dims), a triangle (3 in 2), a digon (an antipodal
# pair), a pentagon, a square antiprism (8 in 3); the paper names these (Elhage et al. 2022,
# "The Geometry of Superposition"). The hexagon (6 in 2, 1/3) continues the polygons: toy
# models with few dims per feature measured here pack sparse features into it
STICKY = {
    1.0: "1",
    3 / 4: "3/4",
    2 / 3: "2/3",
    1 / 2: "1/2",
    2 / 5: "2/5",
    3 / 8: "3/8",
    1 / 3: "1/3",
}
STICKY_TOLERANCE = 0.02  # |D_i - fraction|; wider windows would cover most of [0, 1]
SPARSE = 0.5  # 1 - S at or below which the sticky share is pooled
NAMED_RANGE = 0.3  # dims per feature, just under the smallest sticky fraction (1/3)


# ---------------------------------------------------------------------- the experiments


def directions(sparsities: list[float], steps: int, seed: int) -> dict[str, Any]:
    n, m = 5, 2
    density = 1 - torch.tensor(sparsities)
    importance = (0.9 ** torch.arange(n, dtype=torch.float32)).expand(len(sparsities), n)
    models = train_toy_models(n, m, density, importance.contiguous(), steps, seed)
    norms = models.norms()
    return {
        "n": n,
        "m": m,
        "sparsity": sparsities,
        "W": [[[round(float(v), 4) for v in row] for row in w] for w in models.W],
        "represented": [int(c) for c in (norms >= REPRESENTED).sum(1)],
        "b": [[round(float(v), 4) for v in row] for row in models.b],
    }


def near_sticky(values: Tensor, tolerance: float = STICKY_TOLERANCE) -> Tensor:
    """Which D_i lie within tolerance of a sticky fraction."""
    fractions = torch.tensor(list(STICKY))
    return ((values[..., None] - fractions).abs() <= tolerance).any(-1)


def chance_near_sticky(tolerance: float = STICKY_TOLERANCE) -> float:
    """The share of D_i near a sticky fraction if they were spread evenly over [0, 1]: the
    windows' union. The measured share means something only well above it."""
    grid = (torch.arange(100_000) + 0.5) / 100_000
    return round(float(near_sticky(grid, tolerance).float().mean()), 4)


def dimensionality(
    n: int, m: int, densities: list[float], steps: int, seed: int, lr: float = 1e-2
) -> dict[str, Any]:
    density = torch.tensor(densities)
    importance = torch.ones(len(densities), n)
    models = train_toy_models(n, m, density, importance, steps, seed, lr=lr)
    dims = models.dimensionality()
    represented = models.norms() >= REPRESENTED
    values = [dims[i][represented[i]] for i in range(len(densities))]
    near = [near_sticky(v) for v in values]
    per_feature = models.dimensions_per_feature()
    sparse = [i for i, d in enumerate(densities) if d <= SPARSE]
    # the named polytopes all give D_i >= 1/3: a model spending fewer dims per feature packs
    # most of them into bigger ones (measured, n = 100 in m = 10: D_i of about 1/4 down to
    # 1/6, larger polygons, at 1 / (1 - S) = 8.5 to 20)
    named = [i for i in sparse if per_feature[i] >= NAMED_RANGE]
    return {
        "n": n,
        "m": m,
        "steps": steps,
        "density": densities,
        "dimensions_per_feature": [round(float(v), 4) for v in per_feature],
        "represented": [int(c) for c in represented.sum(1)],
        "feature_dimensionality": [[round(float(x), 4) for x in v] for v in values],
        "fraction_near_sticky": [
            round(float(v.float().mean()), 4) if len(v) else 0.0 for v in near
        ],
        # pooled over the sparse settings (1 - S <= SPARSE), and over those of them whose
        # models spend at least NAMED_RANGE dims per feature, where the named polytopes fit
        "sticky_share_sparse": _pooled(near, sparse),
        "sticky_share_named_range": _pooled(near, named),
        "sticky_share_chance": chance_near_sticky(),
        "sticky": list(STICKY),
        "sticky_labels": list(STICKY.values()),
        "sticky_tolerance": STICKY_TOLERANCE,
    }


def _pooled(near: list[Tensor], settings: list[int]) -> float:
    pooled = torch.cat([near[i] for i in settings]) if settings else torch.zeros(0)
    return round(float(pooled.float().mean()), 4) if len(pooled) else 0.0


def sae_recovery(out_dir: Path, quick: bool, seed: int) -> dict[str, Any]:
    """Train an SAE with this library on a toy model's hidden layer; match it to W."""
    from pipelines.train_and_evaluate import build_ground_truth, train_and_evaluate
    from sae.config import validate_tree
    from sae.evaluation.ground_truth import cosines

    tree = {
        "seed": seed,
        "data": {"toy": {"n_features": 20, "d_hidden": 8, "feature_probability": 0.03,
                         "train_steps": 1500 if quick else 5000, "train_lr": 1e-2}},
        "sae": {"arch": "topk", "d_sae": 32, "k": 2},
        "train": {"samples": 150_000 if quick else 600_000, "batch_size": 256, "lr": 3e-3,
                  "lr_warmup_steps": 10, "checkpoint_every_steps": 10_000,
                  "dead_window_samples": 20_000, "device": "cpu"},
        "eval": {"samples": 8192, "batch_size": 4096, "threshold_batches": 2},
        "logging": {"wandb": False, "progress": False},
    }  # fmt: skip
    cfg = validate_tree(tree)
    source = build_ground_truth(cfg)
    metrics = train_and_evaluate(cfg, source, out_dir)
    # the exported decoder (input scale folded in): directions as a SAELens user sees them
    cos = cosines(_decoder(out_dir), source.feature_vectors.float()).abs()
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-cos.numpy())
    order = sorted(range(len(cols)), key=lambda i: cols[i])
    return {
        "n_features": tree["data"]["toy"]["n_features"],
        "d_hidden": tree["data"]["toy"]["d_hidden"],
        "represented": int(source.feature_vectors.shape[0]),
        "d_sae": tree["sae"]["d_sae"],
        "mcc": metrics["mcc"],
        "frac_recovered_90": metrics["frac_recovered_90"],
        "explained_variance": metrics["explained_variance"],
        "matched_cos": [round(float(cos[rows[i], cols[i]]), 4) for i in order],
        "cos_matrix": [[round(float(v), 3) for v in cos[rows[i]]] for i in order],
        "run_dir": out_dir.name,
    }


def _decoder(run_dir: Path) -> Tensor:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "sae" / "sae_weights.safetensors"))["W_dec"].float()


# ---------------------------------------------------------------------- the command


@dataclass
class LabSettings:
    direction_steps: int  # n = 5 models converge slowly at S = 0 (their two dims are shared)
    steps: int
    sparsities: list[float]
    importances: list[float]
    phase_densities: list[float]
    restarts: int  # per phase-diagram cell, the lowest-loss one kept
    dim_n: int
    dim_m: int
    dim_densities: list[float]
    dim_steps: int


def settings(quick: bool) -> LabSettings:
    if quick:
        return LabSettings(
            direction_steps=3000, steps=1500, sparsities=[0.0, 0.7, 0.9, 0.97],
            importances=[0.3, 1.0, 3.0], phase_densities=[1.0, 0.1, 0.01], restarts=4,
            dim_n=40, dim_m=5, dim_densities=[1.0, 0.5, 0.25], dim_steps=3000,
        )  # fmt: skip
    return LabSettings(
        direction_steps=10_000,
        steps=3000,
        sparsities=[0.0, 0.5, 0.7, 0.9, 0.95, 0.97, 0.99],
        importances=[round(10 ** (i / 4 - 1), 3) for i in range(9)],  # 0.1 .. 10
        phase_densities=[round(10 ** (-i / 3), 4) for i in range(7)],  # 1 .. 0.01
        restarts=4,
        # the paper's figure has n = 400 in m = 30 over 1 - S = 1 .. 1/20; n = 100 in m = 10
        # keeps its ratio of features to dims near 10 at a sixteenth of the compute per step
        dim_n=100,
        dim_m=10,
        dim_densities=[round(20 ** (-i / 7), 4) for i in range(8)],  # 1 .. 0.05
        dim_steps=6000,
    )


def run_lab(out_dir: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    from sae.io import atomic_write_json, atomic_write_text
    from sae.lab.pictures import render_lab

    s = settings(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "directions": directions(s.sparsities, s.direction_steps, seed),
        "phase_diagram": phase_diagram(s.importances, s.phase_densities, s.steps, seed, s.restarts),
        "dimensionality": dimensionality(s.dim_n, s.dim_m, s.dim_densities, s.dim_steps, seed),
        "sae_recovery": sae_recovery(out_dir / "sae_on_hidden", quick, seed),
        "quick": quick,
    }
    atomic_write_json(out_dir / "superposition.json", results)
    atomic_write_text(out_dir / "report.html", render_lab(results))
    print(f"wrote {out_dir / 'report.html'}")
    return results
