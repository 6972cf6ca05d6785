"""The on-disk format of an activation store: file names, the manifest, shard headers, hashes.

A store is a directory:

    manifest.json                     the commit point (below)
    shard-00000.safetensors           rows [0, n0) of every column
    shard-00001.safetensors           ...
    harvest-state-00001.safetensors   where the source stood after the last committed shard

Each shard is a safetensors file holding one [rows, d_in] tensor per hook, named
`acts/<hook>`, and optional per-row metadata columns (`token_ids`, `positions`, `doc_ids`,
`labels/<name>`). Its header metadata carries an xxh3-64 hash of every block of `block_rows`
rows of every column, so a reader checks each byte it uses, in whatever order it reads.

manifest.json records the format version, the source (its config, model, dataset, seed), the
dtype, hooks with their d_in, the metadata columns, and per shard its file, row count, byte
size, an xxh3-128 hash of the whole file and an xxh3-64 hash of its header. A `checksum` over
the rest of the manifest catches hand edits and corruption of the manifest itself. All of
these are unkeyed hashes: they catch accidents, not tampering (whoever edits a file on
purpose can recompute them). Only shards
listed in the manifest exist for readers; anything else in the directory is uncommitted.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from sae.errors import DataError, UserError
from sae.io import atomic_write_json
from sae.paths import plain_name

FORMAT = "sae-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_METADATA = "sae_store"  # the shard header's one metadata entry (JSON)
LOCK = ".lock"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".safetensors"
STATE_PREFIX = "harvest-state-"
ACTS = "acts/"
LABELS = "labels/"
META_COLUMNS = ("token_ids", "positions", "doc_ids")
# default block size: small enough to mix well, large enough to read fast
BLOCK_BYTES, MAX_BLOCK_ROWS = 256 * 1024, 256
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

STORE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch dtype <-> safetensors dtype code, for checking shard headers against the manifest
_ST_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
_TORCH_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in _ST_CODES}


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}{SHARD_SUFFIX}"


def state_name(shards: int) -> str:
    return f"{STATE_PREFIX}{shards:05d}{SHARD_SUFFIX}"


def act_column(hook: str) -> str:
    return f"{ACTS}{hook}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    if name not in _TORCH_NAMES:
        raise DataError(f"unsupported column dtype '{name}' in the store manifest")
    return _TORCH_NAMES[name]


def safetensors_code(dtype: torch.dtype) -> str:
    return _ST_CODES[dtype]


def auto_block_rows(row_bytes: int) -> int:
    """The largest power of two of rows that fit in BLOCK_BYTES, between 1 and MAX_BLOCK_ROWS."""
    rows = min(MAX_BLOCK_ROWS, max(1, BLOCK_BYTES // max(row_bytes, 1)))
    return 1 << (rows.bit_length() - 1)


# ---------------------------------------------------------------------------- hashes


def block_hashes(data: memoryview, block_bytes: int) -> np.ndarray:
    """xxh3-64 of each consecutive `block_bytes` slice of `data` (the last may be shorter)."""
    count = -(-len(data) // block_bytes) if len(data) else 0
    out = np.empty(count, dtype=np.uint64)
    for i in range(count):
        out[i] = xxhash.xxh3_64_intdigest(data[i * block_bytes : (i + 1) * block_bytes])
    return out


def encode_hashes(hashes: np.ndarray) -> str:
    return hashes.astype(">u8").tobytes().hex()


def decode_hashes(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=">u8").astype(np.uint64)


def file_hash(path: Path, chunk: int = 8 << 20) -> str:
    """xxh3-128 of a whole file, read in chunks (bounded memory)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            digest.update(view[:n])
    return f"xxh3_128:{digest.hexdigest()}"


def header_hash(header: bytes) -> str:
    return f"xxh3_64:{xxhash.xxh3_64_hexdigest(header)}"


def read_header(fd: int, path: Path, size: int) -> tuple[bytes, dict[str, Any]]:
    """The raw header bytes (length prefix included) and its parsed JSON, with bounds checked."""
    prefix = os.pread(fd, 8, 0)
    if len(prefix) < 8:
        raise DataError(f"{path}: truncated shard (no safetensors header)")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise DataError(f"{path}: corrupt or truncated shard header")
    raw = prefix + os.pread(fd, length, 8)
    try:
        parsed = json.loads(raw[8:])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: corrupt shard header") from None
    if not isinstance(parsed, dict):
        raise DataError(f"{path}: corrupt shard header")
    return raw, parsed


# ---------------------------------------------------------------------------- manifest


@dataclass
class ShardRecord:
    file: str
    rows: int
    bytes: int
    hash: str  # of the whole file
    header_hash: str


@dataclass
class Manifest:
    dtype: str  # of the activations: fp32, bf16, fp16
    block_rows: int
    hooks: dict[str, int]  # hook -> d_in
    columns: dict[str, str]  # metadata column -> torch dtype name
    source: dict[str, Any]  # kind, model, dataset, seed, data (the source's config), metadata
    harvest: dict[str, Any]  # the harvest settings that made the store
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    harvest_state: str | None = None  # file holding the source's state after the last shard

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def checksum(self) -> str:
        return _checksum(self._body())

    def column_dtype(self, column: str) -> torch.dtype:
        if column.startswith(ACTS):
            return STORE_DTYPES[self.dtype]
        return torch_dtype(self.columns[column])

    def column_width(self, column: str) -> int | None:
        return self.hooks[column.removeprefix(ACTS)] if column.startswith(ACTS) else None

    def all_columns(self) -> list[str]:
        return [act_column(h) for h in self.hooks] + list(self.columns)

    def _body(self) -> dict[str, Any]:
        body = asdict(self)
        return {"format": FORMAT, "version": VERSION, "rows": self.rows, **body}

    def save(self, directory: Path) -> None:
        body = self._body()
        atomic_write_json(directory / MANIFEST, {**body, "checksum": _checksum(body)})


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return f"xxh3_128:{xxhash.xxh3_128_hexdigest(canonical.encode())}"


def load_manifest(directory: Path) -> Manifest:
    """Read and check manifest.json. Raises DataError naming the problem."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DataError(f"store {directory} does not exist or is not a directory")
    if not path.is_file():
        raise DataError(f"{directory} is not an activation store (no {MANIFEST})")
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise DataError(f"{path} is not an activation-store manifest")
    if body.get("version") != VERSION:
        raise DataError(
            f"{path} has format version {body.get('version')}; this sae reads version {VERSION}"
        )
    claimed = body.pop("checksum", None)
    if claimed != _checksum(body):
        raise DataError(
            f"{path} does not match its checksum: it was edited by hand or corrupted "
            "(restore it, or harvest the store again)"
        )
    try:
        shards = [ShardRecord(**s) for s in body["shards"]]
        manifest = Manifest(
            dtype=body["dtype"],
            block_rows=int(body["block_rows"]),
            hooks={str(k): int(v) for k, v in body["hooks"].items()},
            columns=dict(body["columns"]),
            source=body["source"],
            harvest=body["harvest"],
            shards=shards,
            complete=bool(body["complete"]),
            harvest_state=body["harvest_state"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path} is missing or has a malformed field ({error})") from None
    if manifest.dtype not in STORE_DTYPES or manifest.block_rows < 1:
        raise DataError(f"{path}: malformed dtype or block_rows")
    _check_file_names(path, manifest)
    return manifest


def _check_file_names(path: Path, manifest: Manifest) -> None:
    """Files the manifest names are read (and, for the harvest state, deleted) in the store:
    each must be a plain name there, never `../x` or an absolute path."""
    names = [("shards[].file", s.file) for s in manifest.shards]
    if manifest.harvest_state is not None:
        names.append(("harvest_state", manifest.harvest_state))
    for field_name, name in names:
        try:
            plain_name(name, f"{path}: {field_name}")
        except UserError as error:
            raise DataError(str(error)) from None
