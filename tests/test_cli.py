import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_tree, write_config


def sae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("train.lr=fast", "config key 'train.lr'"),
        ("sae.arch=mlp", "config key 'sae.arch'"),
    ],
)
def test_bad_override_stops_with_one_line_and_no_output(
    tiny_config: Path, tmp_path: Path, override: str, message: str
) -> None:
    out = tmp_path / "run"
    result = sae("toy", str(tiny_config), "--out", str(out), "--set", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = sae("toy", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr and "Traceback" not in result.stderr


def test_invalid_synthetic_parameters_are_reported_before_any_output(tmp_path: Path) -> None:
    tree = tiny_tree()
    tree["data"]["synthetic"]["firing"] = {"kind": "zipfian", "max_prob": 0.01, "min_prob": 0.1}
    out = tmp_path / "run"
    result = sae("toy", str(write_config(tmp_path / "c.yaml", tree)), "--out", str(out))
    assert result.returncode == 2 and "data.synthetic" in result.stderr
    assert not out.exists()


def test_toy_writes_metrics_and_a_saelens_folder(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = sae("toy", str(tiny_config), "--out", str(out), "--set", "train.samples=20000")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "mcc", "mmcs", "frac_recovered_90", "frac_recovered_99", "uniqueness", "precision",
        "recall", "f1", "l0", "true_l0", "explained_variance", "dead_latents", "shrinkage",
        "arch", "seconds", "samples", "samples_per_second", "config",
    ):
        assert key in metrics, key
    assert metrics["config"]["train"]["samples"] == 20000
    assert "mcc" in result.stdout  # the summary table
    assert {p.name for p in (out / "sae").iterdir()} >= {"cfg.json", "sae_weights.safetensors"}
