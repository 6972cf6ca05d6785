"""Shared fixtures: tiny configs that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sae import threads

threads.configure()  # as pipelines/cli.py, before torch loads

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from sae.models.registry import takes  # noqa: E402

os.environ.setdefault("WANDB_MODE", "disabled")  # tests never talk to wandb's servers
torch.set_num_threads(min(2, torch.get_num_threads()))


def k_for(arch: str, k: float) -> dict[str, float]:
    """{"k": k} for an architecture that takes k, else nothing: a key an architecture does not
    take is a config error."""
    return {"k": k} if takes(arch, "k") else {}


def tiny_tree(arch: str = "topk", **sae: Any) -> dict[str, Any]:
    """48 synthetic features in 32 dims: trains in a few seconds."""
    return {
        "seed": 0,
        "data": {
            "synthetic": {
                "num_features": 48,
                "hidden_dim": 32,
                "firing": {"kind": "constant", "probability": 0.04},
                "std_magnitude": 0.1,
            }
        },
        "sae": {"arch": arch, "d_sae": 48, **k_for(arch, 3), **sae},
        "train": {
            "samples": 80_000,
            "batch_size": 128,
            "lr": 5e-3,
            "lr_warmup_steps": 5,
            "checkpoint_every_steps": 50,
            "dead_window_samples": 10_000,
        },
        "eval": {"samples": 4096, "batch_size": 2048, "threshold_batches": 4},
        "logging": {"wandb": False, "progress": False, "log_every_steps": 10},
    }


def write_config(path: Path, tree: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", tiny_tree())
