"""`sae run`: harvest -> store -> train -> evaluate -> report -> publish, in one command.

    DIR/store/                    the activation store: every hook the SAEs read, harvested
                                  in one forward pass per batch
    DIR/checkpoint.safetensors    the training state of every SAE (DIR/metrics.jsonl: the log)
    DIR/metrics.json, sae/, feature_browser.json, report.html
                                  one SAE's evaluation; with several SAEs, under DIR/<name>/
    DIR/published/<folder>/       SAELens folders with a model card (`sae publish`): the folder
                                  is the hook for one SAE, the SAE's name for several

Several SAEs (`saes:`, or `sae:` with several `data.lm.hooks`, which trains that SAE on each
hook) train in one process from one store, every batch read once for all of them.

Running the same command again continues where it stopped: a stage whose committed output
exists is skipped (a complete store manifest, an SAE's metrics.json, its report.html, its
published folder); a store part-way harvested and a training run part-way through continue from
their last commit, and end exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.harvest import build_harvest_source, check_harvest, run_harvest
from pipelines.train_and_evaluate import SUMMARY_COLUMNS
from sae import distributed
from sae.config import Config, DataConfig, to_dict, validate_tree
from sae.errors import ConfigError
from sae.output_dir import claim_output_dir
from sae.publish.release import publish_run
from sae.report import REPORT, build_report
from sae.sources.base import ActivationSource
from sae.tables import format_table
from sae.training.checkpoint import check_resumable

STORE = "store"
PUBLISHED = "published"
METRICS = "metrics.json"
LM_COLUMNS = (
    "name", "hook", "arch", "d_sae", "l0", "explained_variance", "ce_loss_recovered",
    "kl_divergence", "dead_latents", "monosemanticity_mean_f1", "seconds",
)  # fmt: skip


def resolve_config(cfg: Config) -> Config:
    """Name every SAE and put it on a hook, so that each stage (and a resumed run) agrees on
    which SAEs there are; `sae:` with several hooks becomes one SAE per hook."""
    if cfg.data.kind == "store":
        raise ConfigError(
            "sae run harvests its own store: give data.lm, data.toy or data.synthetic "
            "(to train on an existing store, use sae train)"
        )
    if cfg.data.lm is None:
        return cfg
    hooks = cfg.data.lm.hooks
    tree = to_dict(cfg)
    if cfg.saes is None and len(hooks) == 1:
        return cfg
    if cfg.saes is None:
        entries = [{**tree["sae"], "name": hook, "hook": hook} for hook in hooks]
    else:
        entries = [{**entry, "hook": entry["hook"] or hooks[0]} for entry in tree["saes"]]
    for i, entry in enumerate(entries):
        if entry["hook"] not in hooks:
            raise ConfigError(
                f"saes[{i}].hook '{entry['hook']}' is not one of data.lm.hooks ({', '.join(hooks)})"
            )
    tree.pop("sae")
    tree["saes"] = entries
    return validate_tree(tree)


def sae_dirs(cfg: Config, out_dir: Path) -> dict[str, Path]:
    """Where each SAE's evaluation goes: DIR for a lone SAE, DIR/<name> for several."""
    if cfg.saes is None:
        return {"sae": out_dir}
    return {entry.name: out_dir / entry.name for entry in cfg.saes}  # type: ignore[misc]


def run_pipeline(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    """Every stage not yet done; checks the config against what DIR holds before any work."""
    cfg = resolve_config(cfg)
    with claim_output_dir(out_dir, "run", owner=distributed.world().main):
        return _run_pipeline(cfg, out_dir)


def _run_pipeline(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    store_dir = out_dir / STORE
    existing = check_harvest(cfg, store_dir)
    check_resumable(cfg, out_dir)
    dirs = sae_dirs(cfg, out_dir)
    pending = [name for name, d in dirs.items() if not (d / METRICS).is_file()]
    live: ActivationSource | None = None
    # the model is loaded (once) only when a stage needs it: harvest, or evaluation on it
    if existing is None or not existing.complete or (pending and cfg.data.lm is not None):
        live = build_harvest_source(cfg)
    run_harvest(cfg, store_dir, source=live)
    world = distributed.world()
    if pending:
        _train_and_evaluate(cfg, out_dir, dirs, pending, live)
    elif world.main:
        # Every SAE is evaluated, so its training is finished: a finished run builds no SAE
        # and no trainer (its Adam alone imports torch._dynamo, ~2 s of a ~6 s no-op rerun).
        for directory in dirs.values():
            print(f"{directory / METRICS}: already evaluated")
    world.barrier()
    if not world.main:  # rank 0 reports and publishes
        return []
    for directory in dirs.values():
        if not (directory / REPORT).is_file():  # killed between metrics.json and the report
            build_report(directory)
    published = publish_run(out_dir, out_dir / PUBLISHED, skip_existing=True)

    results = [_read_json(d / METRICS) for d in dirs.values()]
    columns = LM_COLUMNS if cfg.data.lm is not None else ("name", *SUMMARY_COLUMNS)
    print(format_table(results, [c for c in columns if c in results[0]]))
    print(f"report: {', '.join(str(d / REPORT) for d in dirs.values())}")
    print(f"published: {', '.join(str(p) for p in published)}")
    return results


def _train_and_evaluate(
    cfg: Config,
    out_dir: Path,
    dirs: dict[str, Path],
    pending: list[str],
    live: ActivationSource | None,
) -> None:
    """Train every SAE (or continue from the checkpoint) and evaluate those not yet evaluated."""
    from pipelines.train_and_evaluate import evaluate_and_export, split_training_log
    from sae.models import build_sae
    from sae.sources.store import StoreSource
    from sae.training.trainer import Trainer

    hooks = cfg.data.lm.hooks if cfg.data.lm is not None else []
    store_dir = out_dir / STORE
    store = StoreSource(DataConfig(store=store_dir, hook=hooks[0] if len(hooks) == 1 else None))
    saes = {e.name: build_sae(e, store.width(e.hook), cfg.seed) for e in cfg.sae_entries()}
    trainer = Trainer(cfg, saes, store, out_dir)
    trainer.fit()

    lm = live if cfg.data.lm is not None else None
    ground_truth = store.ground_truth()
    for name, sae in saes.items():
        if not trainer.publishes(name):  # under torchrun, another rank evaluates it
            continue
        if name not in pending:
            print(f"{dirs[name] / METRICS}: already evaluated")
            continue
        if cfg.saes is not None:
            split_training_log(out_dir, name)
        evaluate_and_export(
            cfg,
            store,
            trainer,
            sae,
            dirs[name],
            None if cfg.saes is None else name,
            ground_truth=ground_truth,
            lm=lm,  # type: ignore[arg-type]
        )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
