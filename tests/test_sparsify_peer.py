"""EleutherAI's sparsify as a benchmark peer (the `bench` extra): its TopK step is timed by
`sae bench train` and scored by `sae bench toy`; without the package these tests skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.bench.sparsify import SparsifyTopK
from sae.config import SyntheticConfig
from sae.sources.synthetic import SyntheticSource
from tests.conftest import tiny_tree, write_config
from tests.test_cli import sae

pytest.importorskip("sparsify", reason="sparsify is in the bench extra (pip install .[bench])")


def test_the_sparsify_step_learns_and_its_dictionary_matches_its_own_forward() -> None:
    source = SyntheticSource(SyntheticConfig(num_features=64, hidden_dim=32), seed=0)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    coder = SparsifyTopK(32, 128, 4, torch.device("cpu"))
    fvus = [coder.step(source.sample_with_features(256, generator)[0]) for _ in range(60)]
    assert fvus[-1] < 0.7 * fvus[0]
    coder.eval()
    x = source.sample_with_features(64, generator)[0]
    latents = coder.encode(x)
    assert int((latents != 0).sum(-1).max()) <= 4
    with torch.no_grad():
        theirs = coder.sae(x).sae_out
    torch.testing.assert_close(coder.decode(latents), theirs, atol=1e-5, rtol=1e-4)


def test_bench_train_times_sparsify_on_topk_only(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = sae(
        "bench", "train", "--points", "8x64x64", "--archs", "topk,relu", "--warmup", "0",
        "--steps", "1", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    topk, relu = json.loads(out.read_text())
    assert topk["sparsify_samples_per_s"] > 0 and topk["speedup_vs_sparsify"] > 0
    assert relu["sparsify_samples_per_s"] is None


def test_bench_toy_scores_sparsify_with_the_same_metrics_and_sweep(tmp_path: Path) -> None:
    tree = tiny_tree("topk")
    tree["train"]["samples"] = 3_000
    out = tmp_path / "toy.json"
    config = str(write_config(tmp_path / "tiny.yaml", tree))
    result = sae("bench", "toy", config, "--lrs", "1e-3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    peer = [r for r in json.loads(out.read_text()) if r["trainer"] == "sparsify topk"]
    assert [r["lr"] for r in peer] == [pytest.approx(5e-3 / (48 / 2**14) ** 0.5), 1e-3]
    assert {"mcc", "f1", "explained_variance"} <= set(peer[0])
    assert result.stdout.count("sparsify topk") == 2
