"""`sae publish DIR --to PATH`: a run's trained SAEs as SAELens folders with model cards.

A run directory holds one SAE as DIR/sae/ (written by save_saelens, next to DIR/metrics.json)
or several as DIR/<name>/sae/. Each becomes PATH/<folder>/ = cfg.json, sae_weights.safetensors,
sparsity.safetensors (when the evaluation measured feature densities) and README.md, where the
folder is the SAE's hook for a lone SAE and its name for several. `--to hf://user/repo`
writes the same folders to a temporary directory and uploads them with huggingface_hub.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae.errors import UserError
from sae.io import publish_dir
from sae.paths import plain_name
from sae.publish.card import model_card
from sae.publish.saelens import CFG, SPARSITY, WEIGHTS

README = "README.md"
HUB_PREFIX = "hf://"  # as pipelines/cli.py checks it
METRICS = "metrics.json"


@dataclass
class TrainedSAE:
    folder: str  # the published folder's name
    sae_dir: Path  # a SAELens folder written by save_saelens
    cfg: dict[str, Any]  # its cfg.json
    metrics: dict[str, Any]  # the run's metrics.json for this SAE ({} if none)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return value


def _trained(run_dir: Path, folder: str | None) -> TrainedSAE:
    sae_dir = run_dir / "sae"
    for name in (CFG, WEIGHTS):
        if not (sae_dir / name).is_file():
            raise UserError(f"{sae_dir} has no {name}; the run did not finish its evaluation")
    cfg = _read_json(sae_dir / CFG)
    metrics = _read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    if folder is None:  # a lone SAE is published under its hook
        metadata = cfg.get("metadata")
        folder = (metadata.get("hook_name") if isinstance(metadata, dict) else None) or "sae"
    # the folder becomes --to/<folder>: a name from a file must not climb out of --to
    folder = plain_name(folder, f"{sae_dir / CFG}: the folder name (metadata.hook_name)")
    return TrainedSAE(folder, sae_dir, cfg, metrics)


def find_trained_saes(run_dir: Path) -> list[TrainedSAE]:
    """The SAEs of a run directory (`sae run`, `sae train`, `sae toy`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if (run_dir / "sae").is_dir():
        return [_trained(run_dir, None)]
    found = [
        _trained(child, child.name)
        for child in sorted(run_dir.iterdir())
        if child.is_dir() and not child.name.startswith(".") and (child / "sae").is_dir()
    ]
    if not found:
        raise UserError(
            f"{run_dir} holds no trained SAE (no sae/ or <name>/sae/ folder); "
            "run sae run, sae train or sae toy first"
        )
    return found


def write_folder(trained: TrainedSAE, target: Path) -> Path:
    """PATH/<folder>: the SAELens files and a model card, replacing any previous one whole."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (CFG, WEIGHTS, SPARSITY):
        if (trained.sae_dir / name).is_file():
            shutil.copyfile(trained.sae_dir / name, staging / name)
    card = model_card(trained.folder, trained.cfg, trained.metrics, (staging / SPARSITY).is_file())
    (staging / README).write_text(card)
    publish_dir(staging, target)
    return target


def publish_run(run_dir: Path, to: str | Path, skip_existing: bool = False) -> list[str]:
    """Publish every SAE of `run_dir` to a local folder or `hf://user/repo`; returns where."""
    if str(to).startswith(HUB_PREFIX):
        from sae.publish.hub import hub_token, upload_folders

        repo = str(to).removeprefix(HUB_PREFIX)
        token = hub_token(repo)  # before any work: a missing token is one clear line
        saes = find_trained_saes(run_dir)
        return upload_folders(repo, token, lambda staging: [write_folder(s, staging / s.folder) for s in saes])
    saes = find_trained_saes(run_dir)
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise UserError(f"--to {to} exists and is not a directory")
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for trained in saes:
        target = to / trained.folder
        if not (skip_existing and (target / README).is_file()):
            write_folder(trained, target)
        written.append(str(target))
    return written
