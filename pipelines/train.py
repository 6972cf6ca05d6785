"""`sae train`: train an SAE on a store (`data.store`) or a live toy/synthetic source.

Outputs are those of `sae toy`: DIR/sae (SAELens folder), DIR/metrics.json, DIR/metrics.jsonl
and DIR/checkpoint.safetensors, from which the same command resumes. A store harvested from a
ground-truth source is evaluated against that ground truth, rebuilt from the config the
manifest records, so store-trained and live-trained runs report the same metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.train_and_evaluate import (
    SUMMARY_COLUMNS,
    train_and_evaluate,
    train_and_evaluate_many,
)
from sae import distributed
from sae.config import Config
from sae.errors import ConfigError
from sae.output_dir import claim_output_dir
from sae.sources import build_source
from sae.sources.store import StoreSource
from sae.tables import format_table


def run_train(cfg: Config, out_dir: Path) -> dict[str, Any] | list[dict[str, Any]]:
    """The one SAE's results, or with `saes:` each SAE's (written to DIR/<name>/)."""
    with claim_output_dir(out_dir, "train", owner=distributed.world().main):
        return _run_train(cfg, out_dir)


def _run_train(cfg: Config, out_dir: Path) -> dict[str, Any] | list[dict[str, Any]]:
    try:
        source = build_source(cfg.data, cfg.seed)
    except ValueError as error:  # sae_lens validates its own parameters
        raise ConfigError(f"data.{cfg.data.kind}: {error}") from None
    ground_truth = source.ground_truth() if isinstance(source, StoreSource) else None
    if cfg.saes is None:
        results = [train_and_evaluate(cfg, source, out_dir, ground_truth=ground_truth)]
        columns = list(SUMMARY_COLUMNS)
    else:  # several SAEs (hooks, widths, penalties) on every batch read from the source
        results = train_and_evaluate_many(cfg, source, out_dir, ground_truth=ground_truth)
        columns = ["name", *SUMMARY_COLUMNS]
    if distributed.world().main:  # under torchrun, rank 0 reports
        print(format_table(results, [c for c in columns if c in results[0]]))
    return results[0] if cfg.saes is None else results
