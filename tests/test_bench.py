"""Smoke tests: the benchmark commands run on tiny shapes and write the promised JSON keys."""

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_tree, write_config
from tests.test_cli import sae

TRAIN_KEYS = {
    "arch", "d", "m", "batch", "ours_samples_per_s", "saelens_samples_per_s", "speedup",
    "bound_samples_per_s", "bound_ratio", "sparsify_samples_per_s", "speedup_vs_sparsify",
}  # fmt: skip


def test_bench_train_writes_one_row_per_arch_and_shape(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = sae(
        "bench", "train", "--points", "8x256x64", "--archs", "topk,relu", "--warmup", "0",
        "--steps", "1", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [row["arch"] for row in rows] == ["topk", "relu"]
    assert all(set(row) == TRAIN_KEYS for row in rows)
    assert all(row["ours_samples_per_s"] > 0 and row["saelens_samples_per_s"] > 0 for row in rows)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_bench_toy_scores_both_trainers_with_the_same_metrics(tmp_path: Path, arch: str) -> None:
    tree = tiny_tree(arch)
    tree["train"]["samples"] = 5_000
    out = tmp_path / "toy.json"
    config = str(write_config(tmp_path / "tiny.yaml", tree))
    result = sae("bench", "toy", config, "--lrs", "1e-3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    runs = json.loads(out.read_text())
    ours = [r for r in runs if r["trainer"] == "sae (ours)"]
    theirs = [r for r in runs if r["trainer"].startswith("sae_lens")]
    assert {"mcc", "f1", "explained_variance"} <= set(ours[0]) & set(theirs[0])
    # like for like: both sides at their own default and at every rate of the same sweep
    assert [r["lr"] for r in ours] == [5e-3, 1e-3] and [r["lr"] for r in theirs] == [3e-4, 1e-3]
    assert all(r["swept"] == (r["lr"] == 1e-3) for r in ours + theirs)
    assert "sae (ours)     default lr" in result.stdout and "best of sweep" in result.stdout


def test_bench_toy_rejects_a_malformed_sweep(tmp_path: Path) -> None:
    result = sae("bench", "toy", str(write_config(tmp_path / "t.yaml", tiny_tree())), "--lrs", "fast")
    assert result.returncode == 2 and "--lrs" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # the behaviour itself is tested in test_multi.py
def test_bench_multi_reports_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "multi.json"
    result = sae("bench", "multi", "--saes", "2", "--steps", "2", "--point", "8x32x64", "--json", str(out))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert row["identical_weights"] is True and row["shared_seconds"] > 0


def test_bench_train_rejects_a_malformed_grid(tmp_path: Path) -> None:
    result = sae("bench", "train", "--points", "8x256")
    assert result.returncode == 2 and "--points" in result.stderr and "Traceback" not in result.stderr


HARVEST_KEYS = {
    "hook", "layers", "d_model", "context_size", "tokens", "ours_tokens_per_s",
    "forward_tokens_per_s", "saelens_tokens_per_s", "overhead_vs_forward", "speedup_vs_saelens",
    "overhead_vs_forward_cpu", "speedup_vs_saelens_cpu",
}  # fmt: skip


def test_bench_harvest_writes_ours_forward_and_saelens_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "harvest.json"
    result = sae(
        "bench", "harvest", "--layers", "2", "--d-model", "32", "--context-size", "16",
        "--batch-sequences", "2", "--tokens", "64", "--shard-tokens", "32", "--repeats", "1",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert set(row) == HARVEST_KEYS
    assert row["hook"] == "blocks.1.hook_resid_pre" and row["tokens"] == 64
    rates = ("ours_tokens_per_s", "forward_tokens_per_s", "saelens_tokens_per_s")
    assert all(row[key] > 0 for key in rates)
    assert row["overhead_vs_forward"] == pytest.approx(
        row["forward_tokens_per_s"] / row["ours_tokens_per_s"] - 1, rel=1e-2, abs=1e-3
    )


def test_bench_harvest_rejects_a_hook_the_model_does_not_have() -> None:
    result = sae("bench", "harvest", "--layers", "2", "--hook", "blocks.5.hook_resid_pre")
    assert result.returncode == 2 and "--hook" in result.stderr and "Traceback" not in result.stderr


def test_bench_serve_times_listing_jobs_through_a_real_server(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    result = sae("bench", "serve", "--repeats", "0", "--jobs", "30", "--requests", "5",
                 "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())
    assert row["list_jobs"] == 30 and 0 < row["list_p50_ms"] <= row["list_p95_ms"]
    assert 0 < row["uncached_p50_ms"] <= row["uncached_p95_ms"]


@pytest.mark.slow
def test_bench_serve_runs_one_config_directly_and_through_the_service(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 5_000
    tree["harvest"] = {"rows": 5_000, "shard_rows": 2_500}
    out = tmp_path / "serve.json"
    config = write_config(tmp_path / "tiny.yaml", tree)
    result = sae("bench", "serve", "--config", str(config), "--jobs", "10", "--requests", "3",
                 "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())
    assert row["direct_seconds"] > 0 and row["service_seconds"] > 0


def test_bench_startup_times_each_case_in_fresh_processes_next_to_import_torch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "startup.json"
    result = sae("bench", "startup", "--repeats", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["case"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == [
        "interpreter", "import torch", "help", "version", "config error", "arch key error",
        "no-op rerun",
    ]  # fmt: skip
    assert all(row["runs"] == 1 and row["median_s"] > 0 for row in rows.values())
    assert rows["import torch"]["vs_import_torch"] == 1
    # each case answered as it should, not with a traceback
    assert rows["config error"]["answer"] == "sae: error: unknown config key 'train.lrr'"
    assert rows["arch key error"]["answer"].startswith(
        "sae: error: config key 'sae.k' does not apply to arch relu"
    )
    assert rows["version"]["command"] == "sae --version"
    assert "no-op rerun" in result.stdout and "TMP/" in rows["no-op rerun"]["command"]


def test_bench_startup_rejects_no_repeats() -> None:
    result = sae("bench", "startup", "--repeats", "0")
    assert result.returncode == 2 and "--repeats must be at least 1" in result.stderr


def test_bench_synth_times_both_samplers_and_reports_their_l0(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["data"]["synthetic"]["hierarchy"] = {
        "total_root_nodes": 2, "branching_factor": 3, "max_depth": 2,
        "compensate_probabilities": True,
    }  # fmt: skip
    tree["data"]["synthetic"]["correlation"] = {"rank": 4, "correlation_scale": 0.1}
    out = tmp_path / "synth.json"
    config = str(write_config(tmp_path / "tiny.yaml", tree))
    result = sae("bench", "synth", "--config", config, "--rows", "512", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["sampler"]: row for row in json.loads(out.read_text())["rows"]}
    theirs, ours = rows["sae_lens sample_with_features"], rows["ours sample_with_features"]
    assert theirs["ratio"] == 1 and ours["rows_per_second"] > 0
    assert abs(ours["l0"] - theirs["l0"]) < 0.5 * theirs["l0"]


def test_bench_synth_needs_a_synthetic_source(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["data"] = {"toy": {"n_features": 20, "d_hidden": 5}}
    config = str(write_config(tmp_path / "toy.yaml", tree))
    result = sae("bench", "synth", "--config", config, "--rows", "64")
    assert result.returncode == 2
    assert "data.synthetic" in result.stderr and "Traceback" not in result.stderr
