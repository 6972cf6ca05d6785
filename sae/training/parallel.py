"""How training spreads over the ranks of a torchrun job.

Data-parallel ("data"): every rank holds every SAE and takes a disjoint slice of each global
batch of train.batch_size rows (rank r the r-th of world_size equal slices, so the global batch
is the single-process one); gradients are averaged over ranks before each step, and every
batch-level statistic (BatchTopK's cutoff, AuxK's residual variance, which latents fired) is
reduced over the whole batch, so all ranks hold identical weights and match a single process
up to float rounding. Throughput grows with ranks at a fixed global batch.

SAE-parallel ("saes", layer-parallel): with several SAEs (hooks of a model's layers, or a
sweep), whole SAEs are dealt round-robin to ranks; each rank reads every batch and trains
only its own, so each ends exactly as in a single process. SAEs per job grow with ranks.

"auto" picks "saes" when there are at least as many SAEs as ranks, else "data".
"""

from __future__ import annotations

from typing import Any

from sae.config import TrainConfig
from sae.distributed import World
from sae.errors import ConfigError
from sae.sources.base import ActivationSource
from sae.streams import BatchStream, Wrapping
from sae.training.schedule import batch_size


def parallel_mode(tc: TrainConfig, n_saes: int, world: World) -> str:
    """"single", "data" or "saes", with the config checked against the world."""
    if not world.distributed:
        return "single"
    mode = tc.parallel
    if mode == "auto":
        mode = "saes" if n_saes >= world.size else "data"
    if mode == "saes" and n_saes < world.size:
        raise ConfigError(
            f"train.parallel is 'saes' but {n_saes} SAE(s) cannot fill {world.size} ranks; "
            "use train.parallel=data or fewer ranks"
        )
    if mode == "data" and batch_size(tc) % world.size:
        raise ConfigError(
            f"train.batch_size {batch_size(tc)} must divide into {world.size} equal rank slices "
            "for data-parallel training"
        )
    return mode


def owned_saes(names: list[str], mode: str, world: World) -> list[str]:
    """The SAEs this rank trains: all of them, or in SAE-parallel mode every world.size-th."""
    if mode != "saes":
        return names
    return [name for i, name in enumerate(names) if i % world.size == world.rank]


def rank_stream(
    source: ActivationSource, batch_size: int, seed: int, hooks: tuple[str, ...], world: World
) -> BatchStream:
    """This rank's slice of each global batch of `batch_size` rows of the source's stream.

    A store reads only the slice (its reader partitions global batches by rank); other
    sources produce the global batch on every rank and each keeps its slice."""
    from sae.sources.store import StoreSource

    local = batch_size // world.size
    if isinstance(source, StoreSource) and not hooks:
        from sae.store.reader import StoreStream

        return StoreStream(
            source.store, source.column, local, seed, source.shuffle, source.buffer_rows,
            rank=world.rank, world_size=world.size,
        )  # fmt: skip
    inner = source.stream_hooks(batch_size, seed, hooks) if hooks else source.stream(batch_size, seed)
    return RankSlice(inner, world.rank, local)


class RankSlice(Wrapping, BatchStream):
    """Rows [rank * rows, (rank + 1) * rows) of every batch of `inner` (tensors or dicts)."""

    def __init__(self, inner: BatchStream, rank: int, rows: int):
        self.inner, self.start, self.stop = inner, rank * rows, (rank + 1) * rows

    def __next__(self) -> Any:
        batch = next(self.inner)
        if isinstance(batch, dict):
            return {hook: rows[self.start : self.stop] for hook, rows in batch.items()}
        return batch[self.start : self.stop]
