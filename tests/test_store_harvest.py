"""Writing a store: kills, resumes, bad rows, full and unwritable disks."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import sae.store.writer as writer_module
from pipelines.cli import main
from sae.errors import DataError, UserError
from sae.store.format import Manifest, load_manifest
from sae.store.reader import Store
from sae.store.verify import verify_store
from tests.conftest import write_config
from tests.store_helpers import CountingStream, harvest_counting, store_files


class _Killed(Exception):
    """Stands in for SIGKILL: the harvest stops dead, nothing is cleaned up."""


def _kill_after(shards: int, shard_rows: int = 1000):
    def on_commit(rows: int) -> None:
        if rows >= shards * shard_rows:
            raise _Killed

    return on_commit


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, bytes]:
    return store_files(harvest_counting(tmp_path_factory.mktemp("straight") / "store"))


def test_resume_from_every_shard_boundary_gives_byte_identical_files(tmp_path, straight) -> None:
    for shards in range(1, 5):
        out = tmp_path / f"killed-{shards}"
        with pytest.raises(_Killed):
            harvest_counting(out, on_commit=_kill_after(shards))
        assert load_manifest(out).rows == shards * 1000
        # what a kill in the middle of the next commit leaves behind
        (out / f".shard-{shards:05d}.safetensors.tmp-999").write_bytes(b"partial")
        (out / ".tmpX7q2Lz").write_bytes(b"safetensors' own temporary, before its rename")
        (out / f"shard-{shards:05d}.safetensors").write_bytes(b"renamed, never committed")
        harvest_counting(out)
        assert store_files(out) == straight, f"resumed after shard {shards}"


@pytest.mark.parametrize("failing_save", [1, 3])
def test_a_kill_inside_a_commit_keeps_the_previous_commit(tmp_path, straight, monkeypatch, failing_save) -> None:
    out = tmp_path / "store"
    calls = {"n": 0}
    real_save = Manifest.save

    def save(self, directory):  # the shard and state files are written, the manifest is not
        calls["n"] += 1
        if calls["n"] == failing_save:
            raise _Killed
        real_save(self, directory)

    monkeypatch.setattr(Manifest, "save", save)
    with pytest.raises(_Killed):
        harvest_counting(out)
    monkeypatch.setattr(Manifest, "save", real_save)
    if failing_save > 1:
        assert Store(out).rows == (failing_save - 1) * 1000
        assert verify_store(out)[1] == []
    harvest_counting(out)
    assert store_files(out) == straight


def test_a_source_that_ends_early_completes_the_store_with_its_rows(tmp_path) -> None:
    out = harvest_counting(tmp_path / "store", stream=CountingStream(384, end=2500))
    store = Store(out)
    assert store.manifest.complete and store.rows == 2500
    assert [s.rows for s in store.manifest.shards] == [1000, 1000, 500]
    assert torch.equal(store.read_rows("acts/resid", 0, 2500)[:, 0], torch.arange(2500).float())


def test_nan_rows_are_refused_at_write_time_naming_the_row(tmp_path) -> None:
    out = tmp_path / "store"
    with pytest.raises(DataError, match=r"row 2500 of hook 'mlp' has NaN"):
        harvest_counting(out, stream=CountingStream(384, nan_at=2500))
    assert Store(out).rows == 2000, "shards committed before the bad row stay"
    assert verify_store(out)[1] == []


def test_fp16_overflow_is_reported_as_overflow(tmp_path) -> None:
    with pytest.raises(DataError, match="overflow to inf in fp16"):
        harvest_counting(tmp_path / "s", dtype="fp16", stream=CountingStream(384, scale=1e5))


def test_full_disk_is_a_clear_error_and_the_committed_store_stays_valid(tmp_path, straight, monkeypatch) -> None:
    out = tmp_path / "store"
    real_save_file = writer_module.save_file
    calls = {"n": 0}

    def save_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # what safetensors raises on a full disk
            raise SafetensorError(
                f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error 28)"
            )
        real_save_file(*args, **kwargs)

    monkeypatch.setattr(writer_module, "save_file", save_file)
    with pytest.raises(UserError, match="no space left on device.*keeps its 2 committed shards"):
        harvest_counting(out)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name], "no temporary file left behind"
    assert verify_store(out)[1] == [] and Store(out).rows == 2000
    monkeypatch.setattr(writer_module, "save_file", real_save_file)
    harvest_counting(out)
    assert store_files(out) == straight


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB filesystem (needs mount rights, as root in a container has)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_filesystem_stops_with_a_clear_error(small_tmpfs) -> None:
    out = small_tmpfs / "store"
    with pytest.raises(UserError, match="no space left on device"):
        harvest_counting(out, rows=200_000, shard_rows=10_000, batch_rows=1000)
    assert verify_store(out)[1] == []
    assert Store(out).rows % 10_000 == 0 and Store(out).rows > 0


def test_read_only_filesystem_is_a_clear_error_with_no_traceback(small_tmpfs, tiny_config, capsys) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    assert main(["harvest", str(tiny_config), "--out", str(small_tmpfs / "store")]) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and err.count("\n") == 1
    with pytest.raises(UserError, match="Read-only file system"):  # past the CLI's check too
        harvest_counting(small_tmpfs / "store")


def test_out_path_under_a_regular_file_is_a_clear_error(tmp_path, tiny_config, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    assert main(["harvest", str(tiny_config), "--out", str(tmp_path / "file" / "store")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and err.count("\n") == 1


def test_a_store_from_a_different_harvest_is_refused(tmp_path) -> None:
    out = harvest_counting(tmp_path / "store", rows=2000)
    with pytest.raises(UserError, match="'harvest.rows' differs"):
        harvest_counting(out, rows=3000)


def test_a_directory_with_other_files_is_refused(tmp_path) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no store"):
        harvest_counting(out)
    assert (out / "notes.txt").read_text() == "mine"


def test_two_writers_cannot_write_one_store(tmp_path) -> None:
    out = tmp_path / "store"
    entered = {}

    def second_writer(rows: int) -> None:
        if not entered:
            entered["yes"] = True
            with pytest.raises(UserError, match="another process is writing"):
                harvest_counting(out)

    harvest_counting(out, on_commit=second_writer)
    assert entered


def test_shards_hold_every_column_in_the_store_dtype(tmp_path) -> None:
    store = Store(harvest_counting(tmp_path / "s", dtype="bf16"))
    m = store.manifest
    assert m.hooks == {"resid": 6, "mlp": 4} and m.dtype == "bf16"
    assert m.columns == {"token_ids": "int64", "positions": "int64", "doc_ids": "int64", "labels/topic": "int64"}
    resid = store.read_rows("acts/resid", 0, 256)
    assert resid.dtype == torch.bfloat16
    assert torch.equal(resid[:, 0].float(), torch.arange(256).float())
    assert torch.equal(store.read_rows("doc_ids", 1000, 1100), torch.arange(1000, 1100) // 8)


# ---------------------------------------------------------------------------- real kills

TOY_HARVEST = {
    "seed": 0,
    "data": {"toy": {"n_features": 40, "d_hidden": 10, "train_steps": 20, "train_batch_size": 256}},
    "harvest": {"rows": 30_000, "shard_rows": 3000, "batch_rows": 1000},
    "logging": {"progress": False},
}


def _harvest_cli(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sae", "harvest", str(config), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _committed_rows(store: Path) -> int:
    try:
        return load_manifest(store).rows
    except DataError:  # no manifest yet
        return 0


def _kill_during_a_commit(proc: subprocess.Popen, store: Path, rng: random.Random) -> None:
    """SIGKILL `proc` at a random moment between two commits a few shards on: the delay is
    drawn from the time the last commit took, so kills land mid-harvest on any machine."""
    rows, since = _committed_rows(store), time.monotonic()
    target = rows + rng.randint(2, 4) * TOY_HARVEST["harvest"]["shard_rows"]
    interval = 0.0
    while proc.poll() is None and rows < target:
        time.sleep(0.001)
        now_rows = _committed_rows(store)
        if now_rows != rows:
            rows, interval, since = now_rows, time.monotonic() - since, time.monotonic()
    time.sleep(rng.uniform(0.0, interval))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _sigkill_then_finish(tmp_path: Path, kills: int, seed: int) -> None:
    # each kill lets at most 4 shards commit: leave room for all of them
    rows = TOY_HARVEST["harvest"]["shard_rows"] * (4 * kills + 4)
    tree = {**TOY_HARVEST, "harvest": {**TOY_HARVEST["harvest"], "rows": rows}}
    config = write_config(tmp_path / "harvest.yaml", tree)
    straight = _harvest_cli(config, tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed = tmp_path / "killed"
    rng = random.Random(seed)
    for _ in range(kills):
        _kill_during_a_commit(_harvest_cli(config, killed), killed, rng)
    assert _committed_rows(killed) < rows, "every kill came too late"
    finish = _harvest_cli(config, killed)
    assert finish.wait(timeout=300) == 0, finish.stderr.read()
    assert store_files(killed) == store_files(tmp_path / "straight")


def test_sigkill_at_random_moments_then_rerun_gives_the_same_store(tmp_path) -> None:
    _sigkill_then_finish(tmp_path, kills=2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_many_sigkills_at_random_moments_give_the_same_store(tmp_path, seed) -> None:
    _sigkill_then_finish(tmp_path, kills=6, seed=seed)


def test_harvest_of_a_finished_store_does_nothing(tmp_path, capsys) -> None:
    config = write_config(tmp_path / "h.yaml", {**TOY_HARVEST, "harvest": {"rows": 3000, "shard_rows": 1000, "batch_rows": 1000}})
    assert main(["harvest", str(config), "--out", str(tmp_path / "s")]) == 0
    before = store_files(tmp_path / "s")
    assert main(["harvest", str(config), "--out", str(tmp_path / "s")]) == 0
    assert "already complete (3000 rows); nothing to do" in capsys.readouterr().out
    assert store_files(tmp_path / "s") == before
