"""Our batched synthetic sampler draws from the same distribution as sae_lens's own sampler.

A small SynthSAEBench-style model (hierarchy with mutually exclusive, parent-scaled children,
compensated probabilities, low-rank correlation): realised L0, per-level firing rates and
magnitudes, per-feature firing rates and pairwise co-firing are compared on 40k rows from each
sampler; the hierarchy's rules (no child without its parent, at most one child of an exclusive
parent) must hold in every row.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens.synthetic import (
    HierarchyConfig,
    LowRankCorrelationConfig,
    SyntheticModel,
    SyntheticModelConfig,
)
from sae_lens.synthetic.firing_magnitudes import (
    FoldedNormalMagnitudeConfig,
    LinearMagnitudeConfig,
)
from sae_lens.synthetic.firing_probabilities import ZipfianFiringProbabilityConfig

from sae.sources.synthetic_sampler import FastSampler

ROWS = 40_000


def _model(correlated: bool = True, hierarchy: bool = True) -> SyntheticModel:
    cfg = SyntheticModelConfig(
        num_features=200,
        hidden_dim=32,
        firing_probability=ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=0.4, min_prob=2e-3
        ),
        hierarchy=HierarchyConfig(
            total_root_nodes=2,
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=0.7,  # some exclusive parents, some not
            compensate_probabilities=True,
            scale_children_by_parent=True,
        )
        if hierarchy
        else None,
        correlation=LowRankCorrelationConfig(rank=8, correlation_scale=0.2) if correlated else None,
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        seed=7,
    )
    with torch.random.fork_rng(devices=[]):
        return SyntheticModel(cfg)


def _levels(model: SyntheticModel) -> torch.Tensor:
    level = torch.full((model.cfg.num_features,), -1)
    stack = [(root, 0) for root in (model.hierarchy.roots if model.hierarchy else [])]
    while stack:
        node, depth = stack.pop()
        level[node.feature_index] = depth
        stack += [(child, depth + 1) for child in node.children]
    return level


def _draw(sample, rows: int = ROWS) -> torch.Tensor:
    return torch.cat([sample(5_000)[1] for _ in range(rows // 5_000)])


def _saelens(model: SyntheticModel) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return _draw(model.sample_with_features)


def _ours(model: SyntheticModel) -> torch.Tensor:
    sampler = FastSampler.build(model)
    assert sampler is not None
    generator = torch.Generator().manual_seed(2)
    return _draw(lambda n: sampler.sample_with_features(n, generator))


@pytest.fixture(scope="module")
def hierarchical() -> tuple[SyntheticModel, torch.Tensor, torch.Tensor]:
    model = _model()
    return model, _saelens(model), _ours(model)


def _rate_z(theirs: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """Per-feature z-scores of the difference in firing rates."""
    a, b = (theirs > 0).float().mean(0), (ours > 0).float().mean(0)
    se = ((a * (1 - a) + b * (1 - b)) / theirs.shape[0]).sqrt().clamp(min=1e-4)
    return (a - b) / se


def test_realised_l0_matches_saelens(hierarchical):
    _, theirs, ours = hierarchical
    l0_theirs, l0_ours = (theirs > 0).sum(1).float().mean(), (ours > 0).sum(1).float().mean()
    assert abs(l0_ours - l0_theirs) / l0_theirs < 0.03


def test_per_level_firing_rates_and_magnitudes_match_saelens(hierarchical):
    model, theirs, ours = hierarchical
    level = _levels(model)
    for depth in range(-1, 4):  # -1: features outside the forest
        cols = level == depth
        rate_theirs = (theirs[:, cols] > 0).float().sum(1).mean()
        rate_ours = (ours[:, cols] > 0).float().sum(1).mean()
        assert abs(rate_ours - rate_theirs) / rate_theirs < 0.06, depth
        mag_theirs, mag_ours = theirs[:, cols].sum(1).mean(), ours[:, cols].sum(1).mean()
        assert abs(mag_ours - mag_theirs) / mag_theirs < 0.06, depth


def test_per_feature_firing_rates_match_saelens(hierarchical):
    _, theirs, ours = hierarchical
    z = _rate_z(theirs, ours)
    # Same law: z is about standard normal for each of the 200 features.
    assert (z**2).mean() < 1.6
    assert z.abs().max() < 5


def test_correlated_cofiring_matches_saelens(hierarchical):
    _, theirs, ours = hierarchical
    # Co-firing of the 40 most frequent features: the low-rank copula's signature.
    top = (theirs > 0).float().mean(0).argsort(descending=True)[:40]
    co_theirs = torch.corrcoef((theirs[:, top] > 0).float().T)
    co_ours = torch.corrcoef((ours[:, top] > 0).float().T)
    off = ~torch.eye(40, dtype=torch.bool)
    assert (co_theirs - co_ours)[off].abs().mean() < 0.01
    assert (co_theirs[off] * co_ours[off]).sum() > 0  # same sign structure, not just noise


def test_children_fire_only_under_their_parent_and_exclusion_holds(hierarchical):
    model, _, ours = hierarchical
    active = ours > 0
    stack = list(model.hierarchy.roots)
    exclusive_parents = 0
    while stack:
        node = stack.pop()
        kids = [child.feature_index for child in node.children]
        if kids:
            assert not (active[:, kids].any(1) & ~active[:, node.feature_index]).any()
            if node.mutually_exclusive_children:
                exclusive_parents += 1
                assert active[:, kids].sum(1).max() <= 1
        stack += list(node.children)
    assert exclusive_parents > 0


def test_activations_are_the_features_through_the_dictionary():
    model = _model()
    sampler = FastSampler.build(model)
    x, features = sampler.sample_with_features(512, torch.Generator().manual_seed(0))
    expected = features @ model.feature_dict.feature_vectors.detach() + model.feature_dict.bias
    torch.testing.assert_close(x, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("correlated,hierarchy", [(False, True), (True, False), (False, False)])
def test_simpler_models_match_saelens_per_feature(correlated, hierarchy):
    model = _model(correlated=correlated, hierarchy=hierarchy)
    theirs, ours = _saelens(model), _ours(model)
    z = _rate_z(theirs, ours)
    assert (z**2).mean() < 1.6
    l0_theirs, l0_ours = (theirs > 0).sum(1).float().mean(), (ours > 0).sum(1).float().mean()
    assert abs(l0_ours - l0_theirs) / l0_theirs < 0.03


def test_same_generator_state_gives_the_same_batch():
    sampler = FastSampler.build(_model())
    a = sampler.sample(256, torch.Generator().manual_seed(5))
    b = sampler.sample(256, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_models_it_does_not_cover_keep_saelens_sampler():
    model = _model()
    model.activation_generator.use_sparse_tensors = True
    assert FastSampler.build(model) is None
