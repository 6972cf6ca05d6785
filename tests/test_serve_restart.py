"""Never lose a job: `sae serve` killed with SIGKILL mid-training, then started again."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from sae.service.processes import group_members
from tests.serve_helpers import start_server, stop_server, toy_yaml, wait_for, wait_state

WEIGHTS = "sae/sae_weights.safetensors"


def test_a_killed_server_resumes_its_running_job_once_to_identical_weights(tmp_path: Path) -> None:
    body = toy_yaml(samples=120_000, checkpoint_every_steps=20)
    config = tmp_path / "job.yaml"
    config.write_text(body)
    reference = subprocess.Popen(  # the same job, uninterrupted, alongside
        [sys.executable, "-m", "sae", "toy", str(config), "--out", str(tmp_path / "reference")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    state = tmp_path / "state"
    server = start_server(state, "--workers", "1")
    try:
        running = server.api("POST", "/api/jobs", params={"kind": "toy"}, content=body).json()["id"]
        waiting = server.api("POST", "/api/jobs", params={"kind": "toy"}, content=body).json()["id"]
        out = state / "jobs" / str(running)
        wait_for(lambda: (out / "checkpoint.safetensors").is_file(), "a first checkpoint")
        pid = server.job(running)["pid"]
    finally:
        stop_server(server, signal.SIGKILL)
    assert group_members(pid), "the job outlived its server (as an orphan would)"

    restarted = start_server(state, "--workers", "1")
    try:
        assert f"resumed jobs {running}" in restarted.output.read_text()
        assert not group_members(pid)  # the orphan was stopped before anything started again
        jobs = {job["id"]: job["state"] for job in restarted.api("GET", "/api/jobs").json()}
        assert jobs.keys() == {running, waiting}
        job = wait_state(restarted, running, ("done", "failed"), timeout=400)
        assert (job["state"], job["attempts"]) == ("done", 2)
        # picked up from its checkpoint, not started over (the weights alone can't tell)
        assert "sae: resuming from step" in restarted.api("GET", f"/api/jobs/{running}/logs").text
        restarted.api("POST", f"/api/jobs/{waiting}/cancel")
    finally:
        stop_server(restarted)
    assert reference.wait(timeout=400) == 0
    resumed, straight = load_file(out / WEIGHTS), load_file(tmp_path / "reference" / WEIGHTS)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
