"""Worker threads: each takes the oldest queued job, runs its command, records how it ended.

The database is the only coordination: `claim` moves one job from queued to running in one
transaction, so two workers never take the same job, and a cancel is a state change the
worker notices between polls. At startup, `recover` stops whatever a crashed server left
running and queues those jobs again; their commands resume from the last checkpoint.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sae.errors import first_line
from sae.service.command import job_command
from sae.service.db import Job, JobStore
from sae.service.runners import Runner
from sae.service.state import StateDir

POLL_SECONDS = 0.25
ERROR_PREFIX = "sae: error: "


def failure_line(log: Path) -> str:
    """The CLI's one-line error from a failed job's log, else its last line."""
    try:
        with open(log, "rb") as file:
            file.seek(max(0, file.seek(0, 2) - 16_384))
            lines = [line.strip() for line in file.read().decode(errors="replace").splitlines()]
    except OSError as error:
        return first_line(error)
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    chosen = errors[-1].removeprefix(ERROR_PREFIX) if errors else (lines[-1] if lines else "")
    return chosen[:500] or "the job exited with an error"


class Workers:
    def __init__(self, store: JobStore, state: StateDir, runner: Runner, count: int):
        self.store, self.state, self.runner = store, state, runner
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, name=f"sae-worker-{i}", daemon=True)
            for i in range(count)
        ]

    def recover(self) -> list[int]:
        """Jobs a crashed server left running: their processes stopped, the jobs queued again."""
        orphans = self.store.list(state="running")
        for job in orphans:
            self.runner.stop_orphan(job)
            self.store.requeue(job.id)
        return [job.id for job in orphans]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Stop every running job and queue it again (it resumes at the next start)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim()
            if job is None:
                self.stopping.wait(POLL_SECONDS)
                continue
            self.run(job)

    def run(self, job: Job) -> None:
        config = self.state.config_file(job.id)
        config.write_text(job.config)
        log = self.state.log_file(job.id)
        command = job_command(job.kind, config, self.state.out_dir(job.id), job.nproc)
        with open(log, "a") as file:
            file.write(f"== attempt {job.attempts}: sae {job.kind} (nproc {job.nproc})\n")
        try:
            launched = self.runner.launch(command, self.state.root, log)
        except (OSError, RuntimeError) as error:
            self.store.finish(job.id, "failed", None, f"could not start: {first_line(error)}")
            return
        self.store.set_process(job.id, launched.pid, launched.pid_start, launched.executor_id)
        while (code := launched.poll()) is None:
            if self.stopping.wait(POLL_SECONDS):
                launched.stop()
                self.store.requeue(job.id)
                return
            current = self.store.get(job.id)
            if current is None or current.state != "running":  # cancelled
                launched.stop()
                return
        error = None if code == 0 else failure_line(log)
        self.store.finish(job.id, "done" if code == 0 else "failed", code, error)
