"""The phase diagram of one extra feature: restarts, the exact-loss reference, the paper's picture."""

from __future__ import annotations

import pytest
import torch

from sae.lab.phase import classify_extra_feature, expected_phases, phase_diagram, quadrature
from sae.lab.toy_models import train_toy_models


def test_the_phases_are_read_from_the_column_lengths() -> None:
    assert classify_extra_feature(1.0, 0.1) == "ignored"
    assert classify_extra_feature(0.1, 1.0) == "dedicated"
    assert classify_extra_feature(1.0, 1.0) == "superposition"


def test_the_quadrature_gives_the_feature_distributions_moments() -> None:
    density = torch.tensor([1.0, 0.3, 0.01])
    points, weights = quadrature(density, nodes=32)
    assert weights.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    mean = weights @ points  # E x_i = p / 2
    assert mean[:, 0].tolist() == pytest.approx((density / 2).tolist(), rel=1e-4)  # float32 sums
    both = weights @ (points[:, 0] * points[:, 1])  # E x_1 x_2 = p^2 / 4: independent
    assert both.tolist() == pytest.approx((density**2 / 4).tolist(), rel=1e-4)
    second = weights @ points[:, 1].pow(2)  # E x^2 = p / 3, up to the midpoint rule's error
    assert second.tolist() == pytest.approx((density / 3).tolist(), rel=1e-3)


def test_the_expected_phases_are_the_papers() -> None:
    # dense: the extra feature is ignored when less important, takes the dimension when more;
    # sparse: the two share it in superposition, even at unequal importance
    cells = [(1.0, 0.3), (1.0, 3.0), (0.01, 0.3), (0.01, 1.0), (0.01, 3.0)]
    density = torch.tensor([d for d, _ in cells])
    importance = torch.tensor([[1.0, r] for _, r in cells])
    phases, _ = expected_phases(importance, density)
    assert phases == ["ignored", "dedicated", "superposition", "superposition", "superposition"]


def test_restarts_train_together_and_the_lowest_held_out_loss_is_kept() -> None:
    density, importance = torch.tensor([0.05, 1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.5]])
    models = train_toy_models(2, 1, density, importance, steps=200, seed=0, restarts=4)
    assert models.W.shape == (2, 1, 2) and models.restart_loss.shape == (2, 4)
    assert torch.equal(models.loss, models.restart_loss.min(1).values)
    assert models.restart_loss.std(1).max() > 0  # the restarts are different models
    one = train_toy_models(2, 1, density, importance, steps=200, seed=0)
    assert one.restart_loss.shape == (2, 1)


def test_the_trained_diagram_with_restarts_matches_the_expected_one_on_a_small_grid() -> None:
    result = phase_diagram([0.3, 1.0, 3.0], [1.0, 0.1], steps=1500, seed=0, restarts=4)
    dense, sparse = result["phase"]
    assert dense[0] == "ignored"  # less important and dense: not worth the one dimension
    assert dense[2] == "dedicated"  # more important: it takes the dimension alone
    assert sparse == ["superposition"] * 3
    # r = 1 at 1 - S = 1 is a tie between ignoring either feature, so either may come out
    assert result["agreement"] >= 0.83  # 5 of 6 cells


@pytest.mark.slow
def test_the_full_trained_diagram_agrees_with_the_expected_one() -> None:
    from sae.lab.superposition import settings

    s = settings(quick=False)
    result = phase_diagram(s.importances, s.phase_densities, s.steps, 0, s.restarts)
    assert result["agreement"] >= 0.9
