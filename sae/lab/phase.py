"""The phase diagram of one extra feature (n = 2 features in m = 1 dim), trained and expected.

Feature 1 has importance 1, the extra feature 2 relative importance r. Per (r, density p) the
extra feature is ignored (||W_2|| < 0.5), given the dimension on its own (||W_1|| < 0.5) or
in superposition with feature 1 (both represented, antipodal).

- trained: each cell is the lowest-loss of several toy models trained from random starts (as
  the paper does; one run can stop in a local minimum at sparse settings), all restarts of
  all cells in one batched training;
- expected: the paper compares the loss of its three candidate solutions (W = [1, 0],
  [0, 1], [1, -1]). Here each candidate starts an optimisation of the *exact* expected loss (a
  quadrature over the feature distribution, no sampled batches), so each settles at the best
  solution of its kind (lengths and biases tuned); the lowest one's phase is the reference.

The trained diagram is scored by the share of cells in the same phase as the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sae.lab.toy_models import REPRESENTED, toy_error, train_toy_models

NODES = 48  # midpoint rule per feature; a finer grid moves no cell's phase
STARTS = {  # W, b / p (a bias of p / 2 predicts an unrepresented feature's mean)
    "ignored": ([1.0, 0.0], [0.0, 0.5]),
    "dedicated": ([0.0, 1.0], [0.5, 0.0]),
    "superposition": ([1.0, -1.0], [0.0, 0.0]),
}


def classify_extra_feature(norm_1: float, norm_2: float) -> str:
    if norm_2 < REPRESENTED:
        return "ignored"
    if norm_1 < REPRESENTED:
        return "dedicated"
    return "superposition"


def quadrature(density: Tensor, nodes: int = NODES) -> tuple[Tensor, Tensor]:
    """points [P, 2] and weights [I, P] with E_x f(x) = sum_k weights[i, k] f(points[k]).

    Each feature is absent (0) with probability 1 - p, else U[0, 1]: the four cases (none,
    only x_1, only x_2, both) on a midpoint grid.
    """
    u = (torch.arange(nodes) + 0.5) / nodes
    zero = torch.zeros(nodes)
    points = torch.cat([
        torch.zeros(1, 2), torch.stack([u, zero], 1), torch.stack([zero, u], 1),
        torch.cartesian_prod(u, u),
    ])  # fmt: skip
    p = density[:, None]
    weights = torch.cat([
        (1 - p) ** 2, (p * (1 - p) / nodes).expand(-1, 2 * nodes),
        (p * p / nodes**2).expand(-1, nodes * nodes),
    ], dim=1)  # fmt: skip
    return points, weights


def exact_loss(W: Tensor, b: Tensor, importance: Tensor, density: Tensor) -> Tensor:
    """[I] expected loss of models W [I, 1, 2], b [I, 2] over the feature distribution."""
    points, weights = quadrature(density)
    return (weights * toy_error(W, b, points, importance)).sum(-1)


def expected_solutions(
    importance: Tensor, density: Tensor, steps: int = 600, lr: float = 2e-2
) -> tuple[Tensor, Tensor]:
    """Per cell of importance [I, 2] and density [I]: (exact loss [I, 3], W [I, 3, 1, 2]) of
    the three candidates of STARTS, each optimised from its start on the exact loss."""
    rows, k = density.shape[0], len(STARTS)
    W = torch.tensor([w for w, _ in STARTS.values()]).repeat(rows, 1)[:, None, :]
    b = torch.tensor([b for _, b in STARTS.values()]).repeat(rows, 1)
    b = b * density.repeat_interleave(k)[:, None]
    W.requires_grad_(True)
    b.requires_grad_(True)
    density_k, importance_k = density.repeat_interleave(k), importance.repeat_interleave(k, 0)

    def loss() -> Tensor:
        return exact_loss(W, b, importance_k, density_k)

    optimizer = torch.optim.Adam([W, b], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss().sum().backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        return loss().view(rows, k), W.detach().view(rows, k, 1, 2)


def expected_phases(importance: Tensor, density: Tensor) -> tuple[list[str], Tensor]:
    """The phase of each cell's lowest-loss candidate (read from its column lengths, as the
    trained models' are: a start may drift to another kind of solution), and that loss."""
    losses, W = expected_solutions(importance, density)
    best = losses.argmin(1)
    pick = torch.arange(len(best))
    norms = W[pick, best].norm(dim=1)  # [I, 2]
    return [classify_extra_feature(float(a), float(b)) for a, b in norms], losses[pick, best]


def phase_diagram(
    importances: list[float], densities: list[float], steps: int, seed: int, restarts: int = 1
) -> dict[str, Any]:
    """Rows: 1 - S (densities); columns: the extra feature's relative importance."""
    grid = [(d, r) for d in densities for r in importances]
    density = torch.tensor([d for d, _ in grid])
    importance = torch.tensor([[1.0, r] for _, r in grid])
    models = train_toy_models(2, 1, density, importance, steps, seed, restarts=restarts)
    trained = [classify_extra_feature(float(a), float(b)) for a, b in models.norms()]
    expected, expected_loss = expected_phases(importance, density)
    width = len(importances)

    def as_grid(cells: list[Any]) -> list[list[Any]]:
        return [cells[i * width : (i + 1) * width] for i in range(len(densities))]

    agree = sum(a == b for a, b in zip(trained, expected, strict=True))
    return {
        "importance": importances,
        "density": densities,
        "restarts": restarts,
        "phase": as_grid(trained),
        "expected_phase": as_grid(expected),
        "agreement": round(agree / len(grid), 4),
        "norms": [[round(float(v), 4) for v in row] for row in models.norms()],
        # the kept restart's exact loss over the best candidate's: about 1 when training found
        # the optimum, above 1 when it stopped in a worse minimum
        "loss_over_expected": as_grid(
            [
                round(float(v), 4)
                for v in exact_loss(models.W, models.b, importance, density) / expected_loss
            ]
        ),
    }
