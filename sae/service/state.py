"""The state directory: SQLite database, a lock held by the one live server, one folder per job.

    STATE/serve.db          the job table (db.py)
    STATE/serve.lock        flock'ed by the running server; a second one refuses to start
    STATE/jobs/<id>/        the job's --out directory (run outputs, checkpoint, metrics)
    STATE/jobs/<id>.yaml    the job's config, as validated at submit time
    STATE/jobs/<id>.log     the job's stdout and stderr
    STATE/published/        where `publish` may write local folders
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from sae.errors import UserError


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "serve.db"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def published(self) -> Path:
        return self.root / "published"

    def out_dir(self, job_id: int) -> Path:
        return self.jobs / str(job_id)

    def config_file(self, job_id: int) -> Path:
        return self.jobs / f"{job_id}.yaml"

    def log_file(self, job_id: int) -> Path:
        return self.jobs / f"{job_id}.log"

    def create(self) -> StateDir:
        for path in (self.root, self.jobs, self.published):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def inside(self, path: Path, what: str) -> Path:
        """`path` (relative paths are taken from the state directory) resolved, or a UserError
        when it leads outside the state directory, through `..` or a symlink."""
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise UserError(f"{what} '{path}' is outside the state directory")
        return resolved


def lock_state(state: StateDir) -> int:
    """Hold STATE/serve.lock for this process's life. The kernel drops an flock when its holder
    dies, even by SIGKILL, so a crashed server never leaves a stale lock; the descriptor is not
    inherited by jobs (Python opens files close-on-exec), so an orphaned job cannot hold it."""
    fd = os.open(state.root / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"another sae serve is already running on state directory {state.root}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
