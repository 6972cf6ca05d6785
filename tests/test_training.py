import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.train_and_evaluate import build_ground_truth, train_and_evaluate
from sae.config import validate_tree
from sae.device import uses_bf16
from sae.errors import DataError
from sae.models import build_sae
from sae.models.base import geometric_median
from sae.streams import BatchStream
from sae.training.trainer import Trainer
from tests.conftest import tiny_tree, write_config


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-m", "sae", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_tiny_topk_recovers_the_true_features(tmp_path: Path) -> None:
    cfg = validate_tree(tiny_tree())
    result = train_and_evaluate(cfg, build_ground_truth(cfg), tmp_path)
    assert result["mcc"] > 0.85  # a random dictionary scores about 0.45 here
    assert result["explained_variance"] > 0.8
    assert (tmp_path / "sae" / "cfg.json").exists()


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu", "gated", "matryoshka"])
def test_every_architecture_learns_a_useful_dictionary(arch: str, tmp_path: Path) -> None:
    tree = tiny_tree(arch)  # every architecture with its default hyper-parameters
    result = train_and_evaluate(validate_tree(tree), build_ground_truth(validate_tree(tree)), tmp_path)
    assert result["mcc"] > 0.6, result
    assert result["explained_variance"] > 0.5, result


def test_resume_after_sigkill_ends_with_identical_weights(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["train"].update(samples=150_000, batch_size=512, checkpoint_every_steps=7)
    config = write_config(tmp_path / "cfg.yaml", tree)

    straight = run_cli("toy", str(config), "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(2):  # two kills at random moments after the first checkpoint
        proc = run_cli("toy", str(config), "--out", str(killed))
        while not (killed / "checkpoint.safetensors").exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = run_cli("toy", str(config), "--out", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert "sae: resuming from step" in resumed.stderr.read()  # not started over

    a = load_file(str(tmp_path / "straight" / "sae" / "sae_weights.safetensors"))
    b = load_file(str(killed / "sae" / "sae_weights.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "a resumed run must not log a step twice"


def test_resume_refuses_a_checkpoint_from_a_different_config(tmp_path: Path) -> None:
    cfg = validate_tree(tiny_tree())
    source = build_ground_truth(cfg)
    Trainer(cfg, build_sae(cfg.sae, source.d_in), source, tmp_path).fit()
    other = validate_tree({**tiny_tree(), "seed": 1})
    with pytest.raises(Exception, match="'seed' differs"):
        Trainer(other, build_sae(other.sae, source.d_in), source, tmp_path).fit()


class _PoisonedStream(BatchStream):
    def __init__(self, at: int):
        self.at, self.n = at, 0

    def __next__(self) -> torch.Tensor:
        self.n += 1
        x = torch.randn(128, 32)
        if self.n == self.at:
            x[3, 2] = float("nan")
        return x

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def test_nan_activations_stop_training_with_a_clear_error(tmp_path: Path) -> None:
    cfg = validate_tree(tiny_tree())
    source = build_ground_truth(cfg)
    # the NaN arrives after the step-50 and step-100 checkpoints were committed
    source.stream = lambda batch_size, seed: _PoisonedStream(at=120)  # type: ignore[method-assign]
    with pytest.raises(DataError, match="NaN"):
        Trainer(cfg, build_sae(cfg.sae, 32), source, tmp_path).fit()
    assert (tmp_path / "checkpoint.safetensors").exists(), "checkpoints before the NaN survive"


def test_geometric_median_resists_outliers() -> None:
    points = torch.cat([torch.zeros(90, 3), torch.full((10, 3), 100.0)])
    assert geometric_median(points).norm() < 1.0
    assert points.mean(0).norm() > 10


def test_wandb_logs_offline_into_the_run_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tree = tiny_tree()
    tree["train"]["samples"] = 10_000
    tree["logging"]["wandb"] = True
    cfg = validate_tree(tree)
    source = build_ground_truth(cfg)
    Trainer(cfg, build_sae(cfg.sae, source.d_in), source, tmp_path).fit()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 1


@pytest.mark.parametrize(("amx", "avx512_bf16"), [(False, False), (True, False), (False, True)])
def test_auto_precision_runs_the_encoder_in_bf16_on_cpus_with_bf16_instructions(
    amx: bool, avx512_bf16: bool, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cpu = torch.device("cpu")
    assert uses_bf16("auto", cpu) == (amx or avx512_bf16)
    assert uses_bf16("bf16", cpu) and not uses_bf16("fp32", cpu)
