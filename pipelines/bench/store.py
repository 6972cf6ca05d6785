"""`sae bench store DIR`: how fast training batches come out of a store, next to the plain
numpy memmap read of the same bytes, measured in the same run on the same warm files.

Each mode delivers the same number of [batch_size, d_in] batches (every whole batch of one
hook's rows, i.e. an epoch): `memmap` maps the shards with np.memmap and copies the batches
out in stored order, without checks (the ratios are against it); `memmap kept mapped` reuses
maps made in an earlier pass, so no page is faulted in again, shown for context since it
holds the whole store in the process's memory; `store sequential` and `store shuffled` are
the StoreStream that training uses (every block hash-checked, read ahead on a background
thread, memory bounded by the read-ahead), without and with the seeded block shuffle. Modes are interleaved over the repeats; medians are reported. Besides
wall-clock GB/s, GB per CPU-second (all threads of the process) is shown: on a machine shared
with other work it is the steadier measure of the cost of a read.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sae.errors import UserError
from sae.store.reader import ShardFiles, Store, StoreStream
from sae.tables import format_table

MEMMAP = "memmap (numpy, sequential)"
MEMMAP_KEPT = "memmap kept mapped (whole store resident)"


def _warm(store: Store) -> None:
    """Read every shard once so all modes start from the page cache."""
    buffer = memoryview(bytearray(8 << 20))
    for shard in range(len(store.manifest.shards)):
        with open(store.path(shard), "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memmap_reader(
    store: Store, column: str, batch_size: int, n_batches: int, keep_mapped: bool
) -> Callable[[], None]:
    """Copy the column's rows, in stored order, out of np.memmap views into fresh batches.

    A plain read maps the shards for the pass. With `keep_mapped` the maps outlive the pass,
    so after the first one every page is already mapped into the process: faster, but the
    process then holds the whole store in its resident memory, which the store reader must
    not (its memory is bounded by data.buffer_rows)."""
    dtype, shape = store.row_shape(column)
    row_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    offsets = []
    with ShardFiles(store) as files:
        for shard in range(len(store.manifest.shards)):
            offsets.append(store.layout(shard, files._fd(shard)).offsets[column])

    def mapped() -> list[np.ndarray]:
        return [
            np.memmap(store.path(shard), np.uint8, "r", offset, (record.rows * row_bytes,))
            for shard, (record, offset) in enumerate(zip(store.manifest.shards, offsets, strict=True))
        ]

    kept = mapped() if keep_mapped else None
    batch_bytes = batch_size * row_bytes

    def run() -> None:
        views = kept if kept is not None else mapped()
        shard, pos = 0, 0
        for _ in range(n_batches):
            out = np.empty(batch_bytes, np.uint8)
            filled = 0
            while filled < batch_bytes:
                take = min(batch_bytes - filled, len(views[shard]) - pos)
                np.copyto(out[filled : filled + take], views[shard][pos : pos + take])
                filled, pos = filled + take, pos + take
                if pos == len(views[shard]):
                    shard, pos = shard + 1, 0

    return run


def stream_reader(
    store: Store, column: str, batch_size: int, n_batches: int, shuffle: bool
) -> Callable[[], None]:
    def run() -> None:
        stream = StoreStream(store, column, batch_size, seed=0, shuffle=shuffle)
        try:
            for _ in range(n_batches):
                next(stream)
        finally:
            stream.close()

    return run


def run_bench_store(
    store_dir: Path, batch_size: int = 4096, hook: str | None = None, repeats: int = 3
) -> list[dict]:
    store = Store(store_dir)
    column = store.hook_column(hook)
    dtype, shape = store.row_shape(column)
    n_batches = store.rows // batch_size
    if n_batches < 1:
        raise UserError(f"store {store_dir} holds fewer rows than one batch of {batch_size}")
    nbytes = n_batches * batch_size * int(np.prod(shape)) * dtype.itemsize
    available = _available_bytes()
    if available is not None and store.manifest.bytes > available // 2:
        print(f"warning: the store ({store.manifest.bytes / 1e9:.1f} GB) may not stay in the page "
              "cache; figures include disk reads")
    _warm(store)
    modes = {
        MEMMAP: memmap_reader(store, column, batch_size, n_batches, keep_mapped=False),
        MEMMAP_KEPT: memmap_reader(store, column, batch_size, n_batches, keep_mapped=True),
        "store sequential": stream_reader(store, column, batch_size, n_batches, shuffle=False),
        "store shuffled": stream_reader(store, column, batch_size, n_batches, shuffle=True),
    }
    speeds: dict[str, list[float]] = {name: [] for name in modes}
    per_cpu: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, run in modes.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            speeds[name].append(nbytes / (time.perf_counter() - started) / 1e9)
            per_cpu[name].append(nbytes / max(time.process_time() - cpu_started, 1e-9) / 1e9)
    baseline = statistics.median(speeds[MEMMAP])
    cpu_baseline = statistics.median(per_cpu[MEMMAP])
    rows = [
        {
            "read": name,
            "GB/s": statistics.median(speeds[name]),
            "vs memmap": statistics.median(speeds[name]) / baseline,
            "GB/cpu-s": statistics.median(per_cpu[name]),
            "cpu vs memmap": statistics.median(per_cpu[name]) / cpu_baseline,
            "GB/s runs": " ".join(f"{v:.2f}" for v in speeds[name]),
        }
        for name in modes
    ]
    print(
        f"{store_dir}: {n_batches} batches of {batch_size} x {shape[0]} {store.manifest.dtype} "
        f"({nbytes / 1e9:.3f} GB per pass), {repeats} passes each, warm page cache, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cpus"
    )
    print(format_table(rows, list(rows[0])))
    return rows
