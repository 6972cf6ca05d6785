"""`sae eval SAE --config CONFIG [--out DIR]`: evaluate any SAELens-format SAE like a run does.

SAE is a SAELens folder (ours, one SAELens saved, one downloaded) or a pretrained release
`RELEASE:SAE_ID`. It is evaluated on the config's source, with the config's `eval` section and
seed, so evaluating a run's published folder with the run's config gives the run's metrics:
- data.lm: on the language model at the SAE's hook (its cfg.json hook_name when that is one of
  data.lm.hooks, else the first hook): reconstruction, spliced-in loss, KL, density, and on the
  generated language monosemanticity, probe ceilings and absorption;
- data.toy / data.synthetic (or a store harvested from one): against the true features, plus
  absorption when the source has a hierarchy;
- another store: reconstruction of its rows.
DIR (default evals/<SAE name>) receives metrics.json, report.html and, where they apply,
recovery.json and feature_browser.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.train_and_evaluate import (
    _evaluate_on_source,
    build_ground_truth,
    ground_truth_metrics,
)
from sae.config import Config, to_dict
from sae.errors import ConfigError
from sae.evaluation.external import ExternalSAE, load_external
from sae.evaluation.ground_truth import recovery_profile
from sae.io import atomic_write_json
from sae.report import FEATURE_BROWSER, RECOVERY, build_report
from sae.seeding import derive_seed
from sae.sources.base import ActivationSource, GroundTruthSource

METRICS = "metrics.json"


def default_out_dir(spec: str) -> Path:
    name = Path(spec).name if Path(spec).exists() else spec.replace(":", "__").replace("/", "_")
    return Path("evals") / (name or "sae")


def run_eval(spec: str, cfg: Config, out_dir: Path) -> dict[str, Any]:
    device = _device(cfg)
    sae = load_external(spec, device)
    source, metrics = evaluate_external(cfg, sae, out_dir)
    result = {
        **metrics,
        "sae": spec,
        "arch": sae.arch,
        "d_sae": sae.d_sae,
        "source": source.metadata(),
        "config": to_dict(cfg),
    }
    atomic_write_json(out_dir / METRICS, result)
    report = build_report(out_dir)
    print(f"wrote {out_dir / METRICS} and {report}")
    return result


def evaluate_external(
    cfg: Config, sae: ExternalSAE, out_dir: Path
) -> tuple[ActivationSource, dict[str, Any]]:
    """The metrics of `sae` on cfg's source; side files (recovery, browser) go to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.lm is not None:
        return _on_language_model(cfg, sae, out_dir)
    if cfg.data.store is not None:
        from sae.sources.store import StoreSource

        store = StoreSource(cfg.data)
        truth = store.ground_truth()
        if truth is None:
            _check_width(sae, store.width(cfg.data.hook), "the store's rows")
            return store, _evaluate_on_source(cfg, sae, store, 1.0, cfg.data.hook)  # type: ignore[arg-type]
        return store, _against_truth(cfg, sae, truth, out_dir)
    truth = build_ground_truth(cfg)
    return truth, _against_truth(cfg, sae, truth, out_dir)


def _against_truth(
    cfg: Config, sae: ExternalSAE, truth: GroundTruthSource, out_dir: Path
) -> dict[str, Any]:
    _check_width(sae, truth.d_in, "the ground-truth source's activations")
    metrics = ground_truth_metrics(cfg, sae, truth)
    recovery = recovery_profile(sae.W_dec.detach(), truth.feature_vectors)
    atomic_write_json(out_dir / RECOVERY, recovery)
    return metrics


def _on_language_model(
    cfg: Config, sae: ExternalSAE, out_dir: Path
) -> tuple[ActivationSource, dict[str, Any]]:
    from pipelines.harvest import build_harvest_source
    from sae.evaluation.spliced import evaluate_lm

    assert cfg.data.lm is not None
    hooks = cfg.data.lm.hooks
    hook = sae.hook_name if sae.hook_name in hooks else hooks[0]
    source = build_harvest_source(cfg)
    evaluation = evaluate_lm(
        sae,  # type: ignore[arg-type]
        source,  # type: ignore[arg-type]
        hook,
        cfg.eval,
        derive_seed(cfg.seed, "eval"),
        progress=cfg.logging.progress,
    )
    metrics = {"hook": hook, **evaluation.metrics}
    if source.label_names:  # the generated language: its planted variables are the labels
        from sae.evaluation.probes import probe_ceilings

        metrics.update(
            probe_ceilings(
                sae, source, hook, cfg.eval, derive_seed(cfg.seed, "eval"),
                metrics.get("monosemanticity") or {},
            )
        )  # fmt: skip
    if evaluation.browser is not None:
        atomic_write_json(out_dir / FEATURE_BROWSER, evaluation.browser)
    return source, metrics


def _check_width(sae: ExternalSAE, width: int, what: str) -> None:
    if sae.d_in != width:
        raise ConfigError(f"the SAE reads {sae.d_in} dims but {what} have {width}")


def _device(cfg: Config) -> str:
    """The model's device for a language model (the SAE sits beside it), else train.device."""
    from sae.device import pick_device

    if cfg.data.lm is not None:
        return str(pick_device(cfg.data.lm.device, "data.lm.device"))
    return str(pick_device(cfg.train.device, "train.device"))
