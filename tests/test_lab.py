"""The superposition lab against Toy Models of Superposition's qualitative results."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from sae.lab.superposition import classify_extra_feature, dimensionality, directions, phase_diagram


def test_dense_features_get_at_most_m_directions_and_sparse_ones_superpose() -> None:
    result = directions([0.0, 0.97], steps=3000, seed=0)
    dense, sparse = result["represented"]
    assert dense <= result["m"] == 2
    assert sparse == result["n"] == 5  # five features in a plane: a pentagon


def test_the_extra_feature_is_ignored_dedicated_or_superposed_as_in_the_phase_diagram() -> None:
    result = phase_diagram([0.3, 1.0, 3.0], [1.0, 0.1], steps=1500, seed=0)
    dense, sparse = result["phase"]
    assert dense[0] == "ignored"  # less important and dense: not worth the one dimension
    assert dense[2] == "dedicated"  # more important: it takes the dimension alone
    assert "superposition" not in (dense[0], dense[2])
    # sparse: superposition appears (equal importance, r = 1, can stop in a local minimum
    # with the extra column part-grown: one training run per cell, no restarts)
    assert "superposition" in sparse


def test_the_phases_are_read_from_the_column_lengths() -> None:
    assert classify_extra_feature(1.0, 0.1) == "ignored"
    assert classify_extra_feature(0.1, 1.0) == "dedicated"
    assert classify_extra_feature(1.0, 1.0) == "superposition"


def test_sparser_features_take_fewer_dimensions_each() -> None:
    result = dimensionality(20, 5, [1.0, 0.05], steps=1500, seed=0)
    dense, sparse = result["dimensions_per_feature"]
    assert dense == pytest.approx(1.0, abs=0.1)  # dense: one dimension per represented feature
    assert sparse < 0.6  # sparse: features share dimensions
    assert result["represented"][1] > result["m"]


@pytest.mark.slow
def test_the_lab_writes_its_report_with_an_sae_that_recovers_the_toy_features(
    tmp_path: Path,
) -> None:
    assert main(["lab", "superposition", "--quick", "--out", str(tmp_path / "lab")]) == 0
    page = (tmp_path / "lab" / "report.html").read_text()
    for title in ("Feature directions", "Phase diagram", "Feature dimensionality", "An SAE on"):
        assert title in page
    assert (tmp_path / "lab" / "sae_on_hidden" / "sae" / "cfg.json").is_file()
