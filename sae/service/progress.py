"""A run's progress from the metrics.jsonl its trainer appends to: step, samples, loss, L0,
explained variance, dead fraction, and an ETA from the pace so far."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sae.service.db import Job

METRICS_LOG = "metrics.jsonl"  # sae/training/training_log.py
METRICS = "metrics.json"
FIELDS = ("step", "samples", "loss", "l0", "explained_variance", "dead_fraction", "sae")


def read_records(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete records from byte `offset` on, and the offset after the last one read: a line
    still being written is left for the next call."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append({k: record[k] for k in FIELDS if k in record})
    return records, offset + end


def last_record(path: Path) -> dict[str, Any] | None:
    """The newest record, reading only the file's tail (listing many jobs stays cheap)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - 4096))
            lines = file.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def progress(job: Job, out_dir: Path, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """{fraction, eta_seconds, and the latest record's fields} for a job."""
    if job.state == "done":
        return {"fraction": 1.0, "eta_seconds": 0.0}
    if job.state != "running":
        return {"fraction": None, "eta_seconds": None}
    record = record or last_record(out_dir / METRICS_LOG)
    total = job.samples
    if not record or not total or not job.started:
        return {"fraction": 0.0, "eta_seconds": None}
    fraction = min(1.0, record.get("samples", 0) / total)
    elapsed = time.time() - job.started
    # the pace since the job started, start-up included: an honest upper bound early on
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
    return {"fraction": fraction, "eta_seconds": eta,
            **{k: record[k] for k in FIELDS if k in record}}  # fmt: skip


def read_metrics(job: Job, out_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json once done (without the config it repeats); for several SAEs,
    {name: metrics}."""
    if job.state != "done":
        return None
    single = out_dir / METRICS
    if single.is_file():
        return _metrics(single)
    found = {p.parent.name: _metrics(p) for p in sorted(out_dir.glob(f"*/{METRICS}"))}
    return found or None


def _metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    metrics.pop("config", None)
    return metrics
