"""Reading a store: the seeded order, rank partitions, exact resume, bounded memory."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae.config import DataConfig
from sae.errors import DataError
from sae.sources.store import StoreSource
from sae.store.order import BlockTable, EpochOrder
from sae.store.reader import Store, StoreStream
from tests.store_helpers import harvest_counting

shard_rows = st.lists(st.integers(1, 40), min_size=1, max_size=6)


def _epoch_rows(rows: list[int], block_rows: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    table = BlockTable.build(rows, block_rows)
    order = EpochOrder(table.length, seed, shuffle)
    total = sum(rows)
    return table.global_rows(order.segments(epoch * total, total), rows)


@settings(max_examples=60, deadline=None)
@given(shard_rows, st.integers(1, 9), st.integers(-(2**40), 2**40), st.integers(0, 5), st.booleans())
def test_each_epoch_visits_every_row_exactly_once(rows, block_rows, seed, epoch, shuffle) -> None:
    order = _epoch_rows(rows, block_rows, seed, epoch, shuffle)
    assert sorted(order.tolist()) == list(range(sum(rows)))
    again = _epoch_rows(rows, block_rows, seed, epoch, shuffle)
    assert np.array_equal(order, again), "a pure function of (manifest, seed, epoch)"


def test_epochs_and_seeds_change_the_order_but_shuffling_crosses_shards() -> None:
    rows = [500] * 8
    a = _epoch_rows(rows, 10, seed=0, epoch=0, shuffle=True)
    assert not np.array_equal(a, _epoch_rows(rows, 10, seed=0, epoch=1, shuffle=True))
    assert not np.array_equal(a, _epoch_rows(rows, 10, seed=1, epoch=0, shuffle=True))
    first_batch_shards = set((a[:400] // 500).tolist())
    assert len(first_batch_shards) == 8, "a batch mixes rows of every shard"
    assert np.array_equal(_epoch_rows(rows, 10, 0, 0, shuffle=False), np.arange(4000))


@settings(max_examples=60, deadline=None)
@given(shard_rows, st.integers(1, 9), st.integers(1, 17), st.integers(1, 4), st.integers(0, 3))
def test_rank_partitions_are_disjoint_and_complete(rows, block_rows, batch, world, seed) -> None:
    table = BlockTable.build(rows, block_rows)
    order = EpochOrder(table.length, seed, True)
    total = sum(rows)
    steps = -(-2 * total // (batch * world))  # enough global batches to cover two epochs
    per_rank = [
        np.concatenate(
            [
                table.global_rows(order.segments(step * batch * world + rank * batch, batch), rows)
                for step in range(steps)
            ]
        )
        for rank in range(world)
    ]
    # interleaving the ranks' batches gives back the single-process sequence: no row is
    # read by two ranks, none is skipped
    together = np.concatenate(
        [per_rank[r][s * batch : (s + 1) * batch] for s in range(steps) for r in range(world)]
    )
    single = table.global_rows(order.segments(0, steps * batch * world), rows)
    assert np.array_equal(together, single)
    for epoch in range(2):
        assert sorted(single[epoch * total : (epoch + 1) * total].tolist()) == list(range(total))


@pytest.fixture(scope="module")
def counting_store(tmp_path_factory) -> Path:
    # 5000 rows in shards of 1000, blocks of 64: a last short block in every shard
    return harvest_counting(tmp_path_factory.mktemp("read") / "store")


def _row_ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].long().tolist()


def test_ranks_read_disjoint_rows_that_cover_the_store(counting_store) -> None:
    store = Store(counting_store)
    seen = []
    for rank in range(3):
        stream = StoreStream(store, "acts/resid", 100, seed=5, rank=rank, world_size=3)
        seen += [row for _ in range(16) for row in _row_ids(next(stream))]  # 4800 rows
        stream.close()
    assert len(seen) == len(set(seen)) == 4800
    assert set(seen) <= set(range(5000))


def test_rows_are_what_the_order_names(counting_store) -> None:
    store = Store(counting_store)
    stream = StoreStream(store, "acts/resid", 300, seed=3)
    expected = store.blocks.global_rows(stream.order.segments(0, 300 * 40), store.shard_rows)
    got = [row for _ in range(40) for row in _row_ids(next(stream))]
    stream.close()
    assert got == expected.tolist()  # 12000 rows: more than two epochs, across boundaries


@pytest.mark.parametrize("cut", [0, 1, 16, 17, 33])  # 16.7 batches per epoch
def test_state_dict_resumes_on_exactly_the_next_batch(counting_store, cut) -> None:
    store = Store(counting_store)
    straight = StoreStream(store, "acts/resid", 300, seed=9)
    reference = [next(straight) for _ in range(cut + 5)]
    straight.close()
    first = StoreStream(store, "acts/resid", 300, seed=9)
    for _ in range(cut):
        next(first)
    state = first.state_dict()
    first.close()
    resumed = StoreStream(Store(counting_store), "acts/resid", 300, seed=9)
    resumed.load_state_dict(state)
    for batch in reference[cut:]:
        assert torch.equal(next(resumed), batch)
    resumed.close()


def test_state_of_a_changed_store_is_refused(counting_store, tmp_path) -> None:
    stream = StoreStream(Store(counting_store), "acts/resid", 100, seed=0)
    next(stream)
    state = stream.state_dict()
    stream.close()
    other = StoreStream(Store(harvest_counting(tmp_path / "other", rows=4000)), "acts/resid", 100, 0)
    with pytest.raises(DataError, match="changed since"):
        other.load_state_dict(state)
    other.close()


def test_read_ahead_is_bounded_by_buffer_rows(counting_store) -> None:
    stream = StoreStream(Store(counting_store), "acts/resid", 100, seed=0, buffer_rows=300)
    requested = []
    read = stream.read_batch
    stream.read_batch = lambda position: (requested.append(position), read(position))[1]
    for _ in range(30):
        next(stream)
        ahead = (max(requested) - stream.position) // 100 + 1
        assert ahead <= 3, "never more than buffer_rows rows read ahead"
    buffers = stream._buffers["acts/resid"]
    assert len(buffers._buffers) <= buffers.capacity
    stream.close()


def test_batches_held_by_the_caller_are_never_overwritten(counting_store) -> None:
    stream = StoreStream(Store(counting_store), "acts/resid", 100, seed=0, buffer_rows=100)
    held = [next(stream) for _ in range(30)]
    copies = [b.clone() for b in held]
    for _ in range(30):
        next(stream)
    assert all(torch.equal(a, b) for a, b in zip(held, copies, strict=True))
    stream.close()


def test_store_source_picks_the_hook_or_asks_for_one(counting_store) -> None:
    with pytest.raises(DataError, match="holds hooks resid, mlp: set data.hook"):
        StoreSource(DataConfig(store=counting_store)).stream(50, seed=0)
    with pytest.raises(DataError, match="no hook 'attn'"):
        StoreSource(DataConfig(store=counting_store, hook="attn"))
    source = StoreSource(DataConfig(store=counting_store, hook="mlp"))
    assert source.d_in == 4
    stream = source.stream(50, seed=0)
    batch = next(stream)
    stream.close()
    assert batch.shape == (50, 4) and (batch[:, 0] <= 0).all()  # mlp rows are -r + 0.25 j
    assert torch.equal(batch[:, 1], batch[:, 0] + 0.25)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_stores_stream_their_own_dtype(tmp_path, dtype) -> None:
    store = Store(harvest_counting(tmp_path / "s", rows=2000, dtype=dtype))
    stream = StoreStream(store, "acts/resid", 64, seed=0, shuffle=False)
    batch = next(stream)
    stream.close()
    assert batch.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert torch.equal(batch[:, 0].float(), torch.arange(64).float())


def test_an_incomplete_store_is_not_trained_on(tmp_path) -> None:
    out = tmp_path / "s"

    def stop(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest_counting(out, on_commit=stop)
    with pytest.raises(DataError, match="incomplete.*1000 of 5000 rows"):
        StoreSource(DataConfig(store=out, hook="resid"))


def test_bench_store_reports_each_read_next_to_memmap(counting_store, capsys) -> None:
    from pipelines.bench.store import MEMMAP, MEMMAP_KEPT, run_bench_store

    rows = run_bench_store(counting_store, batch_size=256, hook="resid", repeats=1)
    assert [r["read"] for r in rows] == [MEMMAP, MEMMAP_KEPT, "store sequential", "store shuffled"]
    assert all(r["GB/s"] > 0 and r["GB/cpu-s"] > 0 for r in rows)
    assert rows[0]["vs memmap"] == 1.0
    assert "store shuffled" in capsys.readouterr().out


def test_rank_and_world_size_default_to_torch_distributed(counting_store, monkeypatch) -> None:
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    stream = StoreStream(Store(counting_store), "acts/resid", 100, seed=5)
    assert (stream.rank, stream.world_size) == (2, 3)
    alone = StoreStream(Store(counting_store), "acts/resid", 100, seed=5, rank=2, world_size=3)
    assert torch.equal(next(stream), next(alone))
    stream.close()
    alone.close()


def test_several_hooks_stream_the_same_rows_and_resume_together(counting_store) -> None:
    source = StoreSource(DataConfig(store=counting_store))
    assert source.hook_names == ("resid", "mlp") and source.width("mlp") == 4
    stream = source.stream_hooks(100, seed=3, hooks=("resid", "mlp"))
    for _ in range(7):
        next(stream)
    state = stream.state_dict()
    rest = [next(stream) for _ in range(5)]
    stream.close()
    for batch in rest:
        assert torch.equal(batch["mlp"][:, 0], -batch["resid"][:, 0]), "rows aligned across hooks"
    resumed = source.stream_hooks(100, seed=3, hooks=("resid", "mlp"))
    resumed.load_state_dict(state)
    again = [next(resumed) for _ in range(5)]
    resumed.close()
    assert all(torch.equal(a[h], b[h]) for a, b in zip(rest, again, strict=True) for h in a)
    one = source.stream_hooks(100, seed=3, hooks=("mlp",))
    assert set(next(one)) == {"mlp"}
    one.close()
