"""torch.distributed: harvest and training split over 2 ranks (gloo on 127.0.0.1) give what
one process gives."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch.multiprocessing import ProcessExitedException

from pipelines.cli import main
from sae import distributed
from sae.config import validate_tree
from sae.io import load_state, save_state
from sae.models import build_sae
from sae.models.registry import takes
from sae.sources import build_source
from sae.store.format import load_manifest
from sae.store.parallel import harvest_rows_distributed
from sae.store.writer import StoreWriter, harvest_rows, open_writer
from sae.streams import HarvestBatch, HarvestStream
from sae.training.checkpoint import CHECKPOINT
from sae.training.trainer import Trainer
from tests.conftest import k_for, write_config
from tests.distributed_helpers import alone, run_ranks, torchrun_sae
from tests.store_helpers import store_files

D_IN, FEATURES = 16, 40


class SparseFeatures(HarvestStream):
    """Rows that are sparse non-negative mixes of fixed random directions (a tiny SAE task)."""

    def __init__(self, batch_rows: int, die_at: int | None = None):
        self.batch_rows, self.batches, self.die_at = batch_rows, 0, die_at
        self.directions = torch.randn(FEATURES, D_IN, generator=torch.Generator().manual_seed(1))

    def __next__(self) -> HarvestBatch:
        if self.batches == self.die_at:
            os._exit(9)  # as if killed: no cleanup
        generator = torch.Generator().manual_seed(1000 + self.batches)
        self.batches += 1
        on = torch.rand(self.batch_rows, FEATURES, generator=generator) < 0.08
        values = torch.rand(self.batch_rows, FEATURES, generator=generator) * on
        return HarvestBatch(activations={"resid": values @ self.directions})

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])


def sparse_store(directory: Path, rows: int = 8192) -> Path:
    identity = {"kind": "sparse-features", "seed": 0, "data": {}}
    harvest = {"rows": rows, "shard_rows": 2048, "batch_rows": 512, "dtype": "fp32"}
    with open_writer(directory, identity, harvest, "fp32", 64) as writer:
        writer.describe({"model": None, "dataset": None, "context_size": None, "metadata": {}})
        harvest_rows(writer, SparseFeatures(512), rows, 2048)
    return directory


def warm_start(arch: str, frac: float) -> dict[str, float]:
    """warm_start_frac for the architectures that take it (a key an architecture does not take
    is a config error)."""
    return {"warm_start_frac": frac} if takes(arch, "warm_start_frac") else {}


def train_tree(store: Path, arch: str, steps: int, **train: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"store": str(store)},
        "sae": {"arch": arch, "d_sae": 64, "dead_remedy": "auxk", **k_for(arch, 4), **warm_start(arch, 0.25)},
        "train": {
            "checkpoint_every_steps": 0,
            "samples": 64 * steps, "batch_size": 64, "lr": 3e-3, "lr_warmup_steps": 2,
            "dead_window_samples": 512, "prefetch_batches": 0,
            "norm_estimate_batches": 2, "device": "cpu",
            # fp32: a bf16 encoder (train.precision auto, on CPUs with bf16 instructions) rounds
            # pre-activations to 3 digits, so the last-bit differences that summing gradients
            # over ranks leaves in the weights move some of them across a rounding boundary and
            # flip a pair choice; the comparisons here are of the math, not of that rounding
            "precision": "fp32", **train,
        },
        "logging": {"wandb": False, "progress": False, "log_every_steps": 5},
    }  # fmt: skip


def train_on_store(tree: dict[str, Any], out_dir: Path) -> None:
    """Train (no evaluation); every rank also saves its own weights to rank<r>.safetensors."""
    cfg = validate_tree(tree)
    source = build_source(cfg.data, cfg.seed)
    sae = build_sae(cfg.sae, source.d_in, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, sae, source, out_dir).fit()
    save_state(out_dir / f"rank{distributed.world().rank}.safetensors", sae.state_dict())


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) or a[k].isnan().all() and b[k].isnan().all() for k in a)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().nan_to_num().max()) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------------- data-parallel

ARCHS = ("batchtopk", "jumprelu", "gated")  # global top-k, warm-start cutoff + AuxK, resampling


def train_archs(
    store: Path, out: Path, steps: int, kill_at: int | None = None, every: int = 0
) -> None:
    if kill_at is not None and distributed.world().rank == 1:
        _die_at_step(kill_at)
    for arch in ARCHS:
        tree = train_tree(store, arch, steps, checkpoint_every_steps=every)
        if arch == "gated":
            tree["sae"]["dead_remedy"] = "resample"
            tree["train"].update(resample_at=[0.5], resample_sample_rows=256)
        train_on_store(tree, out / arch)


def _die_at_step(step: int) -> None:
    """This rank dies (like SIGKILL: no cleanup) when it reaches training step `step`."""
    import os

    from sae.training.trainer import SAETraining

    real = SAETraining.train_step

    def train_step(self, x, at, total):  # type: ignore[no-untyped-def]
        if at == step:
            os._exit(9)
        return real(self, x, at, total)

    SAETraining.train_step = train_step  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return sparse_store(tmp_path_factory.mktemp("dist") / "store")


@pytest.fixture(scope="module")
def two_rank_runs(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    run_ranks(train_archs, store, out, 12)
    return out


def test_two_data_parallel_ranks_train_the_single_process_weights(store, two_rank_runs, tmp_path) -> None:
    alone(train_archs, store, tmp_path, 12)
    for arch in ARCHS:
        one = load_state(tmp_path / arch / "rank0.safetensors")
        rank0 = load_state(two_rank_runs / arch / "rank0.safetensors")
        rank1 = load_state(two_rank_runs / arch / "rank1.safetensors")
        assert same(rank0, rank1), f"{arch}: ranks disagree"
        assert max_difference(one, rank0) < 1e-5, arch
        # the log covers the whole global batch, not rank 0's half
        logged = [json.loads(line) for line in (two_rank_runs / arch / "metrics.jsonl").open()]
        alone_logged = [json.loads(line) for line in (tmp_path / arch / "metrics.jsonl").open()]
        assert [r["step"] for r in logged] == [r["step"] for r in alone_logged]
        for mine, theirs in zip(logged, alone_logged, strict=True):
            assert mine["mse"] == pytest.approx(theirs["mse"], rel=1e-4)
            assert mine["explained_variance"] == pytest.approx(theirs["explained_variance"], abs=1e-4)
            assert mine["l0"] == pytest.approx(theirs["l0"], abs=1e-3)


@pytest.mark.slow
def test_data_parallel_training_resumes_after_a_rank_dies(store, two_rank_runs, tmp_path) -> None:
    with pytest.raises(ProcessExitedException):
        run_ranks(train_archs, store, tmp_path, 12, 7, 4)
    assert load_state(tmp_path / ARCHS[0] / CHECKPOINT)["step"] == 4
    run_ranks(train_archs, store, tmp_path, 12, None, 4)
    for arch in ARCHS:
        resumed = load_state(tmp_path / arch / "rank0.safetensors")
        assert same(resumed, load_state(two_rank_runs / arch / "rank0.safetensors")), arch


# ---------------------------------------------------------------------------- SAE-parallel


def sweep_tree(store: Path) -> dict[str, Any]:
    tree = train_tree(store, "topk", 10)
    del tree["sae"]
    tree["saes"] = [{"name": f"k{k}", "arch": "topk", "d_sae": 64, "k": k} for k in (2, 3, 5)]
    tree["eval"] = {"samples": 512, "batch_size": 256, "threshold_batches": 1}
    return tree


def train_sweep(tree: dict[str, Any], out: Path, publish: bool) -> None:
    from pipelines.train_and_evaluate import train_and_evaluate_many

    cfg = validate_tree(tree)
    source = build_source(cfg.data, cfg.seed)
    if publish:
        train_and_evaluate_many(cfg, source, out)
        return
    saes = {entry.name: build_sae(entry, source.d_in, cfg.seed) for entry in cfg.sae_entries()}
    out.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, saes, source, out).fit()


def test_sae_parallel_ranks_train_what_one_process_trains(store, tmp_path) -> None:
    tree = sweep_tree(store)
    alone(train_sweep, tree, tmp_path / "one", False)
    run_ranks(train_sweep, tree, tmp_path / "two", False)
    one, two = load_state(tmp_path / "one" / CHECKPOINT), load_state(tmp_path / "two" / CHECKPOINT)
    for name in ("k2", "k3", "k5"):  # rank 0 trains k2 and k5, rank 1 k3
        assert same(one["saes"][name]["model"], two["saes"][name]["model"]), name
        assert same(one["saes"][name]["optimizer"]["state"]["0"], two["saes"][name]["optimizer"]["state"]["0"])
    assert (tmp_path / "one" / "metrics.jsonl").read_text() == (tmp_path / "two" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_sae_parallel_ranks_publish_what_one_process_publishes(store, tmp_path) -> None:
    tree = sweep_tree(store)
    alone(train_sweep, tree, tmp_path / "one", True)
    run_ranks(train_sweep, tree, tmp_path / "two", True)
    for name in ("k2", "k3", "k5"):
        published = [
            load_file(d / name / "sae" / "sae_weights.safetensors")
            for d in (tmp_path / "one", tmp_path / "two")
        ]
        assert same(*published), name
        assert (tmp_path / "two" / name / "metrics.json").exists()


# ---------------------------------------------------------------------------- harvest

HARVEST = {"rows": 7000, "shard_rows": 1000, "batch_rows": 384, "dtype": "fp32"}


def harvest_sparse(directory: Path, die_at_batch: int | None = None) -> None:
    """The sparse-features harvest, split over the ranks of the job (or alone)."""
    world = distributed.world()
    die_at = die_at_batch if world.rank == 1 else None
    stream = SparseFeatures(HARVEST["batch_rows"], die_at)
    identity = {"kind": "sparse-features", "seed": 0, "data": {}}
    writer = StoreWriter(directory, identity, HARVEST, "fp32", 64) if world.main else None
    world.barrier()
    try:
        if world.distributed:
            harvest_rows_distributed(
                world, writer, directory, stream, HARVEST["rows"], HARVEST["shard_rows"],
                HARVEST["batch_rows"], "fp32", 64,
            )  # fmt: skip
        else:
            assert writer is not None
            harvest_rows(writer, stream, HARVEST["rows"], HARVEST["shard_rows"])
    finally:
        if writer is not None:
            writer.close()


def test_a_killed_distributed_harvest_resumes_to_the_single_process_store(tmp_path) -> None:
    alone(harvest_sparse, tmp_path / "one")
    with pytest.raises(ProcessExitedException):
        run_ranks(harvest_sparse, tmp_path / "killed", 12)  # rank 1 dies in its third shard
    killed = load_manifest(tmp_path / "killed")
    assert 0 < len(killed.shards) < 7 and len(killed.shards) % 2 == 0  # whole rounds only
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-alone")
    run_ranks(harvest_sparse, tmp_path / "killed")
    assert store_files(tmp_path / "killed") == store_files(tmp_path / "one")
    # the partial store is a plain store: a single process continues it too
    alone(harvest_sparse, tmp_path / "killed-alone")
    assert store_files(tmp_path / "killed-alone") == store_files(tmp_path / "one")


def test_torchrun_harvest_writes_the_single_process_store(tmp_path) -> None:
    tree = {
        "seed": 0,
        "data": {"synthetic": {"num_features": 48, "hidden_dim": 32}},
        "harvest": {"rows": 5000, "shard_rows": 700, "batch_rows": 256, "block_rows": 64},
        "logging": {"progress": False},
    }
    config = write_config(tmp_path / "harvest.yaml", tree)
    assert main(["harvest", str(config), "--out", str(tmp_path / "one")]) == 0
    torchrun_sae("harvest", str(config), "--out", str(tmp_path / "two"), timeout=300)
    assert store_files(tmp_path / "two") == store_files(tmp_path / "one")


@pytest.mark.slow
def test_torchrun_train_matches_the_single_process_run(store, tmp_path) -> None:
    tree = train_tree(store, "batchtopk", 12)
    tree["eval"] = {"samples": 512, "batch_size": 256, "threshold_batches": 1}
    config = write_config(tmp_path / "train.yaml", tree)
    assert alone(main, ["train", str(config), "--out", str(tmp_path / "one")]) == 0
    torchrun_sae("train", str(config), "--out", str(tmp_path / "two"), timeout=600)
    one, two = (load_state(tmp_path / d / CHECKPOINT)["saes"]["sae"]["model"] for d in ("one", "two"))
    assert max_difference(one, two) < 1e-5
    assert (tmp_path / "two" / "sae" / "sae_weights.safetensors").exists()
