"""Absorption on a synthetic hierarchy: hand-built dictionaries whose latents read the true
features exactly, one with a parent latent of its own, one whose child latents absorb it."""

from __future__ import annotations

import pytest
import torch

from sae.config import SAEConfig, SyntheticConfig
from sae.evaluation.absorption import hierarchy_absorption, hierarchy_of, label_absorption
from sae.models import SparseAutoencoder, build_sae
from sae.sources.synthetic import SyntheticSource

N_FEATURES, D = 24, 32


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    cfg = SyntheticConfig(
        num_features=N_FEATURES,
        hidden_dim=D,
        firing={"kind": "constant", "probability": 0.3},
        hierarchy={"total_root_nodes": 4, "branching_factor": 3, "max_depth": 1,
                   "mutually_exclusive_portion": 1.0, "scale_children_by_parent": False},
    )  # fmt: skip
    return SyntheticSource(cfg, seed=0)


def reader(source: SyntheticSource, mix: torch.Tensor) -> SparseAutoencoder:
    """Latent j = ReLU(sum_i f_i mix[i, j] - 0.5) of the true feature values f (recovered
    exactly from x, since the features are independent); decoder rows: the mixed features."""
    vectors = source.feature_vectors.float()  # [n, d], full row rank: n < d
    sae = build_sae(SAEConfig(arch="relu", d_sae=N_FEATURES), D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.linalg.pinv(vectors) @ mix)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
        sae.W_dec.copy_(mix.T @ vectors)
    return sae


def test_the_hierarchy_is_read_from_the_synthetic_tree(source: SyntheticSource) -> None:
    tree = hierarchy_of(source)
    assert len(tree) == 4 and all(len(children) == 3 for children in tree.values())
    assert not set(tree) & {c for cs in tree.values() for c in cs}


def test_a_latent_per_feature_absorbs_nothing(source: SyntheticSource) -> None:
    result = hierarchy_absorption(
        reader(source, torch.eye(N_FEATURES)), source, hierarchy_of(source), 8192, 2048, seed=1
    ).to_dict()
    assert result["parents_scored"] == 4
    assert result["absorption_rate"] == 0.0
    for parent in result["per_parent"]:
        assert parent["latent"] == parent["parent"] and parent["f1"] == pytest.approx(1.0)


def test_children_that_carry_their_parent_absorb_it(source: SyntheticSource) -> None:
    tree = hierarchy_of(source)
    mix = torch.eye(N_FEATURES)
    for parent, children in tree.items():
        mix[children, parent] = -2.0  # the parent's latent is silent when a child is active
        mix[parent, children] = 0.0
    result = hierarchy_absorption(reader(source, mix), source, tree, 8192, 2048, seed=1).to_dict()
    assert result["absorption_rate"] == pytest.approx(1.0)
    for parent in result["per_parent"]:
        assert parent["child_rows"] > 0 and parent["missed_rows"] == parent["child_rows"]
        assert parent["absorbed_into"] in tree[parent["parent"]]
        assert parent["absorber_best_child"] == parent["absorbed_into"]


def test_a_nested_variable_of_the_language_is_absorbed_by_its_values_latents() -> None:
    """Rows inside brackets at depth 1 or 2: latent 0 fires inside brackets except at depth 2,
    where latent 1 (the depth-2 latent) fires instead."""
    depth = torch.tensor([0, 1, 1, 2, 2, 0, 1, 2] * 50)
    truth = torch.stack([depth == 1, depth == 2, depth == 3], dim=1)
    latents = torch.zeros(len(depth), 4)
    latents[:, 0] = (depth == 1).float()
    latents[:, 1] = (depth == 2).float()
    names = ["bracket_depth=1", "bracket_depth=2", "bracket_depth=3"]
    result = label_absorption(latents, truth, names)["per_variable"]["bracket_depth"]
    assert result["latent"] in (0, 1)
    absorbed_child = "bracket_depth=2" if result["latent"] == 0 else "bracket_depth=1"
    assert result["rate_per_child"][absorbed_child] == 1.0
    assert result["absorber_best_child"] == absorbed_child
    assert result["rate"] == pytest.approx(
        float(truth[:, names.index(absorbed_child)].sum()) / int((depth > 0).sum())
    )
