"""`sae store verify` and `sae store info`: a store's integrity and its description."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sae.errors import DataError
from sae.store.format import Manifest, file_hash, load_manifest
from sae.store.reader import read_layout


@dataclass
class BadShard:
    file: str
    reason: str


def verify_store(directory: Path) -> tuple[Manifest, list[BadShard]]:
    """Re-hash every committed shard. The manifest itself must be intact (else DataError)."""
    manifest = load_manifest(directory)
    bad = []
    for index, record in enumerate(manifest.shards):
        path = Path(directory) / record.file
        if not path.is_file():
            bad.append(BadShard(record.file, "missing"))
            continue
        size = path.stat().st_size
        if size != record.bytes:
            what = "truncated" if size < record.bytes else "longer than recorded"
            bad.append(BadShard(record.file, f"{what}: {size} bytes, manifest says {record.bytes}"))
        elif file_hash(path) != record.hash:
            bad.append(BadShard(record.file, "content does not match its hash (corrupt)"))
        elif (mismatch := _header_mismatch(manifest, index, path)) is not None:
            bad.append(BadShard(record.file, mismatch))
    return manifest, bad


def _header_mismatch(manifest: Manifest, shard: int, path: Path) -> str | None:
    """Why the shard's header disagrees with the manifest (rows, dtype, d_in, columns), if it
    does: a manifest rewritten with a recomputed checksum passes every hash but this."""
    fd = os.open(path, os.O_RDONLY)
    try:
        read_layout(manifest, shard, path, fd)
    except DataError as error:
        return str(error).removeprefix(f"{path}: ")
    finally:
        os.close(fd)
    return None


def incomplete(manifest: Manifest) -> str | None:
    """What is missing from a store whose harvest has not finished (None when complete)."""
    if manifest.complete:
        return None
    return (
        f"incomplete: {manifest.rows} of {manifest.harvest.get('rows')} rows harvested; "
        "run the same harvest again to finish it"
    )


def describe_store(directory: Path, manifest: Manifest) -> str:
    source = manifest.source
    status = incomplete(manifest) or "complete"
    lines = [
        f"store     {directory} ({status})",
        f"rows      {manifest.rows}",
        f"size      {manifest.bytes / 1e9:.3f} GB in {len(manifest.shards)} shards "
        f"(blocks of {manifest.block_rows} rows)",
        f"dtype     {manifest.dtype}",
        "hooks     " + ", ".join(f"{h} (d_in {d})" for h, d in manifest.hooks.items()),
        "columns   " + (", ".join(f"{c} ({t})" for c, t in manifest.columns.items()) or "none"),
        f"source    {source.get('kind')}: model {source.get('model')}, dataset "
        f"{source.get('dataset')}, seed {source.get('seed')}",
    ]
    return "\n".join(lines)
