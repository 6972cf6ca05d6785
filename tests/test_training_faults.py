"""Training that goes wrong part-way: divergence, a full disk, a store spelled two ways.
Each stops with one line and keeps the last good checkpoint."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.train import run_train
from sae.config import validate_tree
from sae.errors import DataError, UserError
from sae.io import load_state
from sae.training.trainer import CHECKPOINT
from tests.conftest import tiny_tree, write_config
from tests.store_helpers import CountingStream, harvest_counting


def _store_tree(store: Path | str, **train: object) -> dict:
    tree = tiny_tree()
    tree["data"] = {"store": str(store), "hook": "resid", "shuffle": False}
    tree["train"].update({"batch_size": 64, "checkpoint_every_steps": 2, **train})
    tree["eval"] = {"samples": 256, "batch_size": 128, "threshold_batches": 1}
    return tree


def test_a_run_that_diverges_mid_way_stops_at_that_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    # counting rows grow with their index: scaled by 1e15 and read in order without input
    # normalisation, their squares overflow fp32 after some 16 batches
    store = harvest_counting(tmp_path / "store", rows=2000, stream=CountingStream(384, scale=1e15))
    tree = _store_tree(store, samples=2000, normalize_inputs=False, lr_warmup_steps=0)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"loss became NaN or inf at step (\d+)") as caught:
        run_train(validate_tree(tree), out)
    found = re.search(r"step (\d+)", str(caught.value))
    assert found is not None
    bad_step = int(found.group(1))
    state = load_state(out / CHECKPOINT)
    assert 0 < state["step"] < bad_step
    weights = state["saes"]["sae"]["model"]
    assert all(bool(torch.isfinite(value).all()) for value in weights.values())
    assert not (out / "sae").exists()  # nothing published


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB filesystem (needs mount rights, as root in a container has)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(
    small_tmpfs: Path, tmp_path: Path, capsys
) -> None:
    tree = tiny_tree()  # a checkpoint of this SAE is about 54 KB
    tree["train"].update({"samples": 3200, "batch_size": 64, "checkpoint_every_steps": 10})
    config = str(write_config(tmp_path / "c.yaml", tree))
    out = small_tmpfs / "run"
    # leave room for one checkpoint but not for the next beside it (written, then renamed)
    free = subprocess.run(["df", "-B1", "--output=avail", str(small_tmpfs)], capture_output=True, text=True)
    room = int(free.stdout.split()[-1])
    (small_tmpfs / "filler").write_bytes(b"\0" * max(0, room - 90_000))
    assert main(["toy", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and err.count("\n") == 1, err
    assert "the previous checkpoint is kept" in err
    assert load_state(out / CHECKPOINT)["step"] >= 10


def test_a_store_given_by_another_spelling_is_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = harvest_counting(tmp_path / "store", rows=2000)
    monkeypatch.chdir(tmp_path)
    relative = validate_tree(_store_tree("store", samples=640))
    absolute = validate_tree(_store_tree(tmp_path / "store", samples=640))
    run_train(relative, tmp_path / "run")
    run_train(absolute, tmp_path / "run")  # resumes (finished): not "a different run"
    assert relative.data.store == absolute.data.store == store.resolve()


def test_a_different_store_is_still_a_different_run(tmp_path: Path) -> None:
    run_train(validate_tree(_store_tree(harvest_counting(tmp_path / "a", rows=2000), samples=640)), tmp_path / "run")
    other = validate_tree(_store_tree(harvest_counting(tmp_path / "b", rows=2000), samples=640))
    with pytest.raises(UserError, match="'data.store' differs"):
        run_train(other, tmp_path / "run")
