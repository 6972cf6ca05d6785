"""Output directories: marked by the run that made them, locked while it trains, resumable,
and left without debris when a first attempt fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from sae.output_dir import LOCK, MARKER, claim_output_dir, read_marker
from tests.conftest import tiny_tree, write_config
from tests.store_helpers import CountingStream, harvest_counting


def _config(tmp_path: Path, samples: int = 2000) -> str:
    tree = tiny_tree()
    tree["train"]["samples"] = samples
    return str(write_config(tmp_path / "c.yaml", tree))


def test_a_run_marks_its_directory_first_and_a_rerun_resumes_there(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["toy", _config(tmp_path), "--out", str(out)]) == 0
    identity = read_marker(out)
    assert identity is not None and identity["command"] == "toy" and identity["run_id"]
    assert main(["toy", _config(tmp_path), "--out", str(out)]) == 0  # its own: resumes
    assert read_marker(out) == identity


def test_an_empty_existing_directory_is_accepted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main(["toy", _config(tmp_path), "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file() and read_marker(out) is not None


def test_a_second_training_into_a_directory_in_use_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with claim_output_dir(out, "toy"):  # another run holds it (flock: per open file)
        assert main(["toy", _config(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "another process is training into --out" in err and err.count("\n") == 1
    assert not (out / "metrics.jsonl").exists()


def test_a_failed_first_attempt_leaves_no_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), claim_output_dir(out, "toy"):
        (out / "metrics.jsonl").write_text("")  # opened, nothing logged yet
        raise RuntimeError("killed before any result")
    assert not out.exists()


def test_a_failed_attempt_keeps_what_it_committed_and_its_mark(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), claim_output_dir(out, "toy"):
        (out / "checkpoint.safetensors").write_bytes(b"state")
        raise RuntimeError("diverged after a checkpoint")
    assert (out / "checkpoint.safetensors").read_bytes() == b"state"
    assert read_marker(out) is not None


def test_a_failed_attempt_in_an_existing_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError), claim_output_dir(out, "toy"):
        raise RuntimeError("failed")
    assert out.is_dir() and not any(out.iterdir())


def test_a_marker_of_another_format_does_not_make_a_directory_ours(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"format": "something-else"}))
    (out / "metrics.json").write_text("{}")
    assert main(["toy", _config(tmp_path), "--out", str(out)]) == 2
    assert "was not made by sae" in capsys.readouterr().err


def test_a_harvest_that_fails_before_its_first_commit_leaves_no_lone_lock(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(Exception, match="NaN"):
        harvest_counting(store, stream=CountingStream(384, nan_at=5))
    assert not store.exists()


def test_a_store_killed_before_its_first_commit_is_still_continued(tmp_path: Path) -> None:
    """Files a killed writer left beside its lock are its own: removed, not refused."""
    store = tmp_path / "store"
    store.mkdir()
    (store / LOCK).write_text("")
    (store / "shard-00000.safetensors").write_bytes(b"torn")
    harvest_counting(store, rows=2000)
    assert (store / "manifest.json").is_file()
