"""A harvest split over the ranks of a torchrun job, committing the store a single process
would have written.

Shard i holds rows [i * shard_rows, (i + 1) * shard_rows) of the source's row stream, whoever
writes it. Shards go round-robin to ranks: in each round rank r writes shard `first + r`. Every
rank walks the same stream but only reads the rows of its own shard; the rows of the others it
skips (`HarvestStream.skip_batches`, which spares a language model's forward passes). So every
shard file is byte for byte the file a single-process harvest writes under the same name.

After each round the ranks exchange what they wrote (shard records, as JSON) and rank 0, the
only writer of manifest.json, commits the round's shards in index order in one manifest
replacement, with the source state after the round's last shard: the single-process format.
A killed job leaves a valid store of whole rounds, and the same command (under torchrun with
any number of ranks, or without) continues from it; files of an uncommitted round are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from sae.distributed import World
from sae.errors import DataError
from sae.io import load_state, save_state
from sae.store.format import (
    MANIFEST,
    Manifest,
    ShardRecord,
    dtype_name,
    load_manifest,
    shard_name,
    state_name,
)
from sae.store.writer import (
    StoreWriter,
    _cat,
    _rows,
    batch_columns,
    block_rows_for,
    checked_rows,
    write_shard,
)
from sae.streams import HarvestStream


class RowCursor:
    """A harvest stream addressed by global row: reads any later range of rows, skipping the
    ones before it. `carry` holds rows [position - len(carry), position) already read."""

    def __init__(
        self, stream: HarvestStream, batch_rows: int, dtype: str, committed: int, state: Any
    ):
        self.stream, self.batch_rows, self.dtype = stream, batch_rows, dtype
        self.carry: dict[str, Tensor] = {}
        if state is not None:
            stream.load_state_dict(state["stream"])
            self.carry = state["carry"] or {}
        self.position = committed + _rows(self.carry)
        self.ended = False

    def state(self) -> dict[str, Any]:
        """What a single-process harvest saves after the shard just read."""
        return {"stream": self.stream.state_dict(), "carry": self.carry or None}

    def read(self, start: int, stop: int) -> dict[str, Tensor]:
        """Rows [start, stop), fewer where the source ends. Ranges come in increasing order."""
        begin = self.position - _rows(self.carry)
        if self.carry and begin < start:
            cut = min(start - begin, _rows(self.carry))
            self.carry = {k: v[cut:].contiguous() for k, v in self.carry.items()}
            self.carry = self.carry if _rows(self.carry) else {}
        if not self.carry and self.position < start:
            whole = (start - self.position) // self.batch_rows
            skipped = self.stream.skip_batches(whole) if whole else 0
            self.position += skipped
            if skipped < whole * self.batch_rows:
                self.ended = True
                return {}
        begin = self.position - _rows(self.carry)
        parts = [self.carry] if self.carry else []
        self.carry = {}
        while self.position < stop:
            try:
                batch = next(self.stream)
            except StopIteration:
                self.ended = True
                break
            # the error names rows from this shard's start on as lost, as a single process would
            columns = checked_rows(batch_columns(batch), self.dtype, self.position, start)
            parts.append(columns)
            self.position += _rows(columns)
        if not parts:
            return {}
        joined = _cat(parts)
        lo, hi = start - begin, min(_rows(joined), stop - begin)
        if hi < _rows(joined):
            self.carry = {k: v[hi:].contiguous() for k, v in joined.items()}
        return {k: v[lo:hi].contiguous() for k, v in joined.items()} if hi > lo else {}


def _schema(columns: dict[str, Tensor]) -> dict[str, list[Any]]:
    return {name: [dtype_name(v.dtype), list(v.shape[1:])] for name, v in columns.items()}


def harvest_rows_distributed(
    world: World,
    writer: StoreWriter | None,
    directory: Path,
    stream: HarvestStream,
    rows: int,
    shard_rows: int,
    batch_rows: int,
    dtype: str,
    block_rows: int | None,
    on_commit: Callable[[int], None] | None = None,
) -> Manifest:
    """This rank's part of a harvest into `directory`; rank 0 passes the store's writer (it
    holds the lock and commits), the others None. Every rank returns the final manifest."""
    directory = Path(directory)
    manifest = writer.manifest if writer is not None else _read_manifest(directory)
    state = None
    if manifest is not None and manifest.harvest_state is not None:
        state = load_state(directory / manifest.harvest_state)
    cursor = RowCursor(stream, batch_rows, dtype, manifest.rows if manifest else 0, state)
    first = len(manifest.shards) if manifest else 0
    block_rows = manifest.block_rows if manifest else block_rows
    while first * shard_rows < rows:
        index = first + world.rank
        columns, report = _write_own_shard(cursor, directory, index, shard_rows, rows, dtype, block_rows)
        reports = sorted(world.all_gather_json(report), key=lambda r: r["index"])
        taken, error, ended = _committable(reports)
        if taken:
            block_rows = taken[0]["block_rows"]
        if writer is not None and taken:
            _commit_round(writer, directory, taken, reports, columns)
            if on_commit is not None:
                on_commit(writer.rows)
        if error is not None:
            raise DataError(error)
        first += world.size
        if ended:
            break
    if writer is not None:
        if writer.manifest is None:
            raise DataError("the source produced no rows")
        writer.finish()
    world.barrier()  # every rank returns once the store is complete
    final = _read_manifest(directory)
    if final is None:
        raise DataError("the source produced no rows")
    return final


def _write_own_shard(
    cursor: RowCursor,
    directory: Path,
    index: int,
    shard_rows: int,
    rows: int,
    dtype: str,
    block_rows: int | None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Shard `index`, written but not committed, and the report the other ranks get of it."""
    start, stop = index * shard_rows, min((index + 1) * shard_rows, rows)
    report: dict[str, Any] = {"index": index, "record": None, "ended": True, "error": None}
    if start >= rows or cursor.ended:
        return {}, report
    try:
        columns = cursor.read(start, stop)
    except DataError as error:
        return {}, {**report, "error": str(error)}
    if not columns:
        return {}, report
    size = block_rows or block_rows_for(columns, dtype, None)
    record = write_shard(directory / shard_name(index), columns, size)
    save_state(directory / state_name(index + 1), cursor.state())
    return columns, {
        **report,
        "record": asdict(record),
        "ended": _rows(columns) < stop - start,
        "block_rows": size,
        "schema": _schema(columns),
    }


def _committable(reports: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None, bool]:
    """The round's shards a single-process harvest would have committed, in index order, the
    first error if one stopped it, and whether the harvest ends with this round."""
    taken: list[dict[str, Any]] = []
    for report in reports:
        if report["error"] is not None:
            return taken, report["error"], True
        if report["record"] is None:
            return taken, None, True
        taken.append(report)
        if report["ended"]:
            return taken, None, True
    return taken, None, False


def _commit_round(
    writer: StoreWriter,
    directory: Path,
    taken: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    own_columns: dict[str, Tensor],
) -> None:
    """Rank 0 publishes the round. The round's first shard is rank 0's own: its columns found
    a new store's manifest, and every shard's schema must match it."""
    manifest = writer.manifest or writer.new_manifest(own_columns)
    reference = taken[0]["schema"] if not manifest.shards else _manifest_schema(manifest)
    for report in taken:
        if report["schema"] != reference:
            raise DataError(
                f"the source's columns changed mid-harvest at shard {report['index']}: "
                f"{sorted(report['schema'])} vs {sorted(reference)}"
            )
    records = [ShardRecord(**report["record"]) for report in taken]
    last = taken[-1]["index"]
    writer.publish(manifest, records, state_name(last + 1))
    for report in reports:  # the states after the round's earlier shards are not needed
        if report["record"] is not None and report["index"] != last:
            (directory / state_name(report["index"] + 1)).unlink(missing_ok=True)


def _manifest_schema(manifest: Manifest) -> dict[str, list[Any]]:
    schema = {}
    for name in manifest.all_columns():
        width = manifest.column_width(name)
        schema[name] = [dtype_name(manifest.column_dtype(name)), [] if width is None else [width]]
    return schema


def _read_manifest(directory: Path) -> Manifest | None:
    return load_manifest(directory) if (directory / MANIFEST).exists() else None
