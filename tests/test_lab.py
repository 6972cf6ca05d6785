"""The superposition lab against Toy Models of Superposition's qualitative results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from sae.lab.superposition import (
    chance_near_sticky,
    dimensionality,
    directions,
    near_sticky,
    settings,
)


def test_dense_features_get_at_most_m_directions_and_sparse_ones_superpose() -> None:
    result = directions([0.0, 0.97], steps=3000, seed=0)
    dense, sparse = result["represented"]
    assert dense <= result["m"] == 2
    assert sparse == result["n"] == 5  # five features in a plane: a pentagon


def test_sparser_features_take_fewer_dimensions_each() -> None:
    result = dimensionality(20, 5, [1.0, 0.05], steps=1500, seed=0)
    dense, sparse = result["dimensions_per_feature"]
    assert dense == pytest.approx(1.0, abs=0.1)  # dense: one dimension per represented feature
    assert sparse < 0.6  # sparse: features share dimensions
    assert result["represented"][1] > result["m"]


def test_sparse_features_pair_up_at_the_sticky_fraction_one_half() -> None:
    # 1 - S = 0.3: more features than dims get represented, as antipodal pairs (digons), each
    # with D_i = 1/2 (the short variant of the slow test below)
    result = dimensionality(40, 4, [0.3], steps=2000, seed=0)
    dims = result["feature_dimensionality"][0]
    assert result["represented"][0] > result["m"]
    assert sum(abs(d - 0.5) <= result["sticky_tolerance"] for d in dims) >= 0.75 * len(dims)
    assert result["sticky_share_sparse"] > 2 * result["sticky_share_chance"]


def test_the_share_near_sticky_fractions_is_measured_against_an_even_spread() -> None:
    assert near_sticky(torch.tensor([0.5, 0.41, 0.6, 0.99])).tolist() == [True, True, False, True]
    assert 0.1 < chance_near_sticky() < 0.3  # seven windows of width 0.04, one cut at 1


@pytest.mark.slow
def test_at_the_labs_settings_a_clear_share_of_features_sits_at_sticky_fractions() -> None:
    s = settings(quick=False)
    result = dimensionality(s.dim_n, s.dim_m, s.dim_densities, s.dim_steps, seed=0)
    # where the models spend enough dims per feature for the named polytopes, most features
    # sit at their fractions; sparser still, they pack into bigger polygons (D_i < 1/3)
    assert result["sticky_share_named_range"] >= 0.75 > 3 * result["sticky_share_chance"]
    assert result["sticky_share_sparse"] > result["sticky_share_chance"]
    per_feature = result["dimensions_per_feature"]
    assert per_feature[-1] < 0.5 < per_feature[1]


@pytest.mark.slow
def test_the_lab_writes_its_report_with_an_sae_that_recovers_the_toy_features(
    tmp_path: Path,
) -> None:
    assert main(["lab", "superposition", "--quick", "--out", str(tmp_path / "lab")]) == 0
    page = (tmp_path / "lab" / "report.html").read_text()
    for title in ("Feature directions", "Phase diagram", "Feature dimensionality", "An SAE on"):
        assert title in page
    assert (tmp_path / "lab" / "sae_on_hidden" / "sae" / "cfg.json").is_file()
