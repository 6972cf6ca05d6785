"""Checkpoints and harvest states are checked against their hash on load; `sae store verify`
checks that the manifest describes its shards and says when a store is incomplete."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipelines.cli import main
from sae.errors import DataError
from sae.io import flatten_state, load_state, save_state
from sae.store.format import load_manifest
from sae.training.trainer import CHECKPOINT
from tests.conftest import tiny_tree, write_config
from tests.store_helpers import harvest_counting


def flip_last_bit(path: Path) -> None:
    """One bit of the last tensor byte: a mantissa bit, the probe's silent corruption."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_state_file_with_a_flipped_bit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    save_state(path, {"step": 3, "weights": torch.arange(8, dtype=torch.float32)})
    assert load_state(path)["step"] == 3
    flip_last_bit(path)
    with pytest.raises(DataError, match="does not match its hash"):
        load_state(path)


def test_a_state_file_written_before_hashes_still_loads(tmp_path: Path) -> None:
    import json

    path = tmp_path / "old.safetensors"
    tensors, skeleton = flatten_state({"step": 3, "weights": torch.ones(4)})
    save_file(tensors, str(path), metadata={"state": json.dumps(skeleton)})
    assert load_state(path)["step"] == 3


def test_a_corrupt_checkpoint_stops_the_resume_with_one_line(tmp_path: Path, capsys) -> None:
    tree = tiny_tree()
    tree["train"]["samples"] = 2000
    config, out = str(write_config(tmp_path / "c.yaml", tree)), tmp_path / "out"
    assert main(["toy", config, "--out", str(out)]) == 0
    flip_last_bit(out / CHECKPOINT)
    capsys.readouterr()
    assert main(["toy", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors does not match its hash" in err and err.count("\n") == 1


def test_a_corrupt_harvest_state_stops_the_harvest(tmp_path: Path) -> None:
    store = harvest_counting(tmp_path / "store", rows=2000)
    manifest = load_manifest(store)
    manifest.complete = False  # as a harvest killed part-way leaves it
    manifest.save(store)
    flip_last_bit(store / manifest.harvest_state)
    with pytest.raises(DataError, match="does not match its hash"):
        harvest_counting(store, rows=2000)


def _verify(store: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["store", "verify", str(store)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("field", "edit", "message"),
    [
        ("d_in", lambda m: m.hooks.update(resid=7), "'acts/resid' is F32 [1000, 6], the manifest says F32 [1000, 7]"),
        ("dtype", lambda m: setattr(m, "dtype", "fp16"), "the manifest says F16"),
        ("rows", lambda m: setattr(m.shards[0], "rows", 999), "the manifest says F32 [999, 6]"),
        ("columns", lambda m: m.columns.pop("doc_ids"), "columns doc_ids are not in the manifest"),
    ],
)
def test_verify_finds_a_manifest_that_does_not_describe_its_shards(
    tmp_path: Path, capsys, field: str, edit, message: str
) -> None:
    store = harvest_counting(tmp_path / "store", rows=2000)
    manifest = load_manifest(store)
    edit(manifest)
    manifest.save(store)  # with a recomputed checksum: the hashes alone pass it
    code, text = _verify(store, capsys)
    assert code == 1 and message in text, text


def test_verify_says_a_store_is_incomplete(tmp_path: Path, capsys) -> None:
    store = harvest_counting(tmp_path / "store", rows=2000)
    manifest = load_manifest(store)
    manifest.complete = False
    manifest.save(store)
    code, text = _verify(store, capsys)
    assert code == 1 and "incomplete: 2000 of 2000 rows" in text
