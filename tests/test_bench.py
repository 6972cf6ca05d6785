"""Smoke tests: the benchmark commands run on tiny shapes and write the promised JSON keys."""

import json
from pathlib import Path

import pytest

from tests.test_cli import sae

TRAIN_KEYS = {
    "arch", "d", "m", "batch", "ours_samples_per_s", "saelens_samples_per_s", "speedup",
    "bound_samples_per_s", "bound_ratio",
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
