"""How a job's command runs: a local process group, or a submitit job (Slurm, or submitit's
local executor, which tests use in place of a cluster).

A runner launches a command and answers `poll()` (the exit code once finished) and `stop()`;
`stop_orphan(job)` makes sure that whatever a crashed server left running for a job is gone
before the job is launched again, so a job never runs twice at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sae.service import processes
from sae.service.db import Job

TOKEN_ENV = "SAE_SERVE_TOKEN"


def child_env() -> dict[str, str]:
    """The server's environment without its token (a job has no use for it, and its logs are
    shown to users); unbuffered so the log follows the job as it runs."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Launched(Protocol):
    pid: int | None
    pid_start: str | None
    executor_id: str | None

    def poll(self) -> int | None: ...

    def stop(self) -> None: ...


class Runner(Protocol):
    def launch(self, command: list[str], cwd: Path, log: Path) -> Launched: ...

    def stop_orphan(self, job: Job) -> None: ...


# ---------------------------------------------------------------------------- local


@dataclass
class LocalProcess:
    process: subprocess.Popen[bytes]
    pid: int | None
    pid_start: str | None
    executor_id: str | None = None

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        processes.stop_group(self.process.pid)
        self.process.wait()


class LocalRunner:
    """Each job in its own session on this machine: a cancel stops its whole process group."""

    def launch(self, command: list[str], cwd: Path, log: Path) -> LocalProcess:
        with open(log, "ab") as out:
            process = subprocess.Popen(
                command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=child_env(), start_new_session=True,
            )  # fmt: skip
        return LocalProcess(process, process.pid, processes.start_time(process.pid))

    def stop_orphan(self, job: Job) -> None:
        if job.pid is not None and job.pid_start is not None:
            processes.stop_orphan(job.pid, job.pid_start)


# ---------------------------------------------------------------------------- submitit


class CommandTask:
    """What submitit runs on a cluster node: the job's command. Checkpointable, so a preempted
    or timed-out job is requeued by submitit, and the rerun command resumes from the run's last
    checkpoint (every `sae` command resumes into the same --out)."""

    def __init__(self, command: list[str], cwd: str, log: str):
        self.command, self.cwd, self.log = command, cwd, log

    def __call__(self) -> int:
        with open(self.log, "ab") as out:
            code = subprocess.call(self.command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                   env=child_env())  # fmt: skip
        if code != 0:
            raise RuntimeError(f"{self.command[2:4]} exited with {code}")
        return code

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(CommandTask(self.command, self.cwd, self.log))


@dataclass
class SubmititJob:
    job: Any  # submitit.Job
    pid: int | None = None
    pid_start: str | None = None

    @property
    def executor_id(self) -> str:
        return str(self.job.job_id)

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        return 0 if self.job.exception() is None else 1

    def stop(self) -> None:
        self.job.cancel(check=False)


class SubmititRunner:
    """`--executor slurm`: submitit's AutoExecutor on a Slurm cluster; `cluster="local"` runs
    the same path on this machine (submitit's LocalExecutor)."""

    def __init__(self, folder: Path, cluster: str = "slurm", parameters: dict[str, Any] | None = None):
        import submitit

        self.folder = folder
        self.cluster = cluster
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        self.executor.update_parameters(**(parameters or {}))

    def launch(self, command: list[str], cwd: Path, log: Path) -> SubmititJob:
        # submitit runs the task with this same Python path on the node (a shared filesystem
        # holding this environment is what the README asks of a cluster)
        job = self.executor.submit(CommandTask(command, str(cwd), str(log)))
        pid = int(job.job_id) if self.cluster == "local" else None
        return SubmititJob(job, pid, processes.start_time(pid) if pid else None)

    def stop_orphan(self, job: Job) -> None:
        """Slurm: cancel the job a crashed server submitted (its rerun resumes from the
        checkpoint). Local: the job's controller is a process here; interrupt it."""
        if self.cluster == "local":
            if job.pid and job.pid_start and processes.start_time(job.pid) == job.pid_start:
                os.kill(job.pid, signal.SIGINT)  # what LocalJob.cancel sends its controller
                processes.wait_gone(job.pid)
        elif job.executor_id:
            import submitit

            submitit.SlurmJob(folder=self.folder, job_id=job.executor_id).cancel(check=False)
