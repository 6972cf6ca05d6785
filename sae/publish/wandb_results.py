"""A run's results in its wandb run, next to the training curves: evaluation metrics, the
feature-density histogram, and the SAE folder (with report.html) as a model artifact.

The training loop's run (sae/training/training_log.py) has finished by the time the evaluation is
done, so this resumes it by id; offline (the default without credentials) everything lands in
DIR/wandb and goes up with `wandb sync DIR/wandb` like the training curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from sae.training.training_log import start_wandb

ARTIFACT_TYPE = "model"


def _scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float | int]:
    return {
        prefix + key: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_results(
    run_dir: Path,
    run_id: str | None,
    config: dict[str, Any],
    name: str | None,
    metrics: dict[str, Any],
    log10_density: Tensor | None,
    sae_dir: Path,
    report: Path,
    density_bins: int = 40,
) -> None:
    """Add one SAE's evaluation to the wandb run `run_id` (a new run if None)."""
    import wandb

    project = config.get("logging", {}).get("wandb_project", "sae")
    run = start_wandb(run_dir, config, project, run_id)
    try:
        prefix = "eval/" if name is None else f"eval/{name}/"
        scalars = _scalars(metrics, prefix)
        run.summary.update(scalars)
        logged: dict[str, Any] = dict(scalars)
        if log10_density is not None:
            # SAELens's log_feature_sparsity histogram: dead latents sit at -10
            values = log10_density.float().cpu().numpy()
            logged[prefix + "log10_density"] = wandb.Histogram(values, num_bins=density_bins)
        run.log(logged)
        artifact = wandb.Artifact(
            f"sae-{run.id}" + (f"-{name}" if name else ""), type=ARTIFACT_TYPE, metadata=scalars
        )
        artifact.add_dir(str(sae_dir), name="sae")
        if report.is_file():
            artifact.add_file(str(report), name=report.name)
            run.summary[prefix + "report"] = str(report.resolve())
        run.log_artifact(artifact)
    finally:
        run.finish()
