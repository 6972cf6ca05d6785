"""torch.distributed: harvest and training split over 2 ranks (gloo on 127.0.0.1) give what
one process gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae.config import validate_tree
from sae.io import load_state, save_state
from sae.models import build_sae
from sae.sources import build_source
from sae.sources.base import HarvestBatch, HarvestStream
from sae.store.writer import harvest_rows, open_writer
from sae.training.trainer import Trainer
from sae import distributed

D_IN, FEATURES = 16, 40


class SparseFeatures(HarvestStream):
    """Rows that are sparse non-negative mixes of fixed random directions (a tiny SAE task)."""

    def __init__(self, batch_rows: int):
        self.batch_rows, self.batches = batch_rows, 0
        self.directions = torch.randn(FEATURES, D_IN, generator=torch.Generator().manual_seed(1))

    def __next__(self) -> HarvestBatch:
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


def train_tree(store: Path, arch: str, steps: int, **train: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"store": str(store)},
        "sae": {"arch": arch, "d_sae": 64, "k": 4, "warm_start_frac": 0.25, "dead_remedy": "auxk"},
        "train": {
            "samples": 64 * steps, "batch_size": 64, "lr": 3e-3, "lr_warmup_steps": 2,
            "checkpoint_every_steps": 0, "dead_window_samples": 512, "prefetch_batches": 0,
            "norm_estimate_batches": 2, "device": "cpu", **train,
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
