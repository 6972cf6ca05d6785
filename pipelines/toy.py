"""`sae toy`: ground-truth source -> train -> evaluate against the true features -> SAELens folder.

Writes what pipelines/train_and_evaluate.py describes to DIR (or DIR/<name>/ per SAE of a
`saes:` config). Running the same command again after an interruption resumes from the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.train_and_evaluate import (
    SUMMARY_COLUMNS,
    build_ground_truth,
    train_and_evaluate,
    train_and_evaluate_many,
)
from sae import distributed
from sae.config import Config
from sae.output_dir import claim_output_dir
from sae.tables import format_table


def run_toy(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    with claim_output_dir(out_dir, "toy", owner=distributed.world().main):
        return _run_toy(cfg, out_dir)


def _run_toy(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    source = build_ground_truth(cfg)
    if cfg.saes is None:
        results = [train_and_evaluate(cfg, source, out_dir)]
    else:
        results = train_and_evaluate_many(cfg, source, out_dir)
    if not distributed.world().main:  # under torchrun, rank 0 reports
        return results
    stats = {k: v for k, v in results[0]["source"].items() if isinstance(v, int | float)}
    if stats:
        print("source: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    columns = SUMMARY_COLUMNS if cfg.saes is None else ("name", *SUMMARY_COLUMNS)
    print(format_table(results, columns))
    return results
