"""Probe ceilings: sparse probes find the latents that carry a label, the dense probe reads what
is linear in the activations, the summary's fractions, and determinism under a seed."""

from __future__ import annotations

import pytest
import torch

from sae.config import EvalConfig, LMConfig, SAEConfig
from sae.evaluation.probes import (
    ProbeRows,
    collect_rows,
    f1_at_best_threshold,
    run_probes,
    summarise,
)
from sae.models import build_sae
from sae.sources.model_activations import LMSource

HOOK = "blocks.1.hook_resid_post"


def planted_rows(seed: int = 0, rows: int = 3000) -> ProbeRows:
    """`a=1` is linear in the activations (x0 > 0.5); latent 3 is exactly `b=1`, latents 5
    and 9 together (an OR of the two) are `b=2`."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(rows, 16, generator=g)
    latents = torch.relu(torch.randn(rows, 32, generator=g))
    b1 = torch.rand(rows, generator=g) < 0.2
    b2_left, b2_right = torch.rand(rows, generator=g) < 0.1, torch.rand(rows, generator=g) < 0.1
    latents[:, 3] = b1.float() * 2
    latents[:, 5], latents[:, 9] = b2_left.float() * 3, b2_right.float() * 3
    truth = torch.stack([acts[:, 0] > 0.5, b1, b2_left | b2_right], dim=1)
    return ProbeRows(acts, latents, truth, ["a=1", "b=1", "b=2"])


def test_sparse_probes_pick_the_latents_that_carry_a_label() -> None:
    result = run_probes(planted_rows(), seed=0)["per_indicator"]
    assert result["b=1"]["latents_k1"] == [3]
    assert result["b=1"]["sparse_f1"]["1"] == pytest.approx(1.0)
    assert set(result["b=2"]["latents_k2"]) == {5, 9}
    assert result["b=2"]["sparse_f1"]["2"] == pytest.approx(1.0)
    assert result["b=2"]["sparse_f1"]["1"] < 0.8  # one of the two halves is not enough


def test_the_dense_probe_reads_a_linear_label_from_the_activations() -> None:
    result = run_probes(planted_rows(), seed=0)["per_indicator"]
    assert result["a=1"]["dense_f1"] > 0.97
    assert result["a=1"]["sparse_f1"]["5"] < 0.6  # the latents here know nothing of it


def test_the_threshold_is_the_one_with_the_best_f1() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.2, 0.1]])
    labels = torch.tensor([[True, True, False, True, False]])
    # cuts after 2 (F1 0.8) and after 4 (F1 0.857): the latter wins
    assert float(f1_at_best_threshold(scores, labels)[0]) == pytest.approx(0.2)


def test_fraction_of_the_ceiling_is_single_latent_f1_over_dense_f1() -> None:
    probes = run_probes(planted_rows(), seed=0)
    single = {"b=1": {"f1": 1.0}, "b=2": {"f1": 0.5}, "a=1": {"f1": 0.1}}
    summary = summarise(probes, single)
    b = summary["per_variable"]["b"]
    assert b["single_latent_f1"] == pytest.approx(0.75)
    assert b["fraction_of_ceiling"] == pytest.approx(0.75 / b["dense_f1"])
    per_variable = summary["per_variable"].values()
    mean = sum(r["fraction_of_ceiling"] for r in per_variable) / 2
    assert summary["fraction_of_ceiling_mean"] == pytest.approx(mean)


def test_probes_are_deterministic_under_a_seed() -> None:
    rows = planted_rows()
    assert run_probes(rows, seed=4) == run_probes(rows, seed=4)
    assert run_probes(rows, seed=4) != run_probes(rows, seed=5)  # the split follows the seed


def test_probe_rows_on_the_generated_language_are_the_same_for_a_seed() -> None:
    source = LMSource(LMConfig(hooks=[HOOK], context_size=64, batch_sequences=8))
    sae = build_sae(SAEConfig(arch="topk", d_sae=64, k=4), source.d_in, seed=0)
    cfg = EvalConfig(samples=1024, probe_rows=600)
    first, second = (collect_rows(sae, source, HOOK, cfg, seed=2) for _ in range(2))
    assert first.acts.shape == (600, source.d_in) and first.latents.shape == (600, 64)
    assert torch.equal(first.acts, second.acts) and torch.equal(first.truth, second.truth)
    assert {"topic=music", "quote=inside"} <= set(first.names)
    result = run_probes(first, seed=2)
    assert result == run_probes(second, seed=2)
    for scores in result["per_indicator"].values():
        assert 0 <= scores["sparse_f1"]["1"] <= 1 and 0 <= scores["dense_f1"] <= 1
