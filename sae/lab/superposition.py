"""Toy Models of Superposition (Elhage et al. 2022), reproduced on trained toy models.

Every experiment trains ReLU output models x' = ReLU(W^T W x + b) (W: [m, n]) on sparse
features x_i ~ U[0, 1] present with probability 1 - S, under an importance-weighted MSE; many
models train at once as one batched tensor (one instance per grid point), as in the paper's
code. What is measured:

- directions: n = 5 features in m = 2 dims, importance 0.9^i: W's columns as arrows per
  sparsity. Dense features give the m most important an orthogonal pair and drop the rest;
  as S rises the model packs more in (antipodal pairs, then a pentagon);
- phase diagram: n = 2 features in m = 1 dim, feature 1 of importance 1, the extra feature 2
  of relative importance r: ignored (||W_2|| < 0.5), given the dimension on its own (||W_1||
  < 0.5) or in superposition with feature 1 (both represented), against r and 1 - S;
- dimensionality: n features in m dims over sparsities; each feature's dimensionality
  D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 and the model's dimensions per feature
  m / ||W||_F^2, with the sticky fractions (1, 3/4, 2/3, 1/2, 2/5, 1/3) D_i clusters at;
- SAE recovery: an SAE trained (by this library's trainer) on a toy model's hidden layer h = W x,
  its decoder rows matched one-to-one to W's represented columns (|cos|, Hungarian).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPRESENTED = 0.5  # a column at least this long carries its feature (the paper's reading)
STICKY = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3)


@dataclass
class ToyModels:
    """I toy models trained together: W [I, m, n], b [I, n]."""

    W: Tensor
    b: Tensor
    density: Tensor  # [I] feature probability 1 - S
    importance: Tensor  # [I, n]

    def norms(self) -> Tensor:
        return self.W.norm(dim=1)  # [I, n]

    def dimensionality(self) -> Tensor:
        """[I, n] D_i; 0 for a column of length 0."""
        norms = self.norms()
        unit = self.W / norms[:, None, :].clamp(min=1e-8)
        overlaps = (unit.transpose(1, 2) @ self.W).pow(2).sum(-1)  # [I, n]
        return norms.pow(2) / overlaps.clamp(min=1e-12)

    def dimensions_per_feature(self) -> Tensor:
        m = self.W.shape[1]
        return m / self.W.pow(2).sum((1, 2))


def train_toy_models(
    n: int,
    m: int,
    density: Tensor,
    importance: Tensor,
    steps: int,
    seed: int,
    batch: int = 1024,
    lr: float = 1e-2,
) -> ToyModels:
    """Train one model per row of density [I] and importance [I, n], all at once."""
    generator = torch.Generator().manual_seed(seed)
    instances = density.shape[0]
    W = torch.empty(instances, m, n)
    torch.nn.init.xavier_normal_(W, generator=generator)
    W.requires_grad_(True)
    b = torch.zeros(instances, n, requires_grad=True)
    optimizer = torch.optim.AdamW([W, b], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        present = torch.rand(instances, batch, n, generator=generator) < density[:, None, None]
        x = torch.rand(instances, batch, n, generator=generator) * present
        h = x @ W.transpose(1, 2)  # [I, B, m]
        out = torch.relu(h @ W + b[:, None, :])
        loss = (importance[:, None, :] * (x - out).pow(2)).sum(-1).mean(-1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return ToyModels(W.detach(), b.detach(), density, importance)


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


def classify_extra_feature(norm_1: float, norm_2: float) -> str:
    if norm_2 < REPRESENTED:
        return "ignored"
    if norm_1 < REPRESENTED:
        return "dedicated"
    return "superposition"


def phase_diagram(
    importances: list[float], densities: list[float], steps: int, seed: int
) -> dict[str, Any]:
    """Rows: 1 - S (densities); columns: the extra feature's relative importance."""
    grid = [(d, r) for d in densities for r in importances]
    density = torch.tensor([d for d, _ in grid])
    importance = torch.tensor([[1.0, r] for _, r in grid])
    models = train_toy_models(2, 1, density, importance, steps, seed)
    norms = models.norms()
    phases = [classify_extra_feature(float(a), float(b)) for a, b in norms]
    width = len(importances)
    return {
        "importance": importances,
        "density": densities,
        "phase": [phases[i * width : (i + 1) * width] for i in range(len(densities))],
        "norms": [[round(float(v), 4) for v in row] for row in norms],
    }


def dimensionality(
    n: int, m: int, densities: list[float], steps: int, seed: int
) -> dict[str, Any]:
    density = torch.tensor(densities)
    importance = torch.ones(len(densities), n)
    models = train_toy_models(n, m, density, importance, steps, seed)
    dims = models.dimensionality()
    represented = models.norms() >= REPRESENTED
    near = []
    for i in range(len(densities)):
        values = dims[i][represented[i]]
        close = [(values - s).abs() < 0.05 for s in STICKY]
        near.append(float(torch.stack(close).any(0).float().mean()) if len(values) else 0.0)
    return {
        "n": n,
        "m": m,
        "density": densities,
        "dimensions_per_feature": [round(float(v), 4) for v in models.dimensions_per_feature()],
        "represented": [int(c) for c in represented.sum(1)],
        "feature_dimensionality": [
            [round(float(v), 4) for v in dims[i][represented[i]]] for i in range(len(densities))
        ],
        "fraction_near_sticky": near,
        "sticky": list(STICKY),
    }


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
    dim_n: int
    dim_m: int
    dim_densities: list[float]


def settings(quick: bool) -> LabSettings:
    if quick:
        return LabSettings(
            direction_steps=3000, steps=1500, sparsities=[0.0, 0.7, 0.9, 0.97],
            importances=[0.3, 1.0, 3.0], phase_densities=[1.0, 0.1, 0.01], dim_n=40, dim_m=8,
            dim_densities=[1.0, 0.3, 0.1, 0.03],
        )  # fmt: skip
    return LabSettings(
        direction_steps=10_000,
        steps=6000,
        sparsities=[0.0, 0.5, 0.7, 0.9, 0.95, 0.97, 0.99],
        importances=[round(10 ** (i / 4 - 1), 3) for i in range(9)],  # 0.1 .. 10
        phase_densities=[round(10 ** (-i / 3), 4) for i in range(7)],  # 1 .. 0.01
        dim_n=100,
        dim_m=20,
        dim_densities=[round(10 ** (-i / 4), 4) for i in range(10)],  # 1 .. ~0.003
    )


def run_lab(out_dir: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    from sae.io import atomic_write_json, atomic_write_text
    from sae.lab.pictures import render_lab

    s = settings(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "directions": directions(s.sparsities, s.direction_steps, seed),
        "phase_diagram": phase_diagram(s.importances, s.phase_densities, s.steps, seed),
        "dimensionality": dimensionality(s.dim_n, s.dim_m, s.dim_densities, s.steps, seed),
        "sae_recovery": sae_recovery(out_dir / "sae_on_hidden", quick, seed),
        "quick": quick,
    }
    atomic_write_json(out_dir / "superposition.json", results)
    atomic_write_text(out_dir / "report.html", render_lab(results))
    print(f"wrote {out_dir / 'report.html'}")
    return results
