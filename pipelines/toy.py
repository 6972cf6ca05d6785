"""`sae toy`: ground-truth source -> train -> evaluate against the true features -> SAELens folder.

Writes DIR/metrics.json (every ground-truth metric, timing, the resolved config, the source's
own statistics), DIR/sae/ (SAELens format), DIR/metrics.jsonl, DIR/checkpoint.safetensors,
DIR/recovery.json (each true feature's and latent's best match) and DIR/report.html.
Running the same command again after an interruption resumes from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae.config import Config, to_dict
from sae.errors import ConfigError
from sae.evaluation.ground_truth import evaluate_ground_truth, recovery_profile
from sae.io import atomic_write_json
from sae.models import SparseAutoencoder, build_sae
from sae.publish.saelens import save_saelens
from sae.report import RECOVERY, build_report
from sae.seeding import derive_seed
from sae.sources import build_source
from sae.sources.base import GroundTruthSource
from sae.tables import format_table
from sae.training.trainer import Trainer

SUMMARY_COLUMNS = (
    "arch", "mcc", "f1", "precision", "recall", "frac_recovered_90", "l0", "true_l0",
    "explained_variance", "dead_latents", "seconds",
)


def build_ground_truth(cfg: Config) -> GroundTruthSource:
    if cfg.data.kind not in ("toy", "synthetic"):
        raise ConfigError(f"sae toy needs data.toy or data.synthetic, not data.{cfg.data.kind}")
    try:
        source = build_source(cfg.data, cfg.seed)
    except ValueError as error:  # sae_lens validates its own parameters
        raise ConfigError(f"data.{cfg.data.kind}: {error}") from None
    assert isinstance(source, GroundTruthSource)
    return source


def train_and_evaluate(
    cfg: Config, source: GroundTruthSource, out_dir: Path, sae: SparseAutoencoder | None = None
) -> dict[str, Any]:
    sae = sae or build_sae(cfg.sae, source.d_in, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, sae, source, out_dir)
    summary = trainer.fit()
    sae.fit_inference(trainer.fresh_batches(cfg.eval.threshold_batches, "inference-fit"))
    metrics = evaluate_ground_truth(
        sae,
        source,
        samples=cfg.eval.samples,
        batch_size=cfg.eval.batch_size,
        seed=derive_seed(cfg.seed, "eval"),
        input_scale=summary.input_scale,
    )
    save_saelens(sae, summary.input_scale, out_dir / "sae", metadata={"source": cfg.data.kind})
    result = {
        **metrics.to_dict(),
        "arch": cfg.sae.arch,
        "seconds": summary.seconds,
        "samples": summary.samples,
        "samples_per_second": summary.samples_per_second,
        "source": source.metadata(),
        "config": to_dict(cfg),
    }
    atomic_write_json(out_dir / "metrics.json", result)
    recovery = recovery_profile(sae.W_dec.detach(), source.feature_vectors)
    atomic_write_json(out_dir / RECOVERY, recovery)
    build_report(out_dir)
    return result


def run_toy(cfg: Config, out_dir: Path) -> dict[str, Any]:
    source = build_ground_truth(cfg)
    result = train_and_evaluate(cfg, source, out_dir)
    stats = {k: v for k, v in result["source"].items() if isinstance(v, int | float)}
    if stats:
        print("source: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    print(format_table([result], SUMMARY_COLUMNS))
    return result
