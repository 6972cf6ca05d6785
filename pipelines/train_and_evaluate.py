"""The steps every pipeline shares: train one SAE or several on a source, evaluate each against
what is known (true features, the language model, or fresh rows), export it in SAELens's format
and write its metrics.json and report.

A trained SAE's directory holds metrics.json (every metric, timing, the resolved config, the
source's own statistics), sae/ (SAELens format), metrics.jsonl, recovery.json (ground truth:
each true feature's and latent's best match) and report.html. A `saes:` config trains its SAEs
together and writes each one's outputs to DIR/<name>/.
"""


from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sae.config import Config, to_dict
from sae.errors import ConfigError
from sae.evaluation.ground_truth import (
    GroundTruthMetrics,
    evaluate_ground_truth,
    recovery_profile,
)
from sae.evaluation.reconstruction import Dictionary, ReconstructionStats, reconstruction_stats
from sae.io import atomic_write_json, atomic_write_text
from sae.models import SparseAutoencoder, build_sae
from sae.progress import stage
from sae.publish.saelens import save_saelens
from sae.report import FEATURE_BROWSER, RECOVERY, REPORT, build_report
from sae.report.build import TRAINING_LOG
from sae.seeding import derive_seed
from sae.sources import build_source
from sae.sources.base import ActivationSource, GroundTruthSource
from sae.training.trainer import Trainer

if TYPE_CHECKING:
    from sae.sources.model_activations import LMSource

# keys of a source's metadata() that SAELens's cfg.json metadata shares
SAELENS_METADATA = ("hook_name", "model_name", "dataset_path", "context_size", "prepend_bos")
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
    cfg: Config,
    source: ActivationSource,
    out_dir: Path,
    sae: SparseAutoencoder | None = None,
    ground_truth: GroundTruthSource | None = None,
    on_step: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    """Train on `source`; evaluate against `ground_truth` (by default the source itself when it
    has known features), else by reconstruction on further batches of the source. `on_step`:
    see Trainer."""
    sae = sae or build_sae(cfg.sae, source.d_in, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, sae, source, out_dir, on_step=on_step)
    trainer.fit()
    result = None
    if trainer.publishes("sae"):
        result = evaluate_and_export(
            cfg, source, trainer, sae, out_dir, ground_truth=ground_truth, lm=_live_lm(source)
        )
    # under torchrun every rank returns rank 0's result (once it is written)
    return next(r for r in trainer.world.all_gather_json(result) if r is not None)


def train_and_evaluate_many(
    cfg: Config,
    source: ActivationSource,
    out_dir: Path,
    ground_truth: GroundTruthSource | None = None,
) -> list[dict[str, Any]]:
    """The SAEs of a `saes:` config, trained together on shared batches; each one's results
    go to out_dir/<name>/, the shared checkpoint and training log to out_dir."""
    saes = {
        entry.name: build_sae(entry, source.width(entry.hook), cfg.seed)
        for entry in cfg.sae_entries()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, saes, source, out_dir)
    trainer.fit()
    results = []
    for name, sae in saes.items():
        if not trainer.publishes(name):  # another rank trained it (torchrun)
            continue
        (out_dir / name).mkdir(exist_ok=True)
        split_training_log(out_dir, name)
        result = evaluate_and_export(
            cfg, source, trainer, sae, out_dir / name, name, ground_truth, _live_lm(source)
        )
        results.append({"name": name, **result})
    everyone = [r for part in trainer.world.all_gather_json(results) for r in part]
    return sorted(everyone, key=lambda r: list(saes).index(r["name"]))


def _live_lm(source: ActivationSource) -> LMSource | None:
    """A language model trained on live (`sae train` with data.lm) is evaluated as `sae run`
    evaluates it: spliced-in loss, densities, feature browser."""
    from sae.sources.model_activations import LMSource

    return source if isinstance(source, LMSource) else None


def evaluate_and_export(
    cfg: Config,
    source: ActivationSource,
    trainer: Trainer,
    sae: SparseAutoencoder,
    out_dir: Path,
    name: str | None = None,
    ground_truth: GroundTruthSource | None = None,
    lm: LMSource | None = None,
) -> dict[str, Any]:
    """Evaluate one trained SAE and write out_dir/sae (SAELens), metrics.json and report.html.

    Against `ground_truth` when there is one; on the language model `lm` (spliced-in loss,
    monosemanticity, feature browser) when given; else by reconstruction of fresh rows.
    metrics.json is written after everything but the report, so it marks a finished evaluation.
    """
    with stage(f"evaluate {name or 'sae'}", cfg.logging.progress):
        return _evaluate_and_export(cfg, source, trainer, sae, out_dir, name, ground_truth, lm)


def _evaluate_and_export(
    cfg: Config,
    source: ActivationSource,
    trainer: Trainer,
    sae: SparseAutoencoder,
    out_dir: Path,
    name: str | None,
    ground_truth: GroundTruthSource | None,
    lm: LMSource | None,
) -> dict[str, Any]:
    if ground_truth is None and isinstance(source, GroundTruthSource):
        ground_truth = source
    summary = trainer.summary(name)
    hook = next((e.hook for e in cfg.sae_entries() if e.name == name), None)
    sae.fit_inference(trainer.fresh_batches(cfg.eval.threshold_batches, "inference-fit", name))
    log10_density = None
    if lm is not None:
        from sae.evaluation.spliced import evaluate_lm

        evaluation = evaluate_lm(
            sae,
            lm,
            hook or lm.hook_names[0],
            cfg.eval,
            derive_seed(cfg.seed, "eval"),
            summary.input_scale,
            progress=cfg.logging.progress,
        )
        metrics, log10_density = evaluation.metrics, evaluation.log10_density
        if lm.label_names:  # the generated language: its planted variables are the labels
            from sae.evaluation.probes import probe_ceilings

            metrics.update(
                probe_ceilings(
                    sae, lm, hook or lm.hook_names[0], cfg.eval, derive_seed(cfg.seed, "eval"),
                    metrics.get("monosemanticity") or {}, summary.input_scale,
                )
            )  # fmt: skip
        if evaluation.browser is not None:
            atomic_write_json(out_dir / FEATURE_BROWSER, evaluation.browser)
    elif ground_truth is not None:
        truth = ground_truth_evaluation(cfg, sae, ground_truth, summary.input_scale)
        log10_density = truth.log10_density
        metrics = with_absorption(cfg, sae, ground_truth, summary.input_scale, truth.to_dict())
    else:
        stats = _evaluate_on_source(cfg, sae, source, summary.input_scale, hook)
        metrics, log10_density = stats.summary(), stats.log10_density()
    description = source.metadata()
    save_saelens(
        sae,
        summary.input_scale,
        out_dir / "sae",
        metadata=_saelens_metadata(cfg, description, hook),
        log10_density=log10_density,
    )
    result = {
        **metrics,
        **({"name": name, "hook": hook} if hook else {}),
        "arch": sae.cfg.arch,
        "d_sae": sae.d_sae,
        "seconds": summary.seconds,
        "samples": summary.samples,
        "samples_per_second": summary.samples_per_second,
        "source": description,
        "config": to_dict(cfg),
    }
    atomic_write_json(out_dir / "metrics.json", result)
    if ground_truth is not None:
        recovery = recovery_profile(sae.W_dec.detach(), ground_truth.feature_vectors)
        atomic_write_json(out_dir / RECOVERY, recovery)
    build_report(out_dir)
    if cfg.logging.wandb and trainer.world.main:  # rank 0 owns the wandb run
        from sae.publish.wandb_results import log_results

        log_results(
            trainer.out_dir, trainer.run_id, result["config"], name, metrics, log10_density,
            out_dir / "sae", out_dir / REPORT, cfg.eval.density_bins,
        )  # fmt: skip
    return result


def ground_truth_evaluation(
    cfg: Config, sae: Dictionary, truth: GroundTruthSource, input_scale: float = 1.0
) -> GroundTruthMetrics:
    """The config's ground-truth evaluation: eval.samples fresh rows drawn on the eval seed, so
    every dictionary scored with one config sees the same rows."""
    return evaluate_ground_truth(
        sae,
        truth,
        samples=cfg.eval.samples,
        batch_size=cfg.eval.batch_size,
        seed=derive_seed(cfg.seed, "eval"),
        input_scale=input_scale,
    )


def ground_truth_metrics(
    cfg: Config, sae: Dictionary, truth: GroundTruthSource, input_scale: float = 1.0
) -> dict[str, Any]:
    """The config's ground-truth metrics (`ground_truth_evaluation`); with a hierarchy, also
    absorption (sae/evaluation/absorption.py) on the same rows."""
    metrics = ground_truth_evaluation(cfg, sae, truth, input_scale).to_dict()
    return with_absorption(cfg, sae, truth, input_scale, metrics)


def with_absorption(
    cfg: Config,
    sae: Dictionary,
    truth: GroundTruthSource,
    input_scale: float,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """`metrics` plus absorption_rate and the per-parent table when `truth` has a hierarchy."""
    from sae.evaluation.absorption import hierarchy_absorption, hierarchy_of

    hierarchy = hierarchy_of(truth)
    if hierarchy:  # a synthetic source with parent and child features
        seed = derive_seed(cfg.seed, "eval")
        absorption = hierarchy_absorption(
            sae, truth, hierarchy, cfg.eval.samples, cfg.eval.batch_size, seed, input_scale
        ).to_dict()
        metrics["absorption_rate"] = absorption.pop("absorption_rate")
        metrics["absorption"] = absorption
    return metrics


def _evaluate_on_source(
    cfg: Config,
    sae: SparseAutoencoder,
    source: ActivationSource,
    input_scale: float,
    hook: str | None = None,
) -> ReconstructionStats:
    """No ground truth: reconstruction statistics on eval.samples rows of the SAE's hook, drawn
    with another seed."""
    seed = derive_seed(cfg.seed, "eval")
    if hook is None:
        stream = source.stream(cfg.eval.batch_size, seed)
    else:
        stream = source.stream_hooks(cfg.eval.batch_size, seed, (hook,))
    try:
        n_batches = -(-cfg.eval.samples // cfg.eval.batch_size)
        batches = (_rows(next(stream), hook) for _ in range(n_batches))
        return reconstruction_stats(sae, batches, input_scale)
    finally:
        stream.close()


def _rows(batch: Tensor | dict[str, Tensor], hook: str | None) -> Tensor:
    return batch if isinstance(batch, Tensor) else batch[hook]


def _saelens_metadata(
    cfg: Config, description: dict[str, Any], hook: str | None = None
) -> dict[str, Any]:
    """SAELens's metadata keys, from what the source says about itself.

    Without hook_name SAELens's run_with_saes skips the SAE ("No hook found for None") and
    returns the clean loss, so a lone SAE on a one-hook source takes that hook's name."""
    found = {k: description[k] for k in SAELENS_METADATA if description.get(k) is not None}
    hooks = list(description.get("hooks") or ())
    if hook is None and "hook_name" not in found and len(hooks) == 1:
        hook = hooks[0]
    if hook is not None:
        found["hook_name"] = hook
    return {"source": cfg.data.kind, **found}


def split_training_log(out_dir: Path, name: str) -> None:
    """Copy SAE `name`'s records of the shared training log (out_dir/metrics.jsonl) to
    out_dir/<name>/metrics.jsonl, so its own report draws its training curves."""
    shared = out_dir / TRAINING_LOG
    if not shared.is_file():
        return
    records = []
    for line in shared.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill mid-write
        if isinstance(record, dict) and record.get("sae") == name:
            records.append(json.dumps(record) + "\n")
    (out_dir / name).mkdir(exist_ok=True)
    atomic_write_text(out_dir / name / TRAINING_LOG, "".join(records))
