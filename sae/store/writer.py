"""Writing a store: shards appended one atomic commit at a time, resumable after any kill.

A commit is: the shard written to a temporary file, fsynced and renamed into place; the state
of the source after that shard saved the same way; then manifest.json replaced, the single
step that makes both visible. A process killed at any instant leaves either the old manifest
(the new shard and state are uncommitted leftovers, removed on the next start) or the new one.
Started again, the harvest restores the source's state and continues, so the finished store
holds exactly the rows of an uninterrupted run, shard files byte for byte.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from sae.errors import DataError, UserError
from sae.io import atomic_write, fsync_dir, load_state, save_state, write_failure
from sae.store.format import (
    ACTS,
    FORMAT,
    LABELS,
    LOCK,
    MANIFEST,
    META_COLUMNS,
    SHARD_METADATA,
    STATE_PREFIX,
    STORE_DTYPES,
    VERSION,
    Manifest,
    ShardRecord,
    auto_block_rows,
    block_hashes,
    dtype_name,
    encode_hashes,
    file_hash,
    header_hash,
    load_manifest,
    shard_name,
    state_name,
)
from sae.streams import HarvestBatch, HarvestStream

# Our temporary files (sae.io.atomic_write), the lock, shards and states; and safetensors' own
# temporary file (".tmp" and 6 characters), which its save_file writes beside the target before
# renaming it, and a SIGKILL at that moment leaves behind.
_OWN_FILES = re.compile(
    rf"^(\..*\.tmp-\d+|\.tmp[0-9A-Za-z]{{6}}|{re.escape(LOCK)}|(shard-|{STATE_PREFIX})\d+\.safetensors)$"
)


# ---------------------------------------------------------------------------- batches as columns


def batch_columns(batch: HarvestBatch) -> dict[str, Tensor]:
    """A harvest batch as named [rows, ...] tensors, the way a shard stores them."""
    columns = {f"{ACTS}{hook}": acts for hook, acts in batch.activations.items()}
    for name in META_COLUMNS:
        value = getattr(batch, name)
        if value is not None:
            columns[name] = value
    columns.update({f"{LABELS}{name}": value for name, value in batch.labels.items()})
    return columns


def columns_batch(columns: dict[str, Tensor]) -> HarvestBatch:
    return HarvestBatch(
        activations={k.removeprefix(ACTS): v for k, v in columns.items() if k.startswith(ACTS)},
        token_ids=columns.get("token_ids"),
        positions=columns.get("positions"),
        doc_ids=columns.get("doc_ids"),
        labels={k.removeprefix(LABELS): v for k, v in columns.items() if k.startswith(LABELS)},
    )


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _rows(columns: dict[str, Tensor]) -> int:
    return next(iter(columns.values())).shape[0] if columns else 0


# ---------------------------------------------------------------------------- the writer


class StoreWriter:
    """Appends shards to one store directory. Only one writer at a time (a file lock).

    `identity` (the source's kind, config and seed) and `harvest` (the harvest settings) must
    match a store already in the directory; `describe()` adds what is learnt from the built
    source (model, dataset, statistics) before the first commit.
    """

    def __init__(
        self,
        directory: Path,
        identity: dict[str, Any],
        harvest: dict[str, Any],
        dtype: str,
        block_rows: int | None,
    ):
        self.dir = Path(directory)
        self.dtype, self.requested_block_rows = dtype, block_rows
        self.identity, self.harvest = identity, harvest
        self.description: dict[str, Any] = {}
        _refuse_foreign(self.dir)  # before anything is written or deleted there
        self._created = not self.dir.exists()
        _make_dir(self.dir)
        self._lock = _lock(self.dir)
        self.manifest = existing_store(self.dir, identity, harvest)
        self._remove_uncommitted()

    def describe(self, description: dict[str, Any]) -> None:
        self.description = description

    @property
    def rows(self) -> int:
        return self.manifest.rows if self.manifest else 0

    @property
    def complete(self) -> bool:
        return bool(self.manifest and self.manifest.complete)

    def resume_state(self) -> dict[str, Any] | None:
        """The source's state after the last committed shard (None for a new store)."""
        if self.manifest is None or self.manifest.harvest_state is None:
            return None
        return load_state(self.dir / self.manifest.harvest_state)

    def check_rows(self, columns: dict[str, Tensor], first_row: int) -> dict[str, Tensor]:
        """Cast activations to the store's dtype and refuse non-finite rows (before any write)."""
        return checked_rows(columns, self.dtype, first_row, self.rows)

    def commit(self, columns: dict[str, Tensor], source_state: dict[str, Any]) -> None:
        """Durably append one shard and the source state after it; then publish both."""
        manifest = self.manifest or self.new_manifest(columns)
        _check_schema(manifest, columns)
        index = len(manifest.shards)
        path = self.dir / shard_name(index)
        try:
            record = write_shard(path, columns, manifest.block_rows)
            state_file = state_name(index + 1)
            save_state(self.dir / state_file, source_state)
        except (OSError, SafetensorError) as error:
            raise _write_error(error, path, manifest) from None
        self.publish(manifest, [record], state_file)

    def publish(self, manifest: Manifest, records: list[ShardRecord], state_file: str) -> None:
        """Make shards already written in place (and the state after the last) part of the
        store: one manifest replacement. Other processes may have written them."""
        previous = manifest.harvest_state
        manifest.shards.extend(records)
        manifest.harvest_state = state_file
        try:
            manifest.save(self.dir)
        except OSError as error:
            del manifest.shards[len(manifest.shards) - len(records) :]
            manifest.harvest_state = previous
            raise _write_error(error, self.dir / MANIFEST, manifest) from None
        except BaseException:
            del manifest.shards[len(manifest.shards) - len(records) :]
            manifest.harvest_state = previous
            raise
        self.manifest = manifest
        if previous is not None:
            (self.dir / previous).unlink(missing_ok=True)

    def finish(self) -> Manifest:
        assert self.manifest is not None, "finish() after at least one commit"
        if not self.manifest.complete:
            self.manifest.complete = True
            try:
                self.manifest.save(self.dir)
            except OSError as error:
                raise _write_error(error, self.dir / MANIFEST, self.manifest) from None
        return self.manifest

    def close(self) -> None:
        """Release the lock; a writer that committed nothing takes its lock file (and the
        directory it created) away again, so a failed start leaves no lone store/.lock."""
        if self.manifest is None and not any(p.name != LOCK for p in self.dir.iterdir()):
            (self.dir / LOCK).unlink(missing_ok=True)
            if self._created:
                self.dir.rmdir()
        self._lock.close()

    # ------------------------------------------------------------------ helpers

    def new_manifest(self, columns: dict[str, Tensor]) -> Manifest:
        hooks = {k.removeprefix(ACTS): v.shape[1] for k, v in columns.items() if k.startswith(ACTS)}
        if not hooks:
            raise DataError("the source produced no activations")
        return Manifest(
            dtype=self.dtype,
            block_rows=block_rows_for(columns, self.dtype, self.requested_block_rows),
            hooks=hooks,
            columns={k: dtype_name(v.dtype) for k, v in columns.items() if not k.startswith(ACTS)},
            source={**self.identity, **self.description},
            harvest=self.harvest,
        )

    def _remove_uncommitted(self) -> None:
        """Delete what a killed writer left behind: temporary files, unlisted shards and states.
        Only files named as this writer names them; with no manifest, only next to its lock
        (_refuse_foreign checked that before anything was written)."""
        keep = {MANIFEST, LOCK}
        if self.manifest is not None:
            keep |= {s.file for s in self.manifest.shards}
            keep.add(self.manifest.harvest_state or "")
        for entry in self.dir.iterdir():
            if entry.name not in keep and _OWN_FILES.match(entry.name) and entry.is_file():
                entry.unlink()
        fsync_dir(self.dir)


def _refuse_foreign(directory: Path) -> None:
    """A directory without a manifest may hold only what a killed writer of ours left (its
    lock, temporary files, uncommitted shards and states); files named like ours count as
    ours only next to that lock. Anything else is the user's: refuse, deleting nothing."""
    if not directory.is_dir() or (directory / MANIFEST).exists():
        return
    entries = [entry.name for entry in directory.iterdir()]
    ours = LOCK in entries
    foreign = sorted(n for n in entries if not (ours and _OWN_FILES.match(n)))
    if foreign:
        raise UserError(
            f"--out {directory} is not empty and holds no store ({MANIFEST}); "
            f"refusing to write next to {', '.join(foreign[:3])}"
        )


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe.tmp-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write the store at {directory}: {error.strerror}") from None


def _lock(directory: Path) -> Any:
    handle = open(directory / LOCK, "w")  # noqa: SIM115 (held until close())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another process is writing the store {directory}") from None
    return handle


def existing_store(
    directory: Path, identity: dict[str, Any], harvest: dict[str, Any]
) -> Manifest | None:
    """The manifest of a store already at `directory` made by the same harvest, else None.
    Raises UserError if it holds a different harvest's store. Reads only."""
    if not (Path(directory) / MANIFEST).exists():
        return None
    manifest = load_manifest(directory)
    # the recorded source also holds a description of the built source: compare only identity
    sections = (
        ("source", identity, manifest.source, sorted(identity)),
        ("harvest", harvest, manifest.harvest, sorted(set(harvest) | set(manifest.harvest))),
    )
    for section, mine, theirs, keys in sections:
        for key in keys:
            if mine.get(key) != theirs.get(key):
                raise UserError(
                    f"{directory} holds a store from a different harvest ('{section}.{key}' "
                    "differs); use a new --out directory or the original config"
                )
    return manifest


def checked_rows(
    columns: dict[str, Tensor], dtype: str, first_row: int, committed_rows: int
) -> dict[str, Tensor]:
    """Activations cast to the store's dtype, all on the CPU; DataError at a non-finite row.
    `first_row` is the global index of the first row, `committed_rows` what the store keeps."""
    store_dtype = STORE_DTYPES[dtype]
    checked = {}
    for name, value in columns.items():
        if name.startswith(ACTS):
            stored = value.detach().to("cpu", store_dtype).contiguous()
            # A sum is non-finite whenever a value is (or, rarely, when it overflows): one
            # reduction, several times faster than a boolean pass; the exact check follows.
            if not bool(torch.isfinite(stored.sum(dtype=torch.float32))) and not bool(
                torch.isfinite(stored).all()
            ):
                bad = ~torch.isfinite(stored).all(dim=-1)
                row = first_row + int(bad.nonzero()[0, 0])
                overflow = bool(torch.isfinite(value[bad]).all())
                why = f"overflow to inf in {dtype}" if overflow else "NaN or inf values"
                raise DataError(
                    f"harvest row {row} of hook '{name.removeprefix(ACTS)}' has {why}; "
                    f"nothing after row {committed_rows} was written"
                )
            checked[name] = stored
        else:
            checked[name] = value.detach().cpu().contiguous()
    return checked


def block_rows_for(columns: dict[str, Tensor], dtype: str, requested: int | None) -> int:
    """The store's block size: as requested, else from its widest activation row."""
    widths = [v.shape[1] for k, v in columns.items() if k.startswith(ACTS)]
    return requested or auto_block_rows(max(widths) * STORE_DTYPES[dtype].itemsize)


def _check_schema(manifest: Manifest, columns: dict[str, Tensor]) -> None:
    expected = set(manifest.all_columns())
    if set(columns) != expected:
        raise DataError(
            f"the source's columns changed mid-harvest: {sorted(columns)} vs {sorted(expected)}"
        )
    for name, value in columns.items():
        width = manifest.column_width(name)
        if width is not None and (value.ndim != 2 or value.shape[1] != width):
            raise DataError(f"column '{name}' has shape {tuple(value.shape)}, expected [rows, {width}]")
        if width is None and value.ndim != 1:
            raise DataError(f"column '{name}' has shape {tuple(value.shape)}, expected [rows]")
        if width is None and dtype_name(value.dtype) != manifest.columns[name]:
            raise DataError(f"column '{name}' changed dtype to {value.dtype} mid-harvest")


def write_shard(path: Path, columns: dict[str, Tensor], block_rows: int) -> ShardRecord:
    hashes = {}
    for name, value in columns.items():
        data = memoryview(value.view(torch.uint8).numpy()).cast("B")
        row_bytes = value[0].numel() * value.element_size() if value.shape[0] else 0
        hashes[name] = encode_hashes(block_hashes(data, block_rows * row_bytes))
    # one metadata entry: safetensors writes several in a random order, and shards must be
    # byte-identical from run to run
    details = {"format": FORMAT, "version": VERSION, "block_rows": block_rows, "block_hashes": hashes}
    metadata = {SHARD_METADATA: json.dumps(details, sort_keys=True)}
    facts: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        save_file(columns, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # safetensors creates files readable by their owner only
        with open(tmp, "rb") as handle:
            prefix = handle.read(8)
            head = prefix + handle.read(int.from_bytes(prefix, "little"))
        facts.update(hash=file_hash(tmp), header_hash=header_hash(head), bytes=tmp.stat().st_size)

    atomic_write(path, write)
    return ShardRecord(file=path.name, rows=_rows(columns), **facts)


def _write_error(error: OSError | SafetensorError, path: Path, manifest: Manifest) -> UserError:
    return UserError(
        f"cannot write {path}: {write_failure(error)}; the store keeps its "
        f"{len(manifest.shards)} committed shards ({manifest.rows} rows) and the same command "
        "continues from there"
    )


# ---------------------------------------------------------------------------- the harvest loop


def harvest_rows(
    writer: StoreWriter,
    stream: HarvestStream,
    rows: int,
    shard_rows: int,
    on_commit: Callable[[int], None] | None = None,
) -> Manifest:
    """Pull batches from `stream` into shards of `shard_rows` until the store holds `rows`, or
    the source ends (a finite dataset): then the store is complete with the rows there were.

    Rows a batch brings beyond a shard boundary are carried into the next shard and saved with
    the source's state, so shard boundaries never depend on the source's batch size.
    """
    carry: dict[str, Tensor] = {}
    state = writer.resume_state()
    if state is not None:
        stream.load_state_dict(state["stream"])
        carry = state["carry"] or {}
    ended = False
    while writer.rows < rows and not ended:
        want = min(shard_rows, rows - writer.rows)
        parts = [carry] if carry else []
        have = _rows(carry)
        while have < want:
            try:
                batch = next(stream)
            except StopIteration:
                ended = True
                break
            columns = writer.check_rows(batch_columns(batch), writer.rows + have)
            parts.append(columns)
            have += _rows(columns)
        if have == 0:
            break
        joined = _cat(parts)
        shard = {k: v[:want].contiguous() for k, v in joined.items()}
        carry = {k: v[want:].contiguous() for k, v in joined.items()} if have > want else {}
        writer.commit(shard, {"stream": stream.state_dict(), "carry": carry or None})
        if on_commit is not None:
            on_commit(writer.rows)
    if writer.manifest is None:
        raise DataError("the source produced no rows")
    return writer.finish()


@contextmanager
def open_writer(*args: Any, **kwargs: Any) -> Iterator[StoreWriter]:
    writer = StoreWriter(*args, **kwargs)
    try:
        yield writer
    finally:
        writer.close()
