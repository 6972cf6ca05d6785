"""Training from a store: ground-truth evaluation, exact mid-epoch resume, damaged shards."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main
from pipelines.harvest import run_harvest
from pipelines.train import run_train
from sae.config import validate_tree
from sae.errors import DataError
from sae.models import build_sae
from sae.seeding import derive_seed
from sae.sources import build_source
from sae.streams import BatchStream
from sae.training.trainer import Trainer
from tests.conftest import tiny_tree, write_config
from tests.store_helpers import harvest_counting


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    """20k rows of the tiny synthetic source: 60k training samples are three epochs."""
    tree = tiny_tree()
    tree["harvest"] = {"rows": 20_000, "shard_rows": 4000, "batch_rows": 1000}
    out = tmp_path_factory.mktemp("synthetic") / "store"
    run_harvest(validate_tree(tree), out)
    return out


def _store_tree(store: Path, **train) -> dict:
    tree = tiny_tree()
    tree["data"] = {"store": str(store)}
    tree["train"].update(train)
    return tree


def test_a_store_of_a_ground_truth_source_is_evaluated_like_the_live_source(synthetic_store, tmp_path) -> None:
    from_store = run_train(validate_tree(_store_tree(synthetic_store, samples=30_000)), tmp_path / "s")
    live_tree = tiny_tree()
    live_tree["train"]["samples"] = 30_000
    live = run_train(validate_tree(live_tree), tmp_path / "live")
    for metric in ("mcc", "f1", "explained_variance"):
        assert abs(from_store[metric] - live[metric]) < 0.05, (metric, from_store, live)
    assert from_store["true_l0"] == live["true_l0"], "the same ground truth, rebuilt"
    assert from_store["source"]["kind"] == "store" and from_store["source"]["model_name"] == "synthetic"
    cfg = json.loads((tmp_path / "s" / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "hidden" and cfg["metadata"]["source"] == "store"


class _Crash(Exception):
    pass


class _CrashingStream(BatchStream):
    def __init__(self, inner: BatchStream, batches: int):
        self.inner, self.left = inner, batches

    def __next__(self) -> torch.Tensor:
        if self.left == 0:
            raise _Crash
        self.left -= 1
        return next(self.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        self.inner.close()


def _crash_after(source, batches: int, seed: int) -> None:
    """Make the training stream (the one seeded with the run seed) die after `batches`."""
    make = source.stream

    def stream(batch_size: int, stream_seed: int) -> BatchStream:
        inner = make(batch_size, stream_seed)
        return _CrashingStream(inner, batches) if stream_seed == seed else inner

    source.stream = stream


def _weights(out: Path) -> dict:
    return load_file(str(out / "checkpoint.safetensors"))


def test_training_resumed_mid_epoch_ends_with_identical_weights(synthetic_store, tmp_path) -> None:
    cfg = validate_tree(
        _store_tree(synthetic_store, samples=25_000, batch_size=512, checkpoint_every_steps=10)
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    source = build_source(cfg.data, cfg.seed)
    Trainer(cfg, build_sae(cfg.sae, source.d_in, cfg.seed), source, straight).fit()

    # 39 batches per epoch, 49 steps, checkpoints every 10: die at step 33 (back to 30), then
    # at step 42, in the second epoch
    for crash_at in (33, 12):
        source = build_source(cfg.data, cfg.seed)
        _crash_after(source, crash_at, derive_seed(cfg.seed, "train"))
        with pytest.raises(_Crash):
            Trainer(cfg, build_sae(cfg.sae, source.d_in, cfg.seed), source, resumed).fit()
    source = build_source(cfg.data, cfg.seed)
    Trainer(cfg, build_sae(cfg.sae, source.d_in, cfg.seed), source, resumed).fit()

    a, b = _weights(straight), _weights(resumed)
    for name in a:
        if name.startswith("model.") or name.startswith("stream."):
            assert torch.equal(a[name], b[name]), name


def test_a_store_without_ground_truth_reports_reconstruction(tmp_path) -> None:
    store = harvest_counting(tmp_path / "store", rows=8000)
    tree = _store_tree(store, samples=8000)
    tree["data"]["hook"] = "mlp"
    tree["sae"].update(d_sae=16, k=2)
    result = run_train(validate_tree(tree), tmp_path / "run")
    assert "mcc" not in result
    assert {"explained_variance", "l0", "dead_latents", "shrinkage"} <= set(result)
    assert result["l0"] <= 2


def test_a_corrupt_shard_stops_training_naming_the_file(synthetic_store, tmp_path) -> None:
    store = tmp_path / "store"
    shutil.copytree(synthetic_store, store)
    for shard in store.glob("shard-*.safetensors"):  # one flipped bit in every block
        data = bytearray(shard.read_bytes())
        for end in range(100, 4000 * 16 * 4, 256 * 16 * 4):
            data[-end] ^= 0x10
        shard.write_bytes(bytes(data))
    cfg = validate_tree(_store_tree(store))
    source = build_source(cfg.data, cfg.seed)
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError, match=r"shard-0000\d.safetensors: rows \d+..\d+ of 'acts/hidden'"):
        Trainer(cfg, build_sae(cfg.sae, source.d_in), source, tmp_path / "run").fit()


def test_sae_train_cli_writes_the_outputs_of_sae_toy(tmp_path, capsys) -> None:
    store = harvest_counting(tmp_path / "store", rows=4000)
    tree = _store_tree(store, samples=4000)
    tree["data"]["hook"] = "resid"
    config = write_config(tmp_path / "train.yaml", tree)
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert {"metrics.json", "sae", "checkpoint.safetensors"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert "explained_variance" in capsys.readouterr().out


def test_sae_train_on_a_missing_store_is_one_line(tmp_path, capsys) -> None:
    tree = _store_tree(tmp_path / "absent")
    config = write_config(tmp_path / "train.yaml", tree)
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "absent does not exist" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_store_batches_are_read_and_hash_checked_off_the_training_thread(
    synthetic_store, tmp_path, monkeypatch
) -> None:
    import threading

    from sae.store.reader import ShardFiles

    readers: set[str] = set()
    read = ShardFiles.read

    def recording_read(self, *args, **kwargs):
        readers.add(threading.current_thread().name)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(ShardFiles, "read", recording_read)
    cfg = validate_tree(_store_tree(synthetic_store, samples=2560, checkpoint_every_steps=0))
    source = build_source(cfg.data, cfg.seed)
    Trainer(cfg, build_sae(cfg.sae, source.d_in, cfg.seed), source, tmp_path).fit()
    assert readers and threading.main_thread().name not in readers, readers
