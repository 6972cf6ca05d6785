"""wandb holds a run's results next to its training curves: evaluation metrics, the density
histogram, and the SAE folder with its report as an artifact. Offline, in the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from tests.conftest import tiny_tree, write_config


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home"))  # artifact staging, not ~


def recorded(run_dir: Path) -> bytes:
    """Every record wandb wrote offline for the run (its .wandb files are protobuf records,
    whose keys and file names are stored as plain bytes)."""
    return b"".join(path.read_bytes() for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_evaluation_density_and_the_sae_folder_reach_wandb(tmp_path: Path, offline_wandb) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 4096
    tree["logging"]["wandb"] = True
    config = write_config(tmp_path / "tiny.yaml", tree)
    assert main(["toy", str(config), "--out", str(tmp_path / "run")]) == 0
    records = recorded(tmp_path / "run")
    assert b"loss" in records  # the training curve, as before
    for key in (b"eval/mcc", b"eval/explained_variance", b"eval/log10_density", b"eval/report"):
        assert key in records, key
    for name in (b"sae/cfg.json", b"sae/sae_weights.safetensors", b"sae/sparsity.safetensors", b"report.html"):
        assert name in records, name


def test_wandb_off_writes_nothing_of_wandb(tmp_path: Path, offline_wandb) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 2048
    config = write_config(tmp_path / "tiny.yaml", tree)  # logging.wandb: false
    assert main(["toy", str(config), "--out", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run" / "wandb").exists()
