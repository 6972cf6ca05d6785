"""Where training metrics go: DIR/metrics.jsonl always, wandb unless turned off.

wandb runs offline unless credentials (WANDB_API_KEY) are present, so nothing touches the
network by default; offline runs can be uploaded later with `wandb sync DIR/wandb`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from sae.errors import UserError
from sae.io import fsync_dir, write_failure

METRICS_LOG = "metrics.jsonl"


class TrainingLog:
    def __init__(
        self,
        out_dir: Path,
        config: dict[str, Any],
        use_wandb: bool,
        project: str,
        run_id: str | None,
        resume_step: int,
    ):
        self.path = out_dir / METRICS_LOG
        _drop_records_after(self.path, resume_step)
        self.file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self.run = None
        self.run_id = run_id
        if use_wandb:
            self.run = start_wandb(out_dir, config, project, run_id)
            self.run_id = self.run.id

    def log(self, record: dict[str, Any]) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as error:
            raise UserError(
                f"cannot write {self.path}: {write_failure(error)}; the last checkpoint is kept "
                "and the same command continues from it"
            ) from None
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def sync(self) -> None:
        """Make the records so far durable (called at checkpoints)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: log() or the checkpoint said so
            self.file.close()
        if self.run is not None:
            self.run.finish()
            self.run = None


def _drop_records_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint; forget what they logged before."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
    path.write_text("".join(line + "\n" for line in kept))
    fsync_dir(path.parent)


def start_wandb(out_dir: Path, config: dict[str, Any], project: str, run_id: str | None) -> Any:
    import wandb

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=project,
        dir=str(out_dir),
        config=config,
        id=run_id,
        resume="allow" if run_id else None,
        mode=mode,
        settings=wandb.Settings(silent=True, console="off"),
    )
