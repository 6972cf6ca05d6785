"""Toy models of superposition (Elhage et al. 2022), many trained at once as one batched tensor.

A toy model maps n features through m < n dims and back: x' = ReLU(W^T W x + b), W [m, n],
trained under an importance-weighted MSE on features x_i ~ U[0, 1] present with probability
1 - S. Every experiment trains one model per grid point ("instance") in one tensor op, as the
paper's code does, and optionally several restarts per point, keeping the lowest-loss one: the
paper's phase diagram does the same, since one run from a random start can stop in a local
minimum (a part-grown column at sparse settings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

REPRESENTED = 0.5  # a column at least this long carries its feature (the paper's reading)
EVAL_BATCHES = 16  # x batch: a held-out loss on 16 x 1024 rows ranks the restarts


@dataclass
class ToyModels:
    """I toy models: W [I, m, n], b [I, n], each row the lowest-loss of its restarts."""

    W: Tensor
    b: Tensor
    density: Tensor  # [I] feature probability 1 - S
    importance: Tensor  # [I, n]
    loss: Tensor  # [I] held-out importance-weighted MSE of the kept restart
    restart_loss: Tensor  # [I, R] the same for every restart

    def norms(self) -> Tensor:
        return self.W.norm(dim=1)  # [I, n]

    def dimensionality(self) -> Tensor:
        """[I, n] D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2; 0 for a column of length 0."""
        norms = self.norms()
        unit = self.W / norms[:, None, :].clamp(min=1e-8)
        overlaps = (unit.transpose(1, 2) @ self.W).pow(2).sum(-1)  # [I, n]
        return norms.pow(2) / overlaps.clamp(min=1e-12)

    def dimensions_per_feature(self) -> Tensor:
        m = self.W.shape[1]
        return m / self.W.pow(2).sum((1, 2))


def sample_features(density: Tensor, n: int, batch: int, generator: torch.Generator) -> Tensor:
    """[I, batch, n] features: present with probability density [I], then U[0, 1].

    One uniform draw u serves both: present when u < p, and then u / p is U[0, 1). Half the
    random numbers of drawing presence and value apart, and drawing them is most of a step's
    cost for wide models.
    """
    p = density[:, None, None]
    u = torch.rand(density.shape[0], batch, n, generator=generator)
    return torch.where(u < p, u / p, 0.0)


def toy_error(W: Tensor, b: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """Importance-weighted squared error of each row, summed over features.

    W [..., m, n], b [..., n], x [..., B, n], importance [..., n] -> [..., B]; leading dims
    broadcast, so one x can score every restart of a grid point.
    """
    out = torch.relu(x @ W.transpose(-1, -2) @ W + b[..., None, :])
    return (importance[..., None, :] * (x - out).pow(2)).sum(-1)


def toy_loss(W: Tensor, b: Tensor, x: Tensor, importance: Tensor) -> Tensor:
    """[...] the training loss: toy_error's mean over rows."""
    return toy_error(W, b, x, importance).mean(-1)


def train_toy_models(
    n: int,
    m: int,
    density: Tensor,
    importance: Tensor,
    steps: int,
    seed: int,
    batch: int = 1024,
    lr: float = 1e-2,
    restarts: int = 1,
) -> ToyModels:
    """Train `restarts` models per row of density [I] and importance [I, n], all at once."""
    generator = torch.Generator().manual_seed(seed)
    rows = density.shape[0]
    density_r = density.repeat_interleave(restarts)
    importance_r = importance.repeat_interleave(restarts, dim=0)
    W = torch.empty(rows * restarts, m, n)
    torch.nn.init.xavier_normal_(W, generator=generator)
    W.requires_grad_(True)
    b = torch.zeros(rows * restarts, n, requires_grad=True)
    optimizer = torch.optim.AdamW([W, b], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x = sample_features(density_r, n, batch, generator)
        loss = toy_loss(W, b, x, importance_r).sum()  # instances are independent: sum = each
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    W_r, b_r = W.detach().view(rows, restarts, m, n), b.detach().view(rows, restarts, n)
    restart_loss = held_out_loss(W_r, b_r, density, importance, batch, generator)
    best = restart_loss.argmin(1)
    pick = torch.arange(rows)
    return ToyModels(
        W_r[pick, best], b_r[pick, best], density, importance, restart_loss[pick, best],
        restart_loss,
    )  # fmt: skip


@torch.no_grad()
def held_out_loss(
    W: Tensor,
    b: Tensor,
    density: Tensor,
    importance: Tensor,
    batch: int,
    generator: torch.Generator,
) -> Tensor:
    """[I, R] loss of every restart on the same fresh rows per grid point.

    The restarts of one point see the same x (common random numbers), so their ranking is not
    blurred by sampling noise: at 1 - S = 0.01 two features co-occur on 1 row in 10,000.
    """
    n = W.shape[-1]
    total = torch.zeros(W.shape[:2])
    for _ in range(EVAL_BATCHES):
        x = sample_features(density, n, batch, generator)[:, None]  # [I, 1, B, n]
        total += toy_loss(W, b, x, importance[:, None])
    return total / EVAL_BATCHES
