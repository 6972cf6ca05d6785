"""The job table in SQLite: what was submitted, its state, and the process running it.

One connection in WAL mode, shared by the API's threads and the workers under a lock; every
state change is one short transaction, so a server killed at any moment leaves each job in
exactly one committed state. A job's config text lives here (its YAML file is rewritten from
it before every launch), so the database alone says what each job is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KINDS = ("run", "toy", "train", "harvest")
STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    nproc INTEGER NOT NULL DEFAULT 1,
    sweep INTEGER,
    params TEXT NOT NULL DEFAULT '{}',
    samples INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_start TEXT,
    executor_id TEXT,
    exit_code INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
"""
SUMMARY_COLUMNS = (
    "id, kind, state, nproc, sweep, params, samples, created, started, finished, attempts, pid,"
    " pid_start, executor_id, exit_code, error"
)


@dataclass(frozen=True)
class NewJob:
    """A validated submission: config text, the values a sweep chose, samples to train on."""

    config: str
    params: dict[str, Any]
    samples: int | None


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: str
    config: str
    nproc: int
    sweep: int | None
    params: dict[str, Any]
    samples: int | None  # what the job trains on (train.samples), for progress; None: harvest
    created: float
    started: float | None
    finished: float | None
    attempts: int
    pid: int | None
    pid_start: str | None
    executor_id: str | None
    exit_code: int | None
    error: str | None

    def summary(self) -> dict[str, Any]:
        """The fields a listing shows (no config text)."""
        fields = asdict(self)
        fields.pop("config")
        fields.pop("pid_start")
        return fields


def _job(row: sqlite3.Row) -> Job:
    fields = dict(row)
    fields["params"] = json.loads(fields["params"])
    return Job(**fields)


class JobStore:
    def __init__(self, path: Path):
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) where a read decides a write
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed state survives power loss
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.version = 0  # counts this store's commits: a reader's cache key

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.version += 1

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # ------------------------------------------------------------------ submit and read

    def add(self, kind: str, jobs: list[NewJob], nproc: int = 1, sweep: bool = False) -> list[int]:
        """Queue the jobs, all or none; a sweep's jobs share the first one's id as sweep id."""
        now = time.time()
        ids: list[int] = []
        with self._transaction() as db:
            for job in jobs:
                cursor = db.execute(
                    "INSERT INTO jobs (kind, state, config, nproc, params, samples, created)"
                    " VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                    (kind, job.config, nproc, json.dumps(job.params), job.samples, now),
                )
                ids.append(int(cursor.lastrowid))  # type: ignore[arg-type]
            if sweep:
                db.execute(
                    f"UPDATE jobs SET sweep = ? WHERE id IN ({','.join('?' * len(ids))})",
                    (ids[0], *ids),
                )
        return ids

    def get(self, job_id: int) -> Job | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(
        self, state: str | None = None, kind: str | None = None, sweep: int | None = None,
        ids: list[int] | None = None, limit: int | None = None, config: bool = True,
    ) -> list[Job]:
        """Newest first, filtered by whatever is given; `config=False` leaves the config text
        out (a listing does not show it, and it is most of a row)."""
        where, args = [], []
        for column, value in (("state", state), ("kind", kind), ("sweep", sweep)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
            args.extend(ids)
        columns = "*" if config else f"{SUMMARY_COLUMNS}, '' AS config"
        sql = f"SELECT {columns} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit else "")
        with self.lock:
            rows = self.db.execute(sql, (*args, limit) if limit else args).fetchall()
        return [_job(row) for row in rows]

    # ------------------------------------------------------------------ state changes

    def claim(self) -> Job | None:
        """The oldest queued job, now running (attempt counted), or None."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, finished = NULL,"
                " attempts = attempts + 1, pid = NULL, pid_start = NULL, executor_id = NULL,"
                " exit_code = NULL, error = NULL WHERE id = ?",
                (time.time(), row["id"]),
            )
        return self.get(row["id"])

    def set_process(
        self, job_id: int, pid: int | None, pid_start: str | None, executor_id: str | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, pid_start = ?, executor_id = ? WHERE id = ?",
                (pid, pid_start, executor_id, job_id),
            )

    def finish(self, job_id: int, state: str, exit_code: int | None, error: str | None) -> bool:
        """Record how a running job ended; False (and no change) if it is no longer running,
        e.g. cancelled while its process was stopping."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, finished = ?, exit_code = ?, error = ?"
                " WHERE id = ? AND state = 'running'",
                (state, time.time(), exit_code, error, job_id),
            )
        return cursor.rowcount == 1

    def cancel(self, job_id: int) -> Job | None:
        """A queued or running job becomes cancelled; the worker of a running one stops its
        process when it sees the state. Finished jobs are left as they are."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?"
                " WHERE id = ? AND state IN ('queued', 'running')",
                (time.time(), job_id),
            )
        return self.get(job_id)

    def retry(self, job_id: int) -> Job | None:
        """A failed or cancelled job is queued again, into the same directory, so it resumes
        from its last checkpoint."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', finished = NULL"
                " WHERE id = ? AND state IN ('failed', 'cancelled')",
                (job_id,),
            )
        return self.get(job_id)

    def requeue(self, job_id: int) -> None:
        """A job a crashed server left running goes back to the head of its place in line."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", (job_id,)
            )
