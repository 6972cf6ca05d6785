"""Reading a store: verified block reads, and the resumable, partitioned batch stream.

Every read goes straight from the shard file into the batch tensor (one copy, no memory
map) and every block it covers is checked against the hash in the shard header, whose own
hash is in the manifest: a flipped byte, a truncated or a missing shard stops the reader with
a DataError naming the file, never a batch of garbage. A background thread reads up to
`buffer_rows` rows ahead of training; that, plus the batch in use, is all the memory the
stream holds, whatever the store's size.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from torch import Tensor

from sae.errors import DataError
from sae.store.format import (
    SHARD_METADATA,
    Manifest,
    act_column,
    decode_hashes,
    header_hash,
    load_manifest,
    read_header,
    safetensors_code,
)
from sae.store.order import BlockTable, EpochOrder
from sae.streams import BatchStream

OPEN_FILES = 64  # file descriptors a reader keeps open at once


@dataclass
class ShardLayout:
    """Where each column's rows start in one shard file, and their block hashes."""

    offsets: dict[str, int]  # column -> byte offset of row 0 in the file
    hashes: dict[str, list[int]]  # column -> xxh3-64 per block


class Store:
    """An opened store: the manifest, its block table and the shards' checked headers."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.manifest: Manifest = load_manifest(self.dir)
        self._check_files()
        self.shard_rows = [s.rows for s in self.manifest.shards]
        self.blocks = BlockTable.build(self.shard_rows, self.manifest.block_rows)
        # plain lists: the read loop indexes them per block, far faster than numpy scalars
        self.first_block_of_shard: list[int] = self.blocks.first.tolist()
        self.shard_of_block: list[int] = self.blocks.shard.tolist()
        self.start_of_block: list[int] = self.blocks.start.tolist()
        self.length_of_block: list[int] = self.blocks.length.tolist()
        self._layouts: dict[int, ShardLayout] = {}
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def hooks(self) -> dict[str, int]:
        return self.manifest.hooks

    def path(self, shard: int) -> Path:
        return self.dir / self.manifest.shards[shard].file

    def hook_column(self, hook: str | None) -> str:
        """The activation column to read; `hook` may be None when the store holds one hook."""
        hooks = list(self.manifest.hooks)
        if hook is None:
            if len(hooks) > 1:
                raise DataError(
                    f"store {self.dir} holds hooks {', '.join(hooks)}: set data.hook to one"
                )
            hook = hooks[0]
        if hook not in self.manifest.hooks:
            raise DataError(f"store {self.dir} has no hook '{hook}' (it has {', '.join(hooks)})")
        return act_column(hook)

    def row_shape(self, column: str) -> tuple[torch.dtype, tuple[int, ...]]:
        width = self.manifest.column_width(column)
        return self.manifest.column_dtype(column), (() if width is None else (width,))

    def _check_files(self) -> None:
        """Missing or wrong-sized shards are found before any training starts."""
        for record in self.manifest.shards:
            path = self.dir / record.file
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise DataError(f"{path}: shard is missing from the store") from None
            if size != record.bytes:
                what = "truncated" if size < record.bytes else "longer than recorded"
                raise DataError(f"{path}: shard is {what} ({size} bytes, manifest says {record.bytes})")

    # ------------------------------------------------------------------ headers

    def layout(self, shard: int, fd: int) -> ShardLayout:
        with self._lock:
            if shard not in self._layouts:
                self._layouts[shard] = self._read_layout(shard, fd)
            return self._layouts[shard]

    def _read_layout(self, shard: int, fd: int) -> ShardLayout:
        return read_layout(self.manifest, shard, self.path(shard), fd)

    # ------------------------------------------------------------------ reading

    def read_rows(self, column: str, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in stored order, verified (for export, import and benchmarks)."""
        order = EpochOrder(self.blocks.length, seed=0, shuffle=False)
        dtype, shape = self.row_shape(column)
        out = empty_rows(stop - start, shape, dtype)
        with ShardFiles(self) as files:
            files.read(column, order.segments(start, stop - start), out)
        return out


def read_layout(manifest: Manifest, shard: int, path: Path, fd: int) -> ShardLayout:
    """Shard `shard`'s header, checked against its hash and against what the manifest says of
    it: the same columns, each with the manifest's dtype and [rows, d_in] shape. DataError if not."""
    record = manifest.shards[shard]
    raw, header = read_header(fd, path, os.fstat(fd).st_size)
    if header_hash(raw) != record.header_hash:
        raise DataError(f"{path}: shard header does not match its hash (corrupt shard)")
    try:
        meta = json.loads(header["__metadata__"][SHARD_METADATA])
        hashes = meta["block_hashes"]
        if int(meta["block_rows"]) != manifest.block_rows:
            raise ValueError("block_rows differs from the manifest")
        extra = sorted(set(header) - {"__metadata__"} - set(manifest.all_columns()))
        if extra:
            raise ValueError(f"columns {', '.join(extra)} are not in the manifest")
        offsets, decoded = {}, {}
        for column in manifest.all_columns():
            entry = header[column]
            width = manifest.column_width(column)
            dtype, shape = manifest.column_dtype(column), (() if width is None else (width,))
            if entry["dtype"] != safetensors_code(dtype) or entry["shape"] != [record.rows, *shape]:
                raise ValueError(
                    f"column '{column}' is {entry['dtype']} {entry['shape']}, the manifest says "
                    f"{safetensors_code(dtype)} {[record.rows, *shape]}"
                )
            offsets[column] = len(raw) + int(entry["data_offsets"][0])
            decoded[column] = decode_hashes(hashes[column]).tolist()
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: shard does not match the manifest ({error})") from None
    return ShardLayout(offsets, decoded)


def empty_rows(rows: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    nbytes = rows * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _as_rows(np.empty(nbytes, np.uint8), rows, shape, dtype)


def _as_rows(buffer: np.ndarray, rows: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(buffer).view(dtype).view(rows, *shape)


class BatchBuffers:
    """Batch memory recycled once nobody holds it any more.

    Reading into freshly allocated memory runs at half the speed of reading into memory
    already mapped (the kernel faults every page in during the copy), so the stream reuses
    its buffers. A buffer is free when only this list refers to it: a tensor made from it,
    or any view of that tensor, keeps a reference to the array, so a batch the trainer still
    holds is never overwritten. At most `capacity` buffers are kept; beyond that, fresh ones.
    """

    def __init__(self, rows: int, shape: tuple[int, ...], dtype: torch.dtype, capacity: int):
        self.rows, self.shape, self.dtype, self.capacity = rows, shape, dtype, capacity
        self.nbytes = rows * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._buffers: list[np.ndarray] = []

    def take(self) -> Tensor:
        for i in range(len(self._buffers)):
            if sys.getrefcount(self._buffers[i]) == 2:  # the list's reference and the argument
                return _as_rows(self._buffers[i], self.rows, self.shape, self.dtype)
        buffer = np.empty(self.nbytes, np.uint8)
        if len(self._buffers) < self.capacity:
            self._buffers.append(buffer)
        return _as_rows(buffer, self.rows, self.shape, self.dtype)


class ShardFiles:
    """Open shard files for one reader thread, and the verified read of block segments."""

    def __init__(self, store: Store):
        self.store = store
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._scratch = bytearray()

    def __enter__(self) -> ShardFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _fd(self, shard: int) -> int:
        if shard in self._fds:
            self._fds.move_to_end(shard)
            return self._fds[shard]
        try:
            fd = os.open(self.store.path(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise DataError(f"{self.store.path(shard)}: shard is missing from the store") from None
        except OSError as error:
            raise DataError(f"{self.store.path(shard)}: cannot open shard ({error.strerror})") from None
        self._fds[shard] = fd
        if len(self._fds) > OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read(self, column: str, segments: list[tuple[int, int, int]], out: Tensor) -> None:
        """Fill `out` with the rows of `segments`, checking every block read against its hash.

        One block per read call: its hash is then computed while the block is still in the
        CPU cache, which costs less than the saved system calls of merging reads gain."""
        lengths = self.store.length_of_block
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        row_bytes = view.nbytes // out.shape[0] if out.shape[0] else 0
        pos = 0
        for block, lo, hi in segments:
            n = (hi - lo) * row_bytes
            if lo == 0 and hi == lengths[block]:
                self._read_block(column, block, view[pos : pos + n], row_bytes)
            else:  # part of a block: read all of it to check its hash
                part = self._scratch_view(lengths[block] * row_bytes)
                self._read_block(column, block, part, row_bytes)
                view[pos : pos + n] = part[lo * row_bytes : hi * row_bytes]
            pos += n

    def _read_block(self, column: str, block: int, into: memoryview, row_bytes: int) -> None:
        store = self.store
        shard = store.shard_of_block[block]
        fd = self._fd(shard)
        layout = store.layout(shard, fd)
        first_row = store.start_of_block[block]
        try:
            got = os.preadv(fd, [into], layout.offsets[column] + first_row * row_bytes)
        except OSError as error:
            raise DataError(f"{store.path(shard)}: read failed ({error.strerror})") from None
        if got != into.nbytes:
            raise DataError(
                f"{store.path(shard)}: shard is truncated (read {got} of {into.nbytes} bytes)"
            )
        expected = layout.hashes[column][block - store.first_block_of_shard[shard]]
        if xxhash.xxh3_64_intdigest(into) != expected:
            last_row = first_row + into.nbytes // row_bytes - 1
            raise DataError(
                f"{store.path(shard)}: rows {first_row}..{last_row} of '{column}' do not match "
                "their hash (corrupt shard; `sae store verify` checks the whole store)"
            )

    def _scratch_view(self, nbytes: int) -> memoryview:
        if len(self._scratch) < nbytes:
            self._scratch = bytearray(nbytes)
        return memoryview(self._scratch)[:nbytes]


# ---------------------------------------------------------------------------- the stream


def default_partition(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


class StoreStream(BatchStream):
    """Endless [batch_size, d_in] batches of one store column, in the stored dtype; given a
    tuple of columns, endless {column: batch} dicts whose rows are the same rows of each.

    The position is the first row (in the endless sequence of epochs) of the next global batch;
    state_dict() saves it with the seed and the manifest's checksum, so a resumed run reads
    exactly the batches an uninterrupted one would have, and refuses a store that changed.
    """

    def __init__(
        self,
        store: Store,
        column: str | tuple[str, ...],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        buffer_rows: int = 8192,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if store.rows == 0:
            raise DataError(f"store {store.dir} holds no rows")
        self.store, self.column, self.batch_size = store, column, batch_size
        self.columns = (column,) if isinstance(column, str) else tuple(column)
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = default_partition(rank, world_size)
        self.order = EpochOrder(store.blocks.length, seed, shuffle)
        self.ahead = max(1, buffer_rows // batch_size)
        self._buffers = {}
        for c in self.columns:
            dtype, shape = store.row_shape(c)
            self._buffers[c] = BatchBuffers(batch_size, shape, dtype, self.ahead + 3)
        self.position = 0
        self._files = ShardFiles(store)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sae-store-read")
        self._pending: deque[tuple[int, Future[Tensor | dict[str, Tensor]]]] = deque()

    @property
    def step_rows(self) -> int:
        return self.batch_size * self.world_size

    def read_batch(self, position: int) -> Tensor | dict[str, Tensor]:
        """This rank's batch of the global batch that starts at `position`."""
        segments = self.order.segments(position + self.rank * self.batch_size, self.batch_size)
        batch = {}
        for column in self.columns:
            batch[column] = self._buffers[column].take()
            self._files.read(column, segments, batch[column])
        return batch[self.column] if isinstance(self.column, str) else batch

    def __next__(self) -> Tensor | dict[str, Tensor]:  # type: ignore[override]
        next_position = self._pending[-1][0] + self.step_rows if self._pending else self.position
        while len(self._pending) < self.ahead + 1:
            self._pending.append((next_position, self._pool.submit(self.read_batch, next_position)))
            next_position += self.step_rows
        position, future = self._pending.popleft()
        batch = future.result()
        self.position = position + self.step_rows
        return batch

    def state_dict(self) -> dict[str, Any]:
        epoch, row = divmod(self.position, self.order.rows_per_epoch)
        return {
            "epoch": epoch,
            "row": row,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "store": self.store.manifest.checksum,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("store") != self.store.manifest.checksum:
            raise DataError(
                f"store {self.store.dir} changed since this position was saved; "
                "resume with the store the run started on"
            )
        if state["seed"] != self.seed or state["shuffle"] != self.shuffle:
            raise DataError("saved stream position is for a different seed or shuffle setting")
        self._drain()
        self.position = int(state["epoch"]) * self.order.rows_per_epoch + int(state["row"])

    def _drain(self) -> None:
        for _, future in self._pending:
            future.cancel()
        wait([future for _, future in self._pending])
        self._pending.clear()

    def close(self) -> None:
        self._drain()
        self._pool.shutdown(wait=True)
        self._files.close()
