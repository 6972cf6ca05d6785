"""What the API and the pages say about a job: its record, progress, metrics and files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sae.service.db import TERMINAL, Job
from sae.service.progress import progress, read_metrics
from sae.service.state import StateDir

SAELENS_FOLDER = "sae"  # pipelines/toy.py: DIR/sae, or DIR/<name>/sae with several SAEs
MAX_ARTIFACTS = 200


class JobViews:
    """Job records as JSON, with each finished job's metrics read once and kept."""

    def __init__(self, state: StateDir):
        self.state = state
        self._metrics: dict[tuple[int, float | None], dict[str, Any] | None] = {}
        self._finished: dict[tuple[int, str, float | None], str] = {}

    def metrics(self, job: Job) -> dict[str, Any] | None:
        if job.state != "done":
            return None
        key = (job.id, job.finished)
        if key not in self._metrics:
            self._metrics[key] = read_metrics(job, self.state.out_dir(job.id))
        return self._metrics[key]

    def summary(self, job: Job) -> dict[str, Any]:
        return {
            **job.summary(),
            "metrics": self.metrics(job),
            "progress": progress(job, self.state.out_dir(job.id)),
        }

    def summary_json(self, job: Job) -> str:
        """summary() as JSON, kept for finished jobs (they no longer change): listing a
        thousand jobs then costs the database query, not a thousand encodings."""
        if job.state not in TERMINAL:
            return json.dumps(self.summary(job))
        key = (job.id, job.state, job.finished)
        if key not in self._finished:
            self._finished[key] = json.dumps(self.summary(job))
        return self._finished[key]

    def listing(self, jobs: list[Job]) -> str:
        return "[" + ",".join(self.summary_json(job) for job in jobs) + "]"

    def detail(self, job: Job) -> dict[str, Any]:
        return {
            **self.summary(job),
            "config": job.config,
            "artifacts": artifacts(self.state.out_dir(job.id)),
            "saelens": saelens_folders(self.state.out_dir(job.id)),
        }


def artifacts(out_dir: Path) -> list[str]:
    """Files of the run (relative paths); the store's shards and wandb's files are not walked
    (thousands of files, read on every poll of a job)."""
    found = []
    for folder, subfolders, files in os.walk(out_dir):
        if folder == str(out_dir):
            subfolders[:] = [d for d in subfolders if d not in ("store", "wandb")]
        subfolders.sort()
        found += [str(Path(folder, name).relative_to(out_dir)) for name in sorted(files)]
        if len(found) >= MAX_ARTIFACTS:
            break
    return found[:MAX_ARTIFACTS]


def saelens_folders(out_dir: Path) -> dict[str, str]:
    """{SAE name: its SAELens folder, relative to the run}; a lone SAE is called "sae"."""
    if (out_dir / SAELENS_FOLDER / "cfg.json").is_file():
        return {"sae": SAELENS_FOLDER}
    return {
        p.parent.parent.name: str(p.parent.relative_to(out_dir))
        for p in sorted(out_dir.glob(f"*/{SAELENS_FOLDER}/cfg.json"))
    }
