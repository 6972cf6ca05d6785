"""`sae harvest`: an activation source's rows -> a sharded store on disk.

Running the same command again after an interruption continues from the last committed shard;
on a finished store it does nothing. The result is the same, byte for byte, either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae import distributed
from sae.config import Config, to_dict
from sae.errors import ConfigError
from sae.progress import progress_bar, stage
from sae.seeding import derive_seed
from sae.sources import build_source
from sae.sources.base import ActivationSource, GroundTruthSource
from sae.store.format import Manifest
from sae.store.parallel import harvest_rows_distributed
from sae.store.writer import StoreWriter, existing_store, harvest_rows


def source_identity(cfg: Config) -> dict[str, Any]:
    """What must match for a harvest to continue a store: the source's config and seed."""
    kind = cfg.data.kind
    if kind == "store":
        raise ConfigError("sae harvest needs an activation source in data (not data.store)")
    return {"kind": kind, "seed": cfg.seed, "data": {kind: to_dict(cfg.data)[kind]}}


def describe_source(source: ActivationSource) -> dict[str, Any]:
    """Manifest fields learnt from the built source: model, dataset, its own statistics."""
    metadata = source.metadata()  # keys as in SAELens's metadata where they exist
    description = {
        "model": metadata.get("model_name", metadata.get("kind")),
        "dataset": metadata.get("dataset_path"),
        "context_size": metadata.get("context_size"),
        "metadata": metadata,
    }
    if isinstance(source, GroundTruthSource):
        from sae.sources.store import feature_hash

        description["feature_hash"] = feature_hash(source)
    return description


def harvest_settings(cfg: Config) -> dict[str, Any]:
    return to_dict(cfg.harvest)


def build_harvest_source(cfg: Config) -> ActivationSource:
    try:
        return build_source(cfg.data, cfg.seed)
    except ValueError as error:  # sae_lens validates its own parameters
        raise ConfigError(f"data.{cfg.data.kind}: {error}") from None


def check_harvest(cfg: Config, out_dir: Path) -> Manifest | None:
    """Validate before any heavy work: the existing store, if any, must be this harvest's."""
    return existing_store(out_dir, source_identity(cfg), harvest_settings(cfg))


def run_harvest(cfg: Config, out_dir: Path, source: ActivationSource | None = None) -> Manifest:
    """Harvest `cfg.data` into `out_dir`; under torchrun, each rank writes its share of the
    shards (sae/store/parallel.py) and the store is the one a single process writes.
    `source`: cfg.data's source, already built (`sae run` evaluates on the same model)."""
    world = distributed.world()
    existing = check_harvest(cfg, out_dir)
    if existing is not None and existing.complete:
        if world.main:
            print(f"{out_dir}: store already complete ({existing.rows} rows); nothing to do")
        return existing
    hc = cfg.harvest
    if source is None:
        source = build_harvest_source(cfg)
    writer = None
    if world.main:  # only rank 0 locks the store, clears uncommitted files and commits
        writer = StoreWriter(
            out_dir, source_identity(cfg), harvest_settings(cfg), hc.dtype, hc.block_rows
        )
        writer.describe(describe_source(source))
    world.barrier()
    try:
        manifest = _harvest(cfg, out_dir, source, writer, world)
    finally:
        if writer is not None:
            writer.close()
    if not world.main:
        return manifest
    if manifest.rows < hc.rows:
        print(f"the source ended after {manifest.rows} rows (harvest.rows is {hc.rows})")
    print(
        f"{out_dir}: {manifest.rows} rows in {len(manifest.shards)} shards "
        f"({manifest.bytes / 1e9:.3f} GB, {manifest.dtype}), hooks "
        + ", ".join(f"{h} [{d}]" for h, d in manifest.hooks.items())
    )
    return manifest


def _harvest(
    cfg: Config,
    out_dir: Path,
    source: ActivationSource,
    writer: StoreWriter | None,
    world: distributed.World,
) -> Manifest:
    hc = cfg.harvest
    shown = cfg.logging.progress and world.main
    desc = "harvest" + (f" x{world.size} ranks" if world.distributed else "")
    initial = writer.rows if writer else 0
    with stage(f"{desc} ({hc.rows - initial:,} rows)", shown):
        bar = progress_bar(hc.rows, desc, "row", shown, initial, unit_scale=True)
        return _harvest_rows(cfg, out_dir, source, writer, world, bar)


def _harvest_rows(
    cfg: Config,
    out_dir: Path,
    source: ActivationSource,
    writer: StoreWriter | None,
    world: distributed.World,
    bar: Any,
) -> Manifest:
    hc = cfg.harvest
    stream = source.harvest_stream(hc.batch_rows, derive_seed(cfg.seed, "harvest"))
    try:
        if world.distributed:
            return harvest_rows_distributed(
                world, writer, out_dir, stream, hc.rows, hc.shard_rows, hc.batch_rows,
                hc.dtype, hc.block_rows, on_commit=lambda rows: bar.update(rows - bar.n),
            )  # fmt: skip
        assert writer is not None
        return harvest_rows(
            writer, stream, hc.rows, hc.shard_rows, on_commit=lambda rows: bar.update(rows - bar.n)
        )
    finally:
        stream.close()
        bar.close()
