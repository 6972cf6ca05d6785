"""`sae serve --executor slurm` goes through submitit; tested with submitit's local executor,
which runs the same submission, requeue and cancel path on this machine."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import submitit

from sae.service.command import job_command
from sae.service.runners import CommandTask
from tests.serve_helpers import Server, start_server, stop_server, toy_yaml, wait_for, wait_state


@pytest.fixture
def submitit_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "state", "--workers", "1", "--executor", "submitit-local")
    yield server
    stop_server(server)


def test_a_job_runs_to_done_through_submitit(submitit_server: Server) -> None:
    job_id = submitit_server.api(
        "POST", "/api/jobs", params={"kind": "toy"}, content=toy_yaml()
    ).json()["id"]
    job = wait_state(submitit_server, job_id, ("done", "failed"))
    assert job["state"] == "done", submitit_server.api("GET", f"/api/jobs/{job_id}/logs").text
    assert job["executor_id"] and job["metrics"]["arch"] == "topk"


def test_a_preempted_task_requeues_the_same_command_which_resumes_to_done(tmp_path: Path) -> None:
    """On preemption submitit calls the task's `checkpoint()` and requeues what it returns
    (submitit's local executor does not requeue, so the requeued submission is run here)."""
    config = tmp_path / "job.yaml"
    config.write_text(toy_yaml(samples=60_000, checkpoint_every_steps=20))
    out, log = tmp_path / "out", tmp_path / "job.log"
    task = CommandTask(job_command("toy", config, out), str(tmp_path), str(log))
    with open(log, "ab") as file:
        first = subprocess.Popen(task.command, cwd=tmp_path, stdout=file, stderr=subprocess.STDOUT)
    wait_for(lambda: (out / "checkpoint.safetensors").is_file(), "a first checkpoint")
    first.kill()  # preempted mid-training
    first.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    requeued = task.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function.command == task.command
    assert requeued.result() == 0  # the rerun continues from the checkpoint to the end
    assert (out / "metrics.json").is_file()

