"""A damaged store is named, never read as data: `sae store verify`, readers and training."""

import json
import os
import shutil
from pathlib import Path

import pytest

from pipelines.cli import main
from sae.errors import DataError
from sae.store.format import MANIFEST, _checksum
from sae.store.reader import Store, StoreStream
from tests.store_helpers import harvest_counting


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return harvest_counting(tmp_path_factory.mktemp("pristine") / "store")


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy


def _flip_in_column(store: Path, shard: int, column: str, row: int) -> Path:
    opened = Store(store)
    fd = os.open(opened.path(shard), os.O_RDONLY)
    offset = opened.layout(shard, fd).offsets[column] + row * 6 * 4 + 2
    os.close(fd)
    path = opened.path(shard)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def _read_everything(store: Path) -> None:
    stream = StoreStream(Store(store), "acts/resid", 250, seed=0)
    try:
        for _ in range(20):
            next(stream)
    finally:
        stream.close()


def _verify(store: Path, capsys) -> tuple[int, str, str]:
    code = main(["store", "verify", str(store)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_passes_an_intact_store(store, capsys) -> None:
    code, out, _ = _verify(store, capsys)
    assert code == 0 and "ok: 5 shards, 5000 rows verified" in out


def test_a_flipped_data_byte_is_named_by_verify_and_stops_reading(store, capsys) -> None:
    path = _flip_in_column(store, 2, "acts/resid", 700)
    code, out, _ = _verify(store, capsys)
    assert code == 1
    assert out.splitlines() == [f"bad shard {path}: content does not match its hash (corrupt)"]
    with pytest.raises(DataError, match=rf"{path}: rows 640..703 of 'acts/resid' do not match"):
        _read_everything(store)


def test_a_flipped_header_byte_is_named(store, capsys) -> None:
    path = store / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[40] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _ = _verify(store, capsys)
    assert code == 1 and str(path) in out
    with pytest.raises(DataError, match=rf"{path}: (corrupt shard header|shard header does not)"):
        _read_everything(store)


def test_a_truncated_shard_is_named_before_any_batch(store, capsys) -> None:
    path = store / "shard-00003.safetensors"
    os.truncate(path, path.stat().st_size - 1000)
    code, out, _ = _verify(store, capsys)
    assert code == 1 and f"bad shard {path}: truncated" in out
    with pytest.raises(DataError, match=rf"{path}: shard is truncated"):
        Store(store)


def test_a_shard_truncated_while_training_runs_stops_the_reader(store) -> None:
    opened = Store(store)
    path = store / "shard-00004.safetensors"
    os.truncate(path, 5000)
    stream = StoreStream(opened, "acts/resid", 250, seed=0, shuffle=False)
    with pytest.raises(DataError, match=rf"{path}"):
        for _ in range(20):
            next(stream)
    stream.close()


def test_a_deleted_shard_is_named(store, capsys) -> None:
    path = store / "shard-00000.safetensors"
    path.unlink()
    code, out, _ = _verify(store, capsys)
    assert code == 1 and out.strip() == f"bad shard {path}: missing"
    with pytest.raises(DataError, match=rf"{path}: shard is missing"):
        Store(store)


def test_a_hand_edited_manifest_is_refused(store, capsys) -> None:
    manifest = store / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text.replace('"rows": 1000', '"rows": 900', 1))
    code, _, err = _verify(store, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "manifest.json does not match its checksum: it was edited by hand" in err
    with pytest.raises(DataError, match="edited by hand"):
        Store(store)


def test_a_consistently_rewritten_manifest_still_cannot_misdescribe_shards(store) -> None:
    """Even with a recomputed checksum, rows that disagree with the shard header are refused."""
    manifest = store / MANIFEST
    body = json.loads(manifest.read_text())
    body.pop("checksum")
    body["shards"][1]["rows"] = 999
    body["rows"] -= 1
    manifest.write_text(json.dumps({**body, "checksum": _checksum(body)}))
    with pytest.raises(DataError, match="shard-00001.safetensors: shard does not match the manifest"):
        _read_everything(store)


def test_a_manifest_that_is_not_json_is_a_clear_error(store, capsys) -> None:
    (store / MANIFEST).write_text('{"format": "sae-activation-store", ')
    assert main(["store", "info", str(store)]) == 2
    assert "manifest.json is not readable JSON" in capsys.readouterr().err


def test_info_describes_the_store(store, capsys) -> None:
    assert main(["store", "info", str(store)]) == 0
    out = capsys.readouterr().out
    for expected in ("rows      5000", "5 shards", "dtype     fp32", "resid (d_in 6)", "mlp (d_in 4)",
                     "token_ids (int64)", "complete"):
        assert expected in out, expected
