"""Build DIR/report.html from whatever a finished run directory holds.

Reads DIR/metrics.json (final metrics), DIR/metrics.jsonl (the training log),
DIR/feature_browser.json (language-model runs) and DIR/recovery.json (ground-truth runs); any of
them may be missing, but a directory with neither metrics file is not a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae.errors import UserError
from sae.io import atomic_write_text
from sae.report.page import RunData, render

REPORT = "report.html"
METRICS = "metrics.json"
TRAINING_LOG = "metrics.jsonl"
FEATURE_BROWSER = "feature_browser.json"  # evaluate_lm(...).browser, written by the pipeline
RECOVERY = "recovery.json"  # ground_truth.recovery_profile(...), written by `sae toy`


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON ({error})") from None


def _read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill mid-write; the trainer drops it on resume too
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_browser(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("latents"), list):
        raise UserError(f"{path} is not a feature-browser file (no 'latents' list)")
    return data


def check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / METRICS).is_file() and not (run_dir / TRAINING_LOG).is_file():
        raise UserError(f"{run_dir} is not a run directory (no {METRICS} or {TRAINING_LOG})")


def load_run(run_dir: Path) -> RunData:
    check_run_dir(run_dir)
    metrics = _read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else None
    if metrics is not None and not isinstance(metrics, dict):
        raise UserError(f"{run_dir / METRICS} does not hold a JSON object")
    log = _read_log(run_dir / TRAINING_LOG) if (run_dir / TRAINING_LOG).is_file() else []
    browser = (
        _read_browser(run_dir / FEATURE_BROWSER) if (run_dir / FEATURE_BROWSER).is_file() else None
    )
    recovery = _read_json(run_dir / RECOVERY) if (run_dir / RECOVERY).is_file() else None
    return RunData(run_dir.resolve().name, metrics, log, browser, recovery)


def build_report(run_dir: Path) -> Path:
    """(Re)write DIR/report.html from the run's files; returns its path."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    try:
        page = render(run)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(
            f"{run_dir}: the run's files are not in the expected format ({type(error).__name__}: "
            f"{error})"
        ) from None
    path = run_dir / REPORT
    atomic_write_text(path, page)
    return path
